"""What a user sees of `imagefs mount` and `imagefs umount` (SPEC §6), and of control writes (§4):
options and the config file, one-line failures in both modes, pidfiles, dry-run outcomes, tag names.

Everything runs the real CLI; the tests below the first section also mount on the private engine.
"""

from __future__ import annotations

import errno
import os
import re
import signal
import subprocess
import time
from pathlib import Path
from urllib.parse import quote

import pytest
from conftest import IMAGEFS, ROOT, Engine, Mount, dead, mounted, wait_for
from hypothesis import given, settings
from test_control_files import write
from test_references import ENGINE_REFUSES, ENGINE_TAKES, tag_targets

from imagefs import options
from imagefs.cli import pidfile
from imagefs.references import parse_tag_target

MODES = pytest.mark.parametrize("mode", [[], ["-f"]], ids=["background", "foreground"])


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*IMAGEFS, *args], capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, **(env or {})))


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    """The failure's stderr, which must be one line and exit status 1."""
    assert result.returncode == 1, (result.returncode, result.stderr)
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("imagefs: "), result.stderr
    return result.stderr.strip()


# --- options, the config file and their one-line failures (no engine needed) -----------------------


@MODES
@pytest.mark.parametrize(
    ("args", "line"),
    [
        (["--cache-size", "lots"], "imagefs: --cache-size: 'lots' is not a size (e.g. 10G)"),
        (["--timeout", "soon"], "imagefs: --timeout: 'soon' is not a number of seconds"),
        (["--cache-entries", "-1"], "imagefs: --cache-entries: '-1' is not a count"),
        (["--scheme", "ftp"], "imagefs: --scheme: 'ftp' is not one of http, https"),
        (["--tlscert", "/nonexistent/cert.pem"], "imagefs: --tlscert: '/nonexistent/cert.pem': no such file"),
    ],
)
def test_a_bad_value_is_one_line(tmp: Path, mode: list[str], args: list[str], line: str) -> None:
    (tmp / "mnt").mkdir()
    assert one_line(run("mount", *mode, *args, str(tmp / "mnt"))) == line
    assert not os.path.ismount(tmp / "mnt")


@MODES
@pytest.mark.parametrize(
    ("args", "env", "reason"),
    [
        (["-H", "ssh://user:secret@example.com"], {}, "a password in an ssh:// address is not supported"),
        (["-H", "ftp://example.com"], {}, "unsupported engine address 'ftp://example.com'"),
        ([], {"DOCKER_HOST": "ftp://example.com"}, "unsupported engine address 'ftp://example.com'"),
        (["-H", "tcp://127.0.0.1:9", "--tlsverify"], {"DOCKER_CERT_PATH": "/nonexistent"},
         "TLS CA certificate /nonexistent/ca.pem does not exist"),
    ],
)
def test_a_bad_engine_address_says_why(tmp: Path, mode: list[str], args: list[str], env: dict[str, str],
                                       reason: str) -> None:
    (tmp / "mnt").mkdir()
    start = time.monotonic()
    line = one_line(run("mount", *mode, *args, "--cache-dir", str(tmp / "cache"), str(tmp / "mnt"), env=env))
    assert line.startswith("imagefs: cannot use the engine at ") and reason in line, line
    assert time.monotonic() - start < 10 and not os.path.ismount(tmp / "mnt")
    assert not (tmp / "cache").exists()  # refused before a daemon or its log was started


@pytest.mark.parametrize(
    ("config", "line"),
    [
        ("ready-fd = 3\n", "unknown option(s) ready-fd"),
        ("ready_fd = 3\n", "unknown option(s) ready_fd"),
        ('mountpoint = "/tmp"\n', "unknown option(s) mountpoint"),
        ('command = "umount"\n', "unknown option(s) command"),
        ('config = "other.toml"\n', "unknown option(s) config"),
        ('cache-size = "lots"\n', "cache-size: 'lots' is not a size (e.g. 10G)"),
        ('read-only = "yes"\n', "read-only: 'yes' is not true or false"),
        ("timeout = true\n", "timeout: True is not a number of seconds"),
        ("[engine]\nhost = 1\n", "unknown option(s) engine"),
        ("host = ", "Invalid value"),
    ],
)
def test_a_bad_config_file_is_one_line(tmp: Path, config: str, line: str) -> None:
    (tmp / "mnt").mkdir()
    (tmp / "config.toml").write_text(config)
    result = run("mount", "--config", str(tmp / "config.toml"), str(tmp / "mnt"))
    assert one_line(result).startswith(f"imagefs: config {tmp / 'config.toml'}: ") and line in result.stderr


def test_help_and_readme_name_every_option_and_its_default() -> None:
    shown = re.sub(r"\s+", " ", run("mount", "--help").stdout)
    usage = (ROOT / "README.md").read_text().split("## Usage", 1)[1].split("\n## ", 1)[0]
    for option in options.OPTIONS:
        assert option.flag in shown and option.flag in usage, option.name
        if option.default not in (None, False) and not callable(option.default):
            assert f"{option.flag} {option.metavar} {option.help} (default {option.default})" in shown


# --- failures the daemon finds, and pidfiles ----------------------------------------------------------


