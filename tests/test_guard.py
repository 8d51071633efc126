"""A bug inside a handler: EIO to that caller, a logged traceback, and a mount that keeps working.

The daemon runs in this process (trio on the main thread, as `imagefs mount -f`
would) so that a bug can be injected into one node kind; the kernel, the FUSE
session and the engine are all real.
"""

from __future__ import annotations

import errno
import logging
from pathlib import Path

import pyfuse3
import pytest
import trio
from conftest import Engine

from imagefs import daemon
from imagefs.engine import EngineConfig
from imagefs.nodes.base import Handle
from imagefs.nodes.documents import DocumentFile


def test_a_bug_in_a_handler_is_eio_and_the_mount_lives_on(
    engine: Engine, tmp: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    original = DocumentFile.open

    async def buggy_open(self: DocumentFile, flags: int, pid: int) -> Handle:
        if self.path[-1] == "history":
            raise RuntimeError("injected bug")
        return await original(self, flags, pid)

    monkeypatch.setattr(DocumentFile, "open", buggy_open)
    mnt = tmp / "mnt"
    mnt.mkdir()
    options = daemon.MountOptions(mountpoint=mnt, engine=EngineConfig(host=engine.host), cache_dir=tmp / "cache")

    def use_the_mount() -> None:
        with pytest.raises(OSError) as info:
            (mnt / "hello:latest/history").read_bytes()
        assert info.value.errno == errno.EIO
        assert (mnt / "hello:latest/inspect").read_bytes().startswith(b"{")
        with pytest.raises(OSError):
            (mnt / "busybox:latest/history").read_bytes()
        assert "busybox:latest" in [p.name for p in mnt.iterdir()]

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            ready = trio.Event()
            nursery.start_soon(daemon.serve, options, ready.set)
            await ready.wait()
            try:
                await trio.to_thread.run_sync(use_the_mount)
            finally:
                pyfuse3.terminate()

    with caplog.at_level(logging.WARNING, logger="imagefs"):
        trio.run(main)
    bugs = [r for r in caplog.records if "unexpected error in open" in r.getMessage()]
    assert len(bugs) == 2 and all(r.exc_info and "injected bug" in str(r.exc_info[1]) for r in bugs)
    # As for every mount made through the CLI (conftest's unmount): nothing else worth a warning.
    others = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and r not in bugs]
    assert others == []
