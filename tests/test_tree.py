"""The tree and its generated files, used with real ls/cat/stat against a real engine (SPEC §1, §2, §6)."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import IMAGEFS, Engine, Mount, Proxy, dead, mount_imagefs, mounted, pretty, settled, unmount, wait_for


def run(*cmd: str, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(cmd), capture_output=True, text=True, timeout=60, **kw)  # type: ignore[call-overload]


def test_root_lists_references_and_namespaces(mount: Mount, engine: Engine) -> None:
    names = set(os.listdir(mount.path))
    assert {"hello:latest", "busybox:latest", "myorg", "localhost:5000"} <= names
    assert ".imagefs" not in names and not any(n.startswith("<none>") for n in names)
    assert os.listdir(mount / "myorg") == ["app:1.0"]
    assert os.listdir(mount / "localhost:5000/team") == ["app:2"]
    assert sorted(os.listdir(mount / "myorg/app:1.0")) == [
        "delete", "export.tar", "history", "inspect", "layers", "push", "rootfs", "tag"]
    assert sorted(os.listdir(mount / ".imagefs")) == ["all.tar", "build", "build-prune", "commit", "ids", "import",
                                                      "load", "prune", "pull", "search", "status", "version"]
    # ls shows exactly the engine's tags: every tagged reference once
    listed = {str(p.relative_to(mount.path)) for p in mount.path.rglob("*:*") if p.is_dir() and
              not (p.name.startswith("localhost:") and p.parent == mount.path)}
    assert listed == engine.tags()


def test_inspect_and_history_are_the_engines_json(mount: Mount, engine: Engine) -> None:
    for ref in engine.tags():
        for kind, api in (("inspect", "json"), ("history", "history")):
            path = mount / ref / kind
            data = path.read_bytes()
            assert data == pretty(engine.api(f"/images/{ref}/{api}"))
            assert os.stat(path).st_size == len(data)
    config = json.loads(run("cat", str(mount / "myorg/app:1.0/inspect")).stdout)["Config"]
    assert config["Labels"] == {"org.example.role": "app"}


def test_ids_directory_holds_every_image(mount: Mount, engine: Engine) -> None:
    ids = {i.removeprefix("sha256:") for i in engine.image_ids()}
    assert set(os.listdir(mount / ".imagefs/ids")) == ids
    untagged = next(i for i in engine.api("/images/json?all=1") if not i.get("RepoTags") or
                    i["RepoTags"] == ["<none>:<none>"])
    hexid = untagged["Id"].removeprefix("sha256:")
    history = (mount / f".imagefs/ids/{hexid}/history").read_bytes()
    assert history == pretty(engine.api(f"/images/{hexid}/history"))
    version = json.loads((mount / ".imagefs/version").read_text())
    assert version["ApiVersion"] == "1.41" and version["ImagefsApiPath"] == "/v1.41"


def test_metadata_times_inodes_and_owner(mount: Mount, engine: Engine, tmp: Path) -> None:
    created = engine.api("/images/json")
    by_tag = {t: i["Created"] for i in created for t in i.get("RepoTags") or ()}
    for name in ("myorg/app:1.0", "myorg/app:1.0/inspect", "myorg/app:1.0/export.tar"):
        s = os.stat(mount / name)
        assert s.st_mtime == s.st_ctime == by_tag["myorg/app:1.0"]
        assert (s.st_uid, s.st_gid) == (os.getuid(), os.getgid())
    ino = os.stat(mount / "myorg/app:1.0/inspect").st_ino
    assert os.stat(mount / "myorg/app:1.0/inspect").st_ino == ino
    unmount(mount)
    with mounted(engine, tmp) as again:
        assert os.stat(again / "myorg/app:1.0/inspect").st_ino == ino  # stable across remounts


def test_names_that_cannot_be_references_ask_nothing(engine: Engine, tmp: Path) -> None:
    with mounted(engine, tmp, "--debug") as m:
        settled(m)
        os.listdir(m.path)
        before = m.log_text().count("engine request")
        for bad in ("Bad Name!", "UPPER:1", "a//b", "x:1:2", ".hidden", "<none>:<none>", "a@b", "myorg/x:1:y"):
            with pytest.raises(FileNotFoundError):
                os.stat(m.path / bad)
        assert m.log_text().count("engine request") == before
        with pytest.raises(FileNotFoundError):
            os.stat(m.path / "nosuch:tag")  # well-formed: answered from the image list
        with pytest.raises(FileNotFoundError):
            os.stat(m.path / ".imagefs/ids" / ("0" * 64))


def test_digest_and_id_paths_resolve_without_listing(mount: Mount, engine: Engine) -> None:
    image = next(i for i in engine.api("/images/json") if "myorg/app:1.0" in (i.get("RepoTags") or ()))
    hexid = image["Id"].removeprefix("sha256:")
    assert (mount / f".imagefs/ids/{hexid}/inspect").read_bytes() == (mount / "myorg/app:1.0/inspect").read_bytes()
    with pytest.raises(FileNotFoundError):
        os.stat(mount / f"myorg/app@sha256:{'a' * 64}")  # a digest the engine does not know


def test_digest_reference_resolves_by_path_and_is_not_listed(mount: Mount, engine: Engine, registry: str) -> None:
    ref = f"{registry}/digest/app:1"
    engine.docker("tag", "hello:latest", ref)
    try:
        engine.docker("push", ref)
        digest_ref = next(d for i in engine.api("/images/json") for d in i.get("RepoDigests") or ()
                          if d.startswith(f"{registry}/digest/app@"))
        by_digest = mount / digest_ref
        wait_for(by_digest.is_dir, timeout=1.0)  # the push event brings the digest within 1 s
        assert (by_digest / "inspect").read_bytes() == (mount / ref / "inspect").read_bytes()
        assert digest_ref in json.loads((by_digest / "inspect").read_text())["RepoDigests"]
        assert os.listdir(mount / registry / "digest") == ["app:1"]  # the digest form is not listed
    finally:
        engine.docker("rmi", ref)


def test_a_component_both_image_and_namespace(mount: Mount, engine: Engine) -> None:
    engine.docker("tag", "busybox:latest", "localhost:5000/tag/x:1")
    try:
        wait_for(lambda: "tag" in os.listdir(mount / "localhost:5000"), timeout=1.0)  # only a namespace here
        assert os.listdir(mount / "localhost:5000/tag") == ["x:1"]
        engine.docker("tag", "hello:latest", "localhost:5000")  # repository localhost, tag 5000
        wait_for(lambda: "inspect" in os.listdir(mount / "localhost:5000"), timeout=1.0)
        names = os.listdir(mount / "localhost:5000")
        assert names.count("tag") == 1 and "team" in names  # the fixed file wins; other namespaces stay
        assert (mount / "localhost:5000/tag").is_file()
        assert "localhost:5000" in json.loads((mount / "localhost:5000/inspect").read_text())["RepoTags"]
    finally:
        engine.docker("rmi", "localhost:5000/tag/x:1", check=False)
        engine.docker("rmi", "localhost:5000", check=False)


def test_nothing_destroys(mount: Mount, engine: Engine) -> None:
    before = engine.tags()
    result = run("rm", "-rf", *[str(p) for p in mount.path.iterdir()])
    assert result.returncode != 0 and "Operation not permitted" in result.stderr
    for op in (lambda: os.rmdir(mount / "myorg/app:1.0"), lambda: os.unlink(mount / "hello:latest/inspect"),
               lambda: os.rename(mount / "hello:latest", mount / "hello:v2"), lambda: os.mkdir(mount / "new:1"),
               lambda: (mount / "hello:latest/newfile").write_text("x"),
               lambda: (mount / "hello:latest/inspect").write_text("x")):
        with pytest.raises(PermissionError):
            op()
    assert engine.tags() == before


def test_engine_down_is_eio_and_recovers(engine: Engine, tmp: Path) -> None:
    # The engine is stopped under the mount: the events stream ends, and what the kernel asks for
    # meanwhile fails to reach it.
    m = mount_imagefs(engine, tmp, "--timeout", "3", expect=[
        r"^events stream down \(GET /events: .*\); [\d.]+ s TTLs until it is back$",
        r"^(lookup|opendir|getattr|open|read): EngineUnreachable: GET /v1\.41/images/\S+: ConnectError: ",
    ])
    try:
        assert (m / "hello:latest/inspect").read_bytes()
        engine.kill()
        start = time.monotonic()
        for path in ("hello:latest/history", "", "myorg"):
            with pytest.raises(OSError) as info:
                os.listdir(m / path) if not path.endswith("history") else (m / path).read_bytes()
            assert info.value.errno == errno.EIO
        assert time.monotonic() - start < 10
        engine.start()
        wait_for(lambda: (m / "hello:latest/history").exists(), timeout=15)
        assert json.loads((m / "hello:latest/history").read_text())
    finally:
        if not os.path.exists(engine.sock):
            engine.start()
        unmount(m)


def test_mount_without_engine_fails_with_one_line(tmp: Path) -> None:
    (tmp / "mnt").mkdir()
    start = time.monotonic()
    result = run(*IMAGEFS, "mount", "-H", f"unix://{tmp}/nothing.sock", "--cache-dir", str(tmp / "c"),
                 str(tmp / "mnt"))
    assert result.returncode != 0 and time.monotonic() - start < 15
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot reach the Docker engine" in lines[0], result.stderr
    assert not os.path.ismount(tmp / "mnt")
    bad = run(*IMAGEFS, "mount", str(tmp / "no-such-dir"))
    assert bad.returncode != 0 and bad.stderr.count("\n") == 1 and "not a directory" in bad.stderr


def test_umount_clears_a_mount_whose_daemon_was_killed(engine: Engine, tmp: Path) -> None:
    with mounted(engine, tmp) as m:
        os.kill(m.daemon_pid(), signal.SIGKILL)
        wait_for(lambda: dead(m.path), timeout=5)
        result = run(*IMAGEFS, "umount", str(m.path))
        assert result.returncode == 0, result.stderr
        assert not os.path.ismount(m.path)


def test_sigterm_unmounts_cleanly(engine: Engine, tmp: Path) -> None:
    with mounted(engine, tmp) as m:
        pid = m.daemon_pid()
        os.kill(pid, signal.SIGTERM)
        wait_for(lambda: not os.path.ismount(m.path) and not Path(f"/proc/{pid}").exists(), timeout=10)
        assert not list(m.cache_dir.glob("spool/.*"))  # no spool half written


def test_umount_returns_once_the_daemon_has_cleaned_up(engine: Engine, tmp: Path) -> None:
    with mounted(engine, tmp) as m:
        pid = m.daemon_pid()
        (m / "hello:latest/export.tar").read_bytes()  # a spool the daemon keeps for the next mount
        subprocess.run([*IMAGEFS, "umount", str(m.path)], check=True, capture_output=True, timeout=30)
        # Back once the daemon has exited (a zombie until init reaps it): what it kept is whole, no part is left.
        assert len(list(m.cache_dir.glob("spool/*.tar"))) == 1
        assert not list(m.cache_dir.glob("spool/.*"))
        stat = Path(f"/proc/{pid}/stat")
        assert not stat.exists() or stat.read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X")


@pytest.mark.parametrize("how", ["-H", "seed"])
def test_an_engine_over_tcp(engine: Engine, tmp: Path, how: str) -> None:
    proxy = Proxy(engine.sock)
    try:
        args = ["-H", f"tcp://{proxy.address}"] if how == "-H" else ["--hostname", proxy.address, "--scheme", "http"]
        m = mount_imagefs(engine, tmp, *args)
        try:
            assert (m / "hello:latest/inspect").read_bytes() == pretty(engine.api("/images/hello:latest/json"))
            engine.docker("tag", "hello:latest", "over/tcp:1")
            wait_for(lambda: (m / "over/tcp:1").exists(), timeout=1.0)  # events over TCP too
            assert f"engine tcp://{proxy.address}" in m.log_text() or f"engine http://{proxy.address}" in m.log_text()
        finally:
            unmount(m)
            engine.docker("rmi", "over/tcp:1", check=False)
    finally:
        proxy.close()


def test_config_file_and_flags(engine: Engine, tmp: Path) -> None:
    config = tmp / "config.toml"
    config.write_text('read-only = true\nbase-path = "/v1.40"\n')
    with mounted(engine, tmp, "--config", str(config)) as m:
        assert json.loads((m / ".imagefs/version").read_text())["ImagefsApiPath"] == "/v1.40"
        with pytest.raises(OSError) as info:
            (m / "hello:latest/tag").write_text("x:1\n")
        assert info.value.errno == errno.EROFS


def test_ls_l_asks_no_extended_attribute_per_entry(engine: Engine, tmp: Path) -> None:
    """`ls -l` asks for SELinux labels and ACLs; ENOTSUP makes it stop asking for the whole mount."""
    with mounted(engine, tmp, "--debug") as m:
        entries = len(os.listdir(m.path / ".imagefs/ids"))
        assert entries >= 4
        run("ls", "-l", str(m.path / ".imagefs/ids"))
        asked = [line for line in m.log_text().splitlines() if "getxattr(" in line]
    assert len(asked) <= 3, asked
