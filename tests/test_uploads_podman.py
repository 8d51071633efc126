"""Uploads to podman, which makes an image of whatever an aborted request brought: it gets nothing before the commit."""

from __future__ import annotations

import contextlib
import mmap
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import Engine, mount_imagefs, mounted, unmount, wait_for
from test_uploads import ABORTED, _boundaries, rootfs_tar, sh

PODMAN = pytest.mark.parametrize("matrix_engine", ["podman"], indirect=True)
NO_SPACE = r"(write|flush): SpoolError: .*No space left on device"
# Writes the first bytes in page-aligned MiB (each one FUSE write, sent as it comes to an engine
# that streams), waits (such a body would be at the engine by then), and is killed.
KILLED_WRITER = """
import mmap, os, signal, sys, time
data = open(sys.argv[1], "rb").read()
cut = int(sys.argv[3])
buf = mmap.mmap(-1, len(data))
buf[:] = data
fd = os.open(sys.argv[2], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
for at in range(0, cut, 1 << 20):
    os.write(fd, memoryview(buf)[at:min(at + (1 << 20), cut)])
time.sleep(1)
os.kill(os.getpid(), signal.SIGKILL)
"""


def _present(e: Engine, ref: str) -> bool:
    return e.raw("GET", f"/images/{ref}/json")[0] == 200


@PODMAN
@pytest.mark.parametrize("kind", ["load", "import"])
def test_a_writer_killed_mid_upload_creates_nothing_on_podman_and_a_whole_one_goes_in(
        matrix_engine: Engine, tmp: Path, kind: str) -> None:
    e = matrix_engine
    ref = f"upk/{kind}:1"
    if kind == "load":
        e.docker("tag", e.sample("busybox:latest"), ref)
        body, where = e.save(ref), "load/killed.tar"
        e.docker("rmi", ref)  # the image stays (busybox tags it): a load would bring back the tag
    else:
        # The second member's header at 5 MiB: a body sent as it comes (1 MiB chunks) would have
        # reached podman up to that boundary, and podman makes an image of the first member.
        body, where = rootfs_tar({"a": os.urandom((5 << 20) - 512), "b": b"2" * 1000}), f"import/{ref}"
    (tmp / "body").write_bytes(body)
    (tmp / "writer.py").write_text(KILLED_WRITER)
    before, tags, since = e.image_ids(), e.tags(), time.time()
    try:
        with mounted(e, tmp, expect=[ABORTED]) as m:
            target = m.path / ".imagefs" / where
            # At a member boundary (podman's partial image, were the body sent as it comes), inside a member.
            for cut in (_boundaries(body)[-1], len(body) // 2):
                writer = subprocess.run(["python3", str(tmp / "writer.py"), str(tmp / "body"), str(target),
                                         str(cut)], capture_output=True, text=True, timeout=60)
                assert writer.returncode == -signal.SIGKILL, writer.stderr
                record = target.read_text()
                assert "killed" in record and ": aborted, 0 B of " in record, record
            time.sleep(1)  # an engine that took a body would have made its image by now
            assert e.image_ids() == before and e.tags() == tags
            assert e.events(since) == []
            done = sh(f"cp {tmp}/body {target}")
            assert done.returncode == 0, done.stderr + target.read_text()
        assert _present(e, ref)
    finally:
        e.docker("rmi", "-f", ref, check=False)


@PODMAN
def test_a_full_cache_disk_is_enospc_for_an_upload_to_podman(matrix_engine: Engine, tmp: Path) -> None:
    e = matrix_engine
    small = tmp / "small"
    small.mkdir()
    (tmp / "big.tar").write_bytes(rootfs_tar({"big": os.urandom(6_000_000)}))
    (tmp / "fits.tar").write_bytes(rootfs_tar({"a": b"1"}))
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(small)], check=True)
    try:
        with mounted(e, tmp, "--cache-dir", str(small / "cache"), expect=[ABORTED, NO_SPACE]) as m:
            up = m.path / ".imagefs/import/upk"
            full = sh(f"cp {tmp}/big.tar {up}/full:1")
            assert full.returncode == 1 and "No space left on device" in full.stderr
            assert "No space left on device" in (up / "full:1").read_text()
            wait_for(lambda: shutil.disk_usage(small).used < 1 << 20)  # the spool's space is free again
            done = sh(f"cp {tmp}/fits.tar {up}/fits:1")
            assert done.returncode == 0, done.stderr + (up / "fits:1").read_text()
        assert not _present(e, "upk/full:1") and _present(e, "upk/fits:1")
    finally:
        subprocess.run(["umount", str(small)], check=True)
        e.docker("rmi", "-f", "upk/fits:1", check=False)


@PODMAN
def test_progress_on_podman_says_spooling_and_a_sigterm_of_the_daemon_sends_nothing(matrix_engine: Engine,
                                                                                   tmp: Path) -> None:
    e = matrix_engine
    body = rootfs_tar({"a": os.urandom((2 << 20) - 512), "b": b"2" * 1000})  # b's header at 2 MiB
    aligned = mmap.mmap(-1, 2 << 20)  # page-aligned MiB: one FUSE write each, sent at once when streamed
    aligned[:] = body[: 2 << 20]
    before, since = e.image_ids(), time.time()
    m = mount_imagefs(e, tmp, expect=[ABORTED, r"(write|flush|release): Closing: "])
    target = m.path / ".imagefs/import/upk/term:1"
    f = open(target, "wb", buffering=0)  # noqa: SIM115 - closed by the test, under the mount's end
    try:
        f.write(memoryview(aligned)[: 1 << 20])
        f.write(memoryview(aligned)[1 << 20 :])
        progress = target.read_text()
        os.kill(m.pid, signal.SIGTERM)
        wait_for(lambda: not os.path.ismount(m.path), timeout=15)
        with pytest.raises(OSError):  # the mount went away under the writer
            f.write(body[2 << 20 :])
            f.close()
    finally:
        with contextlib.suppress(OSError):
            f.close()
        unmount(m)
    assert "spooling, 2.1 MB spooled locally" in progress
    time.sleep(1)  # an engine that took the body would have made its image by now
    assert e.image_ids() == before and e.events(since) == []