@MODES
def test_a_second_mount_says_why_and_leaves_the_daemons_pidfile(mount: Mount, engine: Engine,
                                                                mode: list[str]) -> None:
    pid = pidfile(mount.path)
    assert pid.read_text() == f"{mount.daemon_pid()}\n"
    result = run("mount", *mode, "--cache-dir", str(mount.cache_dir), str(mount.path), env=engine.env())
    assert one_line(result) == f"imagefs: mountpoint {mount.path}: something is already mounted there"
    assert pid.read_text() == f"{mount.daemon_pid()}\n"
    assert (mount / "hello:latest/inspect").read_bytes()


def test_a_failed_fuse_mount_says_why_in_one_line(engine: Engine, tmp: Path) -> None:
    """pyfuse3.init fails inside the daemon's nursery, which wraps the reason in an exception group."""
    (tmp / "mnt").mkdir()
    (tmp / "not-fuse").touch()
    mount = " ".join([*IMAGEFS, "mount", "--cache-dir", str(tmp / "cache"), str(tmp / "mnt")])
    # In a mount namespace of its own, /dev/fuse is a plain file: the kernel refuses the mount.
    result = subprocess.run(["unshare", "-m", "sh", "-c", f"mount --bind {tmp}/not-fuse /dev/fuse && {mount}"],
                            capture_output=True, text=True, timeout=60, env=engine.env())
    assert one_line(result) == f"imagefs: cannot mount {tmp / 'mnt'}: fuse_session_mount failed"


def test_umount_of_a_killed_daemon_removes_its_pidfile(engine: Engine, tmp: Path) -> None:
    with mounted(engine, tmp) as m:
        pid = pidfile(m.path)
        daemon = m.daemon_pid()
        assert pid.read_text() == f"{daemon}\n"
        os.kill(daemon, signal.SIGKILL)
        wait_for(lambda: dead(m.path), timeout=5)
        result = run("umount", str(m.path))
        assert result.returncode == 0, result.stderr
        assert not os.path.ismount(m.path) and not pid.exists()


def test_umount_removes_no_other_daemons_pidfile(engine: Engine, tmp: Path) -> None:
    with mounted(engine, tmp) as m:
        pid = pidfile(m.path)
        daemon = m.daemon_pid()
        os.kill(daemon, signal.SIGKILL)
        wait_for(lambda: dead(m.path), timeout=5)
        pid.write_text(f"{os.getpid()}\n")  # as if another daemon had written it meanwhile
        assert run("umount", str(m.path)).returncode == 0
        assert pid.read_text() == f"{os.getpid()}\n"
        pid.unlink()


def test_readahead_is_raised_on_a_mountpoint_with_a_newline(engine: Engine, tmp: Path) -> None:
    mnt = tmp / "new\nline"
    mnt.mkdir()
    result = run("mount", "--cache-dir", str(tmp / "cache"), str(mnt), env=engine.env())
    assert result.returncode == 0, result.stderr
    try:
        wait_for(lambda: _read_ahead_kb(mnt) == 1024, timeout=5)
    finally:
        run("umount", str(mnt))


def _read_ahead_kb(mountpoint: Path) -> int | None:
    """The kernel's readahead for the file system mounted there; the mountinfo field unescaped by hand."""
    with open("/proc/self/mountinfo") as f:
        for fields in map(str.split, f):
            if re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), fields[4]) == str(mountpoint):
                return int(Path(f"/sys/class/bdi/{fields[2]}/read_ahead_kb").read_text())
    return None


# --- what a control write reports -------------------------------------------------------------------


@pytest.mark.parametrize("name", ["Foo/bar:1", "[::1]:5000/x:1", "a" * 238 + ":1", "0" * 64 + ":1"])
def test_a_name_the_engine_would_refuse_is_einval_and_never_sent(engine: Engine, tmp: Path, name: str) -> None:
    with mounted(engine, tmp, "--debug") as m:
        assert write(m / "hello:latest/tag", name + "\n") == errno.EINVAL
        assert "last: error: invalid reference format" in (m / "hello:latest/tag").read_text()
        assert write(m / "hello:latest/tag", "sent/one:1\n") == 0  # a request that is sent is logged
        engine.docker("rmi", "sent/one:1")
        requests = [line for line in m.log_text().splitlines() if "engine request POST" in line]
    assert len(requests) == 1 and "repo=sent%2Fone" in requests[0], requests


@pytest.mark.parametrize("name", ENGINE_TAKES + ENGINE_REFUSES)
def test_the_engine_refuses_with_500_exactly_the_names_imagefs_refuses(engine: Engine, name: str) -> None:
    _agree(engine, name)


@settings(max_examples=40, deadline=None)
@given(target=tag_targets())
def test_the_engine_agrees_on_generated_names(engine: Engine, target: tuple[str, str | None]) -> None:
    _agree(engine, target[0])


def _agree(engine: Engine, name: str) -> None:
    try:
        parse_tag_target(f"{name}:oracle")
        takes = True
    except ValueError:
        takes = False
    status, body = engine.raw("POST", f"/images/hello:latest/tag?repo={quote(name, safe='')}&tag=oracle")
    assert status == (201 if takes else 500), (name, status, body)
    if status == 201:
        assert engine.raw("DELETE", f"/images/{quote(name, safe='/:')}:oracle")[0] == 200
