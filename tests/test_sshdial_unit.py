"""ssh:// addresses as the docker CLI turns them into an ssh command line, and the process behind a
connection: its stdin/stdout are the socket, its stderr is the failure's message, and it ends when
imagefs hangs up. A stand-in `ssh` script plays the process; the real sshd is in test_ssh.py."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from imagefs.engine import EngineConfig, sshdial
from imagefs.engine.sshdial import KEEPALIVE, SshTarget


def target(address: str) -> SshTarget:
    endpoint = EngineConfig(host=address).endpoint()
    assert endpoint.ssh is not None
    return endpoint.ssh


@pytest.mark.parametrize(
    ("address", "argv"),
    [
        ("ssh://root@build-box:2222", ["-l", "root", "-p", "2222", "-o", "ConnectTimeout=10", *KEEPALIVE, "-T", "--",
                                       "build-box", "docker system dial-stdio"]),
        ("ssh://build-box", ["-o", "ConnectTimeout=10", *KEEPALIVE, "-T", "--", "build-box",
                             "docker system dial-stdio"]),
        # A path names the remote socket, as the CLI does it.
        ("ssh://me@[::1]/run/user/1000/docker.sock",
         ["-l", "me", "-o", "ConnectTimeout=10", *KEEPALIVE, "-T", "--", "::1",
          "docker --host=unix:///run/user/1000/docker.sock system dial-stdio"]),
        # Whatever the address holds stays one argument of ssh's and never an option.
        ("ssh://-oProxyCommand=x@-h", ["-l", "-oProxyCommand=x", "-o", "ConnectTimeout=10", *KEEPALIVE, "-T", "--",
                                       "-h", "docker system dial-stdio"]),
        ("ssh://h/a%20b;rm", ["-o", "ConnectTimeout=10", *KEEPALIVE, "-T", "--", "h",
                              "docker '--host=unix:///a b;rm' system dial-stdio"]),
    ],
)
def test_the_ssh_command_is_the_docker_clis(address: str, argv: list[str]) -> None:
    assert target(address).argv(10) == [sshdial.SSH, *argv]


def test_an_ssh_endpoint_speaks_plain_http_to_docker() -> None:
    endpoint = EngineConfig(host="ssh://h").endpoint()
    assert endpoint.uds is None and endpoint.tls is None and endpoint.base_url == "http://docker:80"


@pytest.fixture
def fake_ssh(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """`ssh` is this script (its arguments ignored): the test writes its body."""
    script = tmp_path / "ssh"
    monkeypatch.setattr(sshdial, "SSH", str(script))
    yield script


def _script(path: Path, body: str) -> None:
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)


def test_the_connection_is_the_process_stdin_and_stdout(fake_ssh: Path) -> None:
    _script(fake_ssh, "exec cat")
    ssh = target("ssh://h")
    with ssh.dial(5) as sock:
        sock.sendall(b"GET /_ping HTTP/1.0\r\n\r\n")
        assert sock.recv(100) == b"GET /_ping HTTP/1.0\r\n\r\n"
    assert ssh.failure() is None


def test_a_failed_ssh_is_told_in_its_own_words_before_the_end_of_file(fake_ssh: Path) -> None:
    _script(fake_ssh, 'echo "Warning: something" >&2; echo "Host key verification failed." >&2; exit 255')
    ssh = target("ssh://h")
    with ssh.dial(5) as sock:
        assert sock.recv(100) == b""
        assert ssh.failure() == "ssh: Host key verification failed."
    _script(fake_ssh, "exit 0")
    with ssh.dial(5) as sock:
        assert sock.recv(100) == b""
    assert ssh.failure() is None  # one that worked clears it


def test_an_old_failure_explains_nothing(fake_ssh: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _script(fake_ssh, 'echo "Connection refused" >&2; exit 255')
    ssh = target("ssh://h")
    with ssh.dial(5) as sock:
        assert sock.recv(100) == b""
    monkeypatch.setattr(sshdial, "RECENT", 0.0)
    assert ssh.failure() is None


def test_hanging_up_ends_the_process(fake_ssh: Path, tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    _script(fake_ssh, f"echo $$ > {pidfile}; exec sleep 1000")
    sock = target("ssh://h").dial(5)
    deadline = time.monotonic() + 5
    while not pidfile.exists() or not pidfile.read_text().strip():
        assert time.monotonic() < deadline
        time.sleep(0.01)
    pid = int(pidfile.read_text())
    sock.close()
    while Path(f"/proc/{pid}").exists():  # reaped by its watcher, not only killed
        assert time.monotonic() < deadline, "ssh still runs after its connection was closed"
        time.sleep(0.01)


def test_no_ssh_to_run_is_an_os_error(fake_ssh: Path) -> None:
    with pytest.raises(OSError, match="cannot run"):
        target("ssh://h").dial(5)
    assert not fake_ssh.exists() and os.path.isdir(fake_ssh.parent)
