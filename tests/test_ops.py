"""The operations tier: the tree and the adapter's handlers driven directly against the real engine.

No kernel and no mount: each test builds what `daemon.serve` builds (engine client,
catalog, store, exports, tree, Operations) and calls the handlers as pyfuse3
would, so that what the kernel would cache (an inode's attributes) can be
compared with what that inode's reads return, step by step.
"""

from __future__ import annotations

import errno
import json
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyfuse3
import pytest
import trio
from conftest import Engine, pretty

from imagefs.catalog import Catalog
from imagefs.engine import Engine as Client
from imagefs.engine import EngineConfig
from imagefs.fuse.operations import Operations
from imagefs.nodes.base import Context
from imagefs.nodes.tree import Tree, affected
from imagefs.spool.exports import Exports
from imagefs.spool.sizes import Sizes
from imagefs.spool.store import Store


class _Context:
    pid = 0  # no process: only open and create read it, and only uploads use it


CTX: Any = _Context()


@dataclass
class Ops:
    ops: Operations
    catalog: Catalog
    exports: Exports

    async def walk(self, path: str) -> pyfuse3.EntryAttributes:
        attr = await self.ops.getattr(pyfuse3.ROOT_INODE, CTX)
        for name in path.split("/"):
            attr = await self.ops.lookup(attr.st_ino, os.fsencode(name), CTX)
        return attr

    async def cat(self, ino: int) -> bytes:
        info = await self.ops.open(ino, os.O_RDONLY, CTX)
        data = b""
        try:
            while chunk := bytes(await self.ops.read(info.fh, len(data), 1 << 20)):
                data += chunk
        finally:
            await self.ops.release(info.fh)
        return data

    async def changed(self) -> None:
        """What the events stream would do after a change by someone else."""
        await self.catalog.refresh()


def run(engine: Engine, cache: Path, test: Callable[[Ops], Awaitable[None]]) -> None:
    async def main() -> None:
        client = Client(EngineConfig(host=engine.host))
        await client.negotiate()
        store = Store(cache)
        store.open()
        sizes = Sizes(store)
        sizes.load()
        try:
            async with trio.open_nursery() as nursery:
                exports = Exports(client, store, sizes, 1 << 30, "ops-test", nursery)
                catalog = Catalog(client)
                ops = Operations(Tree(Context(catalog, exports)))
                ops.kernel.notify = lambda dentries, inodes: None  # no kernel to tell
                await test(Ops(ops, catalog, exports))
                nursery.cancel_scope.cancel()
            exports.close()
        finally:
            store.close()
            await client.aclose()

    trio.run(main)


@pytest.fixture
def moving(engine: Engine) -> Any:
    engine.docker("tag", "hello:latest", "ops/moving:1")
    yield "ops/moving:1"
    engine.docker("rmi", "ops/moving:1", check=False)


def test_a_moved_tag_leads_to_other_inodes_and_the_old_ones_stay_whole(
        engine: Engine, tmp: Path, moving: str) -> None:
    hello, busybox = engine.save("hello:latest"), engine.save("busybox:latest")

    async def test(t: Ops) -> None:
        old = {name: await t.walk(f"{moving}/{name}") for name in ("inspect", "export.tar")}
        old_dir = await t.walk(moving)
        old_bytes = {name: await t.cat(attr.st_ino) for name, attr in old.items()}
        engine.docker("tag", "busybox:latest", moving)
        await t.changed()
        new = {name: await t.walk(f"{moving}/{name}") for name in ("inspect", "export.tar")}
        assert (await t.walk(moving)).st_ino != old_dir.st_ino
        for name in old:
            assert new[name].st_ino != old[name].st_ino
            # What the kernel holds for the old inode is still true of what it reads.
            again = await t.ops.getattr(old[name].st_ino, CTX)
            assert again.st_size == len(await t.cat(old[name].st_ino)) == len(old_bytes[name])
        assert json.loads(old_bytes["inspect"])["Id"] != json.loads(await t.cat(new["inspect"].st_ino))["Id"]
        assert old_bytes["export.tar"] == await t.cat(old["export.tar"].st_ino)
        assert abs(len(old_bytes["export.tar"]) - len(hello)) < 4096  # hello's, under another reference
        assert (await t.ops.getattr(new["export.tar"].st_ino, CTX)).st_size in (0, len(busybox))
        assert len(await t.cat(new["export.tar"].st_ino)) == len(busybox)

    run(engine, tmp / "cache", test)


