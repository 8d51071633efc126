"""An inode is told one size: the kernel may keep a 0 it was told whatever it is told later (SPEC §3).

The kernel drops a GETATTR reply that crosses another change of the inode (an
invalidation after a tag moved, another opener's reply) and then reads up to the
size it holds. An export looked up before its size is known is told 0, so its
inode is read with direct I/O; once the size is known a lookup leads to another
inode, served through the page cache and never told anything but that size.
"""

from __future__ import annotations

import os
from pathlib import Path

from conftest import Engine, Mount, wait_for
from test_ops import CTX, Ops, run


def test_an_inode_told_0_is_read_directly_and_the_known_size_is_another_inode(engine: Engine, tmp: Path) -> None:
    expected = engine.save("hello:latest")

    async def test(t: Ops) -> None:
        unknown = await t.walk("hello:latest/export.tar")
        assert unknown.st_size == 0
        info = await t.ops.open(unknown.st_ino, os.O_RDONLY, CTX)
        assert info.direct_io  # its reads must not end where the kernel's size of this inode does
        await t.ops.release(info.fh)
        assert (await t.ops.getattr(unknown.st_ino, CTX)).st_size == len(expected)
        known = await t.walk("hello:latest/export.tar")
        assert known.st_ino != unknown.st_ino and known.st_size == len(expected)
        info = await t.ops.open(known.st_ino, os.O_RDONLY, CTX)
        assert not info.direct_io
        await t.ops.release(info.fh)
        assert await t.cat(unknown.st_ino) == await t.cat(known.st_ino) == expected

    run(engine, tmp / "cache", test)


def test_after_a_first_export_the_name_leads_to_the_inode_told_its_size(engine: Engine, mount: Mount) -> None:
    path = mount.path / "hello:latest" / "export.tar"
    unknown = os.stat(path)
    assert unknown.st_size == 0
    data = path.read_bytes()
    assert data == engine.save("hello:latest")
    wait_for(lambda: os.stat(path).st_ino != unknown.st_ino)  # its opener had the kernel forget the name
    assert os.stat(path).st_size == len(data)
