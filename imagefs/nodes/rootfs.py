"""`rootfs/` (and each layer's trees): the files inside an image, answered from its index.

Every node stands for one row of an image's index; rows never change, so a
node's key is the image, the tree and the row's inode number: the paths of a
hardlink set are one inode. A directory's listing and lookups are index
queries; a file's bytes are read from the layer's tar in the spool at the offset
the row holds. The tree's own top (`TreeDir`) answers a listing of its parent
without the index, so `ls -l` of an image directory never starts an export.
"""

from __future__ import annotations

import os
import stat as st
from collections.abc import Hashable
from dataclasses import dataclass, field

import trio

from ..references import TreePath
from ..rootfs.build import ROOTFS
from ..rootfs.index import Index, Row
from ..rootfs.indexes import Source
from ..rootfs.members import BLOCKDEV, CHAR, DIRECTORY, FIFO, REGULAR, SYMLINK
from .base import BytesHandle, Context, Dir, File, Handle, Node, Stat, digest

FILE_TYPE = {REGULAR: st.S_IFREG, SYMLINK: st.S_IFLNK, CHAR: st.S_IFCHR, BLOCKDEV: st.S_IFBLK,
             DIRECTORY: st.S_IFDIR, FIFO: st.S_IFIFO}


@dataclass(frozen=True)
class View:
    """One tree of one image's index, reached through an image directory that exports as `target`."""

    ctx: Context
    image_id: str
    target: str
    tree: bytes

    async def index(self) -> Index:
        return await self.ctx.rootfs.index(self.image_id, self.target, views=self.tree != ROOTFS)


def row_stat(row: Row) -> Stat:
    mode = FILE_TYPE.get(row.kind, st.S_IFREG) | (0o777 if row.kind == SYMLINK else row.mode)
    size = len(row.link) if row.kind == SYMLINK else row.size
    return Stat(mode, size, row.mtime, nlink=row.nlink, uid=row.uid, gid=row.gid, rdev=row.rdev)


def row_node(view: View, path: TreePath, row: Row) -> Node:
    if row.kind == DIRECTORY:
        return RowDir(view, path, row)
    if row.kind == REGULAR:
        return RowFile(view, path, row)
    return RowNode(view, path, row)


@dataclass
class RowNode(Node):
    """A symbolic link (its target verbatim, never followed here), a fifo or a device node."""

    view: View
    path: TreePath
    row: Row
    immutable = True  # a row of an index named by the image ID

    @property
    def key(self) -> Hashable:
        return ("row", self.view.image_id, self.view.tree, self.row.ino)

    async def stat(self) -> Stat:
        return row_stat(self.row)

    async def readlink(self) -> bytes:
        if self.row.kind != SYMLINK:
            return await super().readlink()
        return self.row.link

    async def xattrs(self) -> dict[bytes, bytes]:
        return (await self.view.index()).xattrs(self.row.ino)


@dataclass
class RowDir(RowNode, Dir):
    async def lookup(self, name: str) -> Node | None:
        row = (await self.view.index()).lookup(self.row.id, os.fsencode(name))
        return row_node(self.view, (*self.path, name), row) if row else None

    async def entries(self) -> list[tuple[str, Node]]:
        rows = (await self.view.index()).children(self.row.id)
        return [(os.fsdecode(r.name), row_node(self.view, (*self.path, os.fsdecode(r.name)), r)) for r in rows]


@dataclass
class RowFile(RowNode, File):
    async def open(self, flags: int, pid: int) -> Handle:
        if self.row.size == 0:
            return BytesHandle(b"", digest(b""))
        return RowHandle(self.view, self.row, self.key)


@dataclass
class RowHandle(Handle):
    """A file's bytes in its layer's tar, through the page cache: they never change. The layer is opened
    at the first read, which a warm open (its pages all cached) never makes: `grep -r` costs no more
    than the kernel's open and release round trips. So unlike other handles, a first read may join or
    start the export (what the open did before): the one kept for this image ID, and the layer is checked
    against the index's diff ID, so a reference moved since the open is EIO, never other bytes."""

    view: View
    row: Row
    content: Hashable
    source: Source | None = None
    _opening: trio.Lock = field(default_factory=trio.Lock)  # readahead sends first reads together: one opens

    async def read(self, offset: int, size: int) -> bytes | memoryview:
        size = max(0, min(size, self.row.size - offset))
        if not size:
            return b""
        async with self._opening:
            if self.source is None:
                self.source = await self.view.ctx.rootfs.data(self.view.image_id, self.view.target, self.row.layer)
        return await self.source.read(size, self.row.offset + offset)

    async def release(self) -> None:
        if self.source is not None:
            await self.source.close()

    @property
    def version(self) -> object:
        return self.content


@dataclass
class TreeDir(Dir):
    """The top of a tree (`rootfs/`): its stat, and its (no) xattrs that `ls -l` of its parent asks for,
    without the index; its entries from the tree's root row."""

    view: View
    path: TreePath
    mtime: int
    # Its image's tree; the name that leads here belongs to the reference directory, which may move.
    immutable = True

    @property
    def key(self) -> Hashable:
        return ("tree", self.view.image_id, self.view.tree)

    async def stat(self) -> Stat:
        return Stat(st.S_IFDIR | 0o755, 0, self.mtime, uid=0, gid=0)

    async def _root(self) -> RowDir:
        return RowDir(self.view, self.path, (await self.view.index()).tree(self.view.tree))

    async def lookup(self, name: str) -> Node | None:
        return await (await self._root()).lookup(name)

    async def entries(self) -> list[tuple[str, Node]]:
        return await (await self._root()).entries()
