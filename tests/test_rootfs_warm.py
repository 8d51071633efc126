"""Warm rootfs/: the kernel keeps what an image's tree told it, and the reference above it still moves.

Nodes inside `rootfs/` are rows of an index named by the image ID, so their
names, absences and attributes are given to the kernel for a day, and their
listings are kept; the `rootfs` name itself belongs to a reference directory,
which follows the engine (SPEC §5: another's retag shows within 1 s).
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pyfuse3
import pytest
from conftest import Engine, Mount, mounted, settled, wait_for
from test_ops import CTX, Ops, run

from imagefs.fuse.operations import FOREVER

MOVING = "warm/moving:1"
HANDLER = re.compile(r"imagefs\.fuse\.operations: (\w+)\((\d+)")
READ = re.compile(r"imagefs\.fuse\.operations: read\(\d+, \d+, (\d+)\)")


@pytest.fixture
def moving(engine: Engine) -> Iterator[str]:
    engine.docker("tag", "hello:latest", MOVING)
    yield MOVING
    engine.docker("rmi", MOVING, check=False)


def handlers(m: Mount, since: int) -> list[tuple[str, int]]:
    """(handler, its first argument) of each request the daemon logged past `since` characters."""
    return [(name, int(arg)) for name, arg in HANDLER.findall(m.log_text()[since:])]


def test_a_retag_shows_another_rootfs_within_the_coherence_window(engine: Engine, moving: str, tmp: Path) -> None:
    with mounted(engine, tmp) as m:
        rootfs = m / moving / "rootfs"
        assert os.listdir(rootfs) == ["srv"]
        assert not (rootfs / "hello.txt").exists()  # an absence the kernel keeps, for this image's tree
        old = os.open(rootfs / "srv/hello.txt", os.O_RDONLY)
        try:
            old_ino = os.stat(rootfs).st_ino
            engine.docker("tag", "myorg/app:1.0", moving)
            took = wait_for(lambda: "hello.txt" in os.listdir(rootfs), timeout=3)
            assert took <= 1.5, f"the retag showed in rootfs/ after {took:.2f} s"
            assert os.stat(rootfs).st_ino != old_ino
            assert (rootfs / "hello.txt").read_bytes() == b"hello from imagefs\n"
            assert not (rootfs / "srv").exists()
            assert os.pread(old, 100, 0) == b"hello from imagefs\n"  # the old image's file, still whole
        finally:
            os.close(old)


def test_a_warm_walk_asks_nothing_but_listings_after_the_catalog_ttl(engine: Engine, tmp: Path) -> None:
    with mounted(engine, tmp, "--debug", "--live-ttl", "1") as m:
        settled(m)
        rootfs = m / "busybox:latest/rootfs"

        def walk() -> dict[int, str]:
            """What `find -printf '%s %m'` asks: names and attributes, no link followed (readlink has
            no kernel cache in pyfuse3, and it makes the kernel ask the link's atime again)."""
            inos, dirs = {os.lstat(rootfs).st_ino: "."}, [rootfs]
            while dirs:
                with os.scandir(dirs.pop()) as it:
                    for entry in it:
                        inos[entry.stat(follow_symlinks=False).st_ino] = os.path.relpath(entry.path, rootfs)
                        if entry.is_dir(follow_symlinks=False):
                            dirs.append(Path(entry.path))
            assert (rootfs / "bin/busybox").read_bytes()[:4] == b"\x7fELF"
            return inos

        inos = walk()
        assert len(inos) > 100  # busybox's applets
        time.sleep(1.5)  # past --live-ttl: every name and attribute of the catalog's is asked again
        since = len(m.log_text())
        assert walk() == inos
        asked = handlers(m, since)
        assert not [(h, inos[ino]) for h, ino in asked if h in ("lookup", "getattr") and ino in inos]
        assert ("lookup", pyfuse3.ROOT_INODE) in asked  # the reference's names were asked again
        # busybox's pages outlived its last close (opened without keep_cache, all of it would be read again);
        # on kernel 6.18 a loaded machine's page cache has been seen to lose a page of it meanwhile
        reread = sum(int(size) for size in READ.findall(m.log_text()[since:]))
        assert reread <= (rootfs / "bin/busybox").stat().st_size // 16


def test_only_the_image_s_tree_is_kept_forever(engine: Engine, tmp: Path) -> None:
    async def test(t: Ops) -> None:
        ttl = t.catalog.ttl
        ref = await t.walk("hello:latest")
        assert (ref.entry_timeout, ref.attr_timeout) == (ttl, ttl)
        rootfs = await t.walk("hello:latest/rootfs")
        assert (rootfs.entry_timeout, rootfs.attr_timeout) == (ttl, FOREVER)  # the name is the reference's
        srv = await t.ops.lookup(rootfs.st_ino, b"srv", CTX)
        assert (srv.entry_timeout, srv.attr_timeout) == (FOREVER, FOREVER)
        absent = await t.ops.lookup(rootfs.st_ino, b"nothing", CTX)
        assert (absent.st_ino, absent.entry_timeout) == (0, FOREVER)
        with pytest.raises(pyfuse3.FUSEError):  # a reference directory's absences are not kept
            await t.ops.lookup(ref.st_ino, b"nothing", CTX)

        kept, again = await t.ops.opendir(rootfs.st_ino, CTX), await t.ops.opendir(rootfs.st_ino, CTX)
        assert t.ops.handles[kept] is t.ops.handles[again]  # one listing, its replies built once
        assert (await t.walk("hello:latest/rootfs")).st_ino == rootfs.st_ino  # another node, an equal one
        later = await t.ops.opendir(rootfs.st_ino, CTX)
        assert t.ops.handles[later] is t.ops.handles[kept]
        fresh, other = await t.ops.opendir(ref.st_ino, CTX), await t.ops.opendir(ref.st_ino, CTX)
        assert t.ops.handles[fresh] is not t.ops.handles[other]  # a reference's: taken at each opendir
        for fh in (kept, again, later, fresh, other):
            await t.ops.releasedir(fh)
        assert rootfs.st_ino in t.ops._listings and ref.st_ino not in t.ops._listings
        await t.ops.forget([(rootfs.st_ino, 2)])  # both lookups
        assert rootfs.st_ino not in t.ops._listings

    run(engine, tmp / "cache", test)


def test_a_tree_reached_through_another_reference_lists_nodes_of_that_one(
        engine: Engine, tmp: Path, moving: str) -> None:
    """One image, one tree inode; but its nodes read through the reference they were reached by (what a
    first read exports), so a kept listing serves only the directory node it was taken from."""

    async def test(t: Ops) -> None:
        first = await t.walk("hello:latest/rootfs")
        kept = await t.ops.opendir(first.st_ino, CTX)
        second = await t.walk(f"{moving}/rootfs")
        assert second.st_ino == first.st_ino
        other = await t.ops.opendir(second.st_ino, CTX)
        listing = t.ops.handles[other]
        assert listing is not t.ops.handles[kept]
        assert {node.view.target for _, node in listing.entries} == {moving}  # type: ignore[attr-defined]
        srv = await t.ops.lookup(second.st_ino, b"srv", CTX)
        assert t.ops.inodes.node(srv.st_ino).view.target == moving  # type: ignore[attr-defined]
        for fh in (kept, other):
            await t.ops.releasedir(fh)

    run(engine, tmp / "cache", test)
