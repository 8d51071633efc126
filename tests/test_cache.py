"""Open files are snapshots, and the cache directory cannot be turned against the daemon (SPEC §2, §3)."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest
from conftest import IMAGEFS, Engine, mount_imagefs, mounted, unmount, wait_for

NOBODY = 65534


def test_an_open_export_reads_to_its_end_after_rmi_and_engine_stop(engine: Engine, tmp: Path) -> None:
    engine.docker("tag", "busybox:latest", "snap/box:1")
    expected = engine.save("snap/box:1")
    m = mount_imagefs(engine, tmp, expect=[r"events stream down", r"engine .*unreachable|Connect"])
    try:
        fd = os.open(m / "snap/box:1/export.tar", os.O_RDONLY)
        assert os.fstat(fd).st_size == len(expected)  # waits for the export: complete
        head = os.read(fd, 1 << 16)
        engine.docker("rmi", "snap/box:1")
        rest = os.read(fd, 1 << 20)
        engine.kill()
        while chunk := os.read(fd, 1 << 20):
            rest += chunk
        os.close(fd)
        assert head + rest == expected
    finally:
        if not os.path.exists(engine.sock):
            engine.start()
        engine.docker("rmi", "snap/box:1", check=False)
        unmount(m)


def test_a_full_cache_disk_is_enospc_and_the_daemon_serves_on(engine: Engine, tmp: Path, blob: str) -> None:
    (tmp / "small").mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(tmp / "small")], check=True)
    try:
        with mounted(engine, tmp, "--cache-dir", str(tmp / "small/cache"),
                     expect=[r"export of big/blob:1 failed: .*No space left on device",
                             r"open: SpoolError: .*No space left on device"]) as m:
            result = subprocess.run(["cat", str(m / blob / "export.tar")], capture_output=True, timeout=120)
            assert result.returncode != 0 and b"No space left on device" in result.stderr
            assert "engine 500" not in m.log_text()
            # The space is free again: the next export is exact.
            assert (m / "hello:latest/export.tar").read_bytes() == engine.save("hello:latest")
    finally:
        subprocess.run(["umount", str(tmp / "small")], check=True)


@pytest.fixture
def blob(engine: Engine, tmp: Path) -> str:
    """An image of 32 MiB of random bytes: more than the small cache disk holds."""
    ctx = tmp / "blob-ctx"
    ctx.mkdir()
    (ctx / "blob").write_bytes(os.urandom(32 << 20))
    (ctx / "Dockerfile").write_text("FROM scratch\nCOPY blob /blob\n")
    engine.docker("build", "-q", "-t", "big/blob:1", str(ctx))
    return "big/blob:1"


def _mount_fails(engine: Engine, tmp: Path, cache: Path) -> str:
    (tmp / "mnt").mkdir(exist_ok=True)
    result = subprocess.run([*IMAGEFS, "mount", "--cache-dir", str(cache), str(tmp / "mnt")],
                            env=engine.env(), capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and not os.path.ismount(tmp / "mnt")
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_a_cache_dir_another_user_owns_is_refused_and_its_links_never_followed(engine: Engine, tmp: Path) -> None:
    victim = tmp / "victim"
    victim.mkdir()
    (victim / "precious").write_text("keep me\n")
    cache = tmp / "shared-cache"
    cache.mkdir()
    (cache / f"spool-{2**22 + 1}").symlink_to(victim)  # a "dead daemon's spool" planted by someone else
    (cache / "spool").symlink_to(victim)
    os.chown(cache, NOBODY, NOBODY)
    line = _mount_fails(engine, tmp, cache)
    assert "owned by uid 65534" in line and str(cache) in line
    assert (victim / "precious").read_text() == "keep me\n" and os.listdir(victim) == ["precious"]


@pytest.mark.parametrize("planted", ["spool", "sizes.json", "spool/" + "0" * 64 + ".tar"])
def test_a_link_planted_in_our_own_cache_dir_is_refused(engine: Engine, tmp: Path, planted: str) -> None:
    cache = tmp / "cache"
    (cache / "spool").mkdir(parents=True, mode=0o700)
    cache.chmod(0o700)
    target = tmp / "root-owned"
    target.write_text("do not truncate\n")
    if planted == "spool":
        (cache / "spool").rmdir()
    (cache / planted).symlink_to(target)
    line = _mount_fails(engine, tmp, cache)
    assert "symbolic link" in line or "not a regular file" in line or "not a directory" in line, line
    assert target.read_text() == "do not truncate\n"


def test_a_cache_dir_others_can_write_is_refused(engine: Engine, tmp: Path) -> None:
    cache = tmp / "open-cache"
    cache.mkdir()
    cache.chmod(0o777)
    assert "writable by other users" in _mount_fails(engine, tmp, cache)


def test_a_new_cache_dir_is_private_and_old_spools_of_dead_daemons_go(engine: Engine, tmp: Path) -> None:
    cache = tmp / "fresh/cache"
    cache.parent.mkdir()
    cache.mkdir(mode=0o700)
    stale = cache / f"spool-{2**22 + 1}"
    stale.mkdir()
    (stale / "x").write_bytes(b"left by a killed daemon")
    outside = tmp / "outside"
    outside.mkdir()
    (outside / "file").write_text("stays\n")
    (cache / f"spool-{2**22 + 2}").symlink_to(outside)
    with mounted(engine, tmp, "--cache-dir", str(cache)) as m:
        assert (m / "hello:latest/inspect").read_bytes()
    assert not stale.exists() and not (cache / f"spool-{2**22 + 2}").exists()
    assert (outside / "file").read_text() == "stays\n"
    assert (cache / "spool").stat().st_mode & 0o777 == 0o700
    other = tmp / "made"
    with mounted(engine, tmp, "--cache-dir", str(other)):
        assert other.stat().st_mode & 0o777 == 0o700


def test_a_remount_reads_the_kept_spool_without_exporting(engine: Engine, tmp: Path) -> None:
    expected = engine.save("myorg/app:1.0")
    with mounted(engine, tmp) as m:
        assert (m / "myorg/app:1.0/export.tar").read_bytes() == expected
    since = time.time()
    with mounted(engine, tmp) as m:
        assert os.stat(m / "myorg/app:1.0/export.tar").st_size == len(expected)
        assert (m / "myorg/app:1.0/export.tar").read_bytes() == expected
    assert engine.events(since, "save") == []


def test_reading_a_control_file_after_its_image_is_gone(engine: Engine, tmp: Path) -> None:
    engine.docker("tag", "hello:latest", "snap/ctl:1")
    with mounted(engine, tmp) as m:
        fd = os.open(m / "snap/ctl:1/tag", os.O_RDONLY)
        engine.docker("rmi", "snap/ctl:1")
        assert os.read(fd, 4096).startswith(b"usage: ")
        os.close(fd)
        wait_for(lambda: not (m / "snap/ctl:1").exists(), timeout=1.0)


def test_the_background_log_in_a_new_cache_dir_is_private_and_never_a_link(engine: Engine, tmp: Path) -> None:
    cache, mnt = tmp / "new/cache", tmp / "mnt"
    mnt.mkdir()
    env = {k: v for k, v in engine.env().items() if k != "IMAGEFS_LOG"}
    done = subprocess.run([*IMAGEFS, "mount", "--cache-dir", str(cache), str(mnt)], env=env,
                          capture_output=True, text=True, timeout=60)
    try:
        assert done.returncode == 0, done.stderr
        assert cache.stat().st_mode & 0o777 == 0o700 and (cache / "imagefs.log").stat().st_mode & 0o777 == 0o600
    finally:
        subprocess.run([*IMAGEFS, "umount", str(mnt)], capture_output=True, timeout=60)
    (cache / "imagefs.log").unlink()
    victim = tmp / "victim"
    victim.write_text("root's\n")
    (cache / "imagefs.log").symlink_to(victim)
    done = subprocess.run([*IMAGEFS, "mount", "--cache-dir", str(cache), str(mnt)], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and done.stderr.count("\n") == 1 and "log file" in done.stderr
    assert victim.read_text() == "root's\n" and not os.path.ismount(mnt)