def test_an_old_inode_opened_after_the_move_never_serves_the_other_image(
        engine: Engine, tmp: Path, moving: str) -> None:
    # The kernel may open an inode it still holds after the name moved: exporting the reference
    # now gives the other image, which this inode must not serve as its own.
    async def test(t: Ops) -> None:
        old = await t.walk(f"{moving}/export.tar")
        engine.docker("tag", "busybox:latest", moving)
        await t.changed()
        with pytest.raises(pyfuse3.FUSEError) as info:
            await t.cat(old.st_ino)
        assert info.value.errno == errno.EIO

    run(engine, tmp / "cache", test)


def test_listing_and_lookup_agree(engine: Engine, tmp: Path) -> None:
    async def test(t: Ops) -> None:
        for path in ("", "myorg", "myorg/app:1.0", ".imagefs", ".imagefs/ids"):
            ino = (await t.walk(path)).st_ino if path else pyfuse3.ROOT_INODE
            fh = await t.ops.opendir(ino, CTX)
            listing = t.ops.handles[fh]
            for name, node in listing.entries:  # type: ignore[union-attr]
                looked_up = await t.ops.lookup(ino, os.fsencode(name), CTX)
                assert t.ops.inodes.node(looked_up.st_ino).key == node.key
            await t.ops.releasedir(fh)

    run(engine, tmp / "cache", test)


def test_documents_are_the_engines_json_and_sized_by_their_node(engine: Engine, tmp: Path) -> None:
    async def test(t: Ops) -> None:
        attr = await t.walk("myorg/app:1.0/inspect")
        data = await t.cat(attr.st_ino)
        assert data == pretty(engine.api("/images/myorg/app:1.0/json")) and attr.st_size == len(data)
        with pytest.raises(pyfuse3.FUSEError) as info:
            await t.walk("myorg/app:1.0/nosuch")
        assert info.value.errno == errno.ENOENT

    run(engine, tmp / "cache", test)


def test_a_kept_spool_is_served_by_the_next_mount_without_an_export(engine: Engine, tmp: Path) -> None:
    expected = engine.save("hello:latest")
    sizes: list[int] = []

    async def first(t: Ops) -> None:
        attr = await t.walk("hello:latest/export.tar")
        assert attr.st_size == 0 and attr.st_mode & 0o777 == 0o440  # never exported here: size unknown
        assert await t.cat(attr.st_ino) == expected

    async def second(t: Ops) -> None:
        attr = await t.walk("hello:latest/export.tar")
        sizes.append(attr.st_size)
        assert await t.cat(attr.st_ino) == expected

    run(engine, tmp / "cache", first)
    since = time.time()
    run(engine, tmp / "cache", second)
    assert sizes == [len(expected)]  # exact, and never to be asked again
    assert engine.events(since, "save") == []


def test_an_invalidation_names_what_the_kernel_holds(engine: Engine, tmp: Path, moving: str) -> None:
    async def test(t: Ops) -> None:
        await t.walk(f"{moving}/inspect")
        await t.walk("hello:latest/inspect")
        before = await t.catalog.snapshot()
        engine.docker("tag", "busybox:latest", moving)
        change = await t.catalog.refresh()
        what = affected(change)
        held = {node.path for _, node in t.ops.inodes.known()}
        assert ("ops", "moving:1") in what.trees and ("ops", "moving:1", "inspect") in held
        # hello:latest's inspect changed too (it lost a tag), so its names are dropped with it.
        assert ("hello:latest",) in what.trees
        assert before is not await t.catalog.snapshot()

    run(engine, tmp / "cache", test)


def test_xattrs_and_flush_reach_the_nodes_only_where_a_node_kind_has_them(engine: Engine, tmp: Path) -> None:
    async def test(t: Ops) -> None:
        attr = await t.walk("hello:latest/inspect")
        info = await t.ops.open(attr.st_ino, os.O_RDONLY, CTX)
        for call in (t.ops.getxattr(attr.st_ino, b"user.x", CTX), t.ops.listxattr(attr.st_ino, CTX),
                     t.ops.flush(info.fh)):
            with pytest.raises(pyfuse3.FUSEError) as raised:  # none here: the kernel is told to stop asking
                await call
            assert raised.value.errno == errno.ENOSYS
        t.ops.tree.xattrs = t.ops.tree.flushes = True  # as a tree whose nodes carry them
        with pytest.raises(pyfuse3.FUSEError) as raised:
            await t.ops.getxattr(attr.st_ino, b"user.x", CTX)
        assert raised.value.errno == errno.ENODATA
        assert await t.ops.listxattr(attr.st_ino, CTX) == []
        await t.ops.flush(info.fh)
        await t.ops.release(info.fh)

    run(engine, tmp / "cache", test)
