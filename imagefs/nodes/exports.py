"""`export.tar` and `.imagefs/all.tar`: spool states as the attributes GNU tar, cp and sendfile need.

They copy exactly `st_size` bytes and the engine sends no length, so a size is
reported only when it is exact: the size of a complete or stored spool; a
remembered size, volatile until an export proves it; or, while an export runs,
the final size, which a `stat` waits for. Before any of these: 0 with mode 0440,
which GNU tar opens and stats again rather than storing empty (it skips only
0-byte files everyone may read). A lookup or listing never waits.

An inode is told one size only. The kernel drops a GETATTR reply that crosses any
change of the inode (an invalidation, another reply) and then reads up to the
size it holds: an inode a lookup told 0 may read as empty whatever it is told
later. So the size a node was looked up with is part of its key: once the size is
known, a lookup leads to another inode, served through the page cache; the inode
told 0 is read with direct I/O, which ends where the spool ends, and its opener has
the kernel forget the name, so that the next one finds the other inode.
"""

from __future__ import annotations

import stat as st
from collections.abc import Hashable
from dataclasses import dataclass, field

from ..errors import ExportBroken
from ..references import TreePath
from ..spool.export import Content, Export, State
from ..spool.exports import Exports
from .base import Context, File, Handle, Stat

# The I/O size cat and cp choose (st_blksize): the first reader of an export reads with direct I/O
# once the whole export is spooled, so how fast it goes is the number of requests.
BLKSIZE = 1 << 20


def _listed(export: Export, mtime: int) -> Stat:
    """What a lookup or listing tells without waiting: an exact size, or the volatile 0."""
    if export.state is State.COMPLETE:
        return _stat(0o444, export.size, mtime)
    if export.state is State.IDLE and export.stored is not None:
        return _stat(0o444, export.stored, mtime)
    if export.state is not State.FAILED and export.expected is not None:
        # Unproven until an export is verified, which every open waits for before any read.
        return _stat(0o444, export.expected, mtime, volatile=True)
    return _stat(0o440, 0, mtime, volatile=True)  # failed (a listing goes on), or not known yet


def _stat(mode: int, size: int, mtime: int, volatile: bool = False) -> Stat:
    return Stat(st.S_IFREG | mode, size, mtime, volatile=volatile, blksize=BLKSIZE)


async def export_stat(export: Export, mtime: int, wait: bool) -> Stat:
    """Only ever an exact size, or the volatile 0 that sends a reader back to stat."""
    if export.state is State.FAILED and wait and export.error is not None:
        raise export.error
    if export.state is State.RUNNING and export.expected is None and wait:
        await export.done.wait()
        return await export_stat(export, mtime, wait)
    return _listed(export, mtime)


@dataclass
class ExportFile(File):
    """ImageGet of one content: these images under these references, spooled once, shared by all readers."""

    ctx: Context
    path: TreePath
    content: Content
    mtime: int
    told: Stat = field(init=False)  # what its lookup tells the kernel: the only size its inode is told

    def __post_init__(self) -> None:
        self.told = _listed(self.ctx.exports.current(self.content), self.mtime)

    @property
    def key(self) -> Hashable:
        return ("export", self.path, self.content.key, self.told.size)

    async def stat(self) -> Stat:
        return self._as_told(await export_stat(self.ctx.exports.current(self.content), self.mtime, wait=True))

    async def listing_stat(self) -> Stat:
        return self.told

    def _as_told(self, found: Stat) -> Stat:
        """An inode told a size never turns into another one (an inode told 0 is read directly)."""
        if self.told.size and found.size != self.told.size:
            raise ExportBroken(f"export of {' '.join(self.content.names)} is {found.size} bytes now, "
                               f"not the {self.told.size} this file was looked up with")
        return found

    async def open(self, flags: int, pid: int) -> Handle:
        """Returns once the export is complete and verified (or fails with its error)."""
        export = await self.ctx.exports.open(self.content)
        try:
            await export.done.wait()
            if export.error is not None:
                raise export.error
            self._as_told(Stat(self.told.mode, export.size, self.mtime))
        except BaseException:
            await self.ctx.exports.release(export)
            raise
        told = self.told.size > 0
        return ExportHandle(self.ctx.exports, export, cacheable=told, relookup=not told)


@dataclass
class ExportHandle(Handle):
    """A complete, verified export; through the page cache (readers of one export share pages) when
    its inode was told its size, else directly: the kernel may hold size 0 for that inode."""

    exports: Exports
    export: Export
    cacheable: bool = True
    relookup: bool = False  # opened through the inode told 0: the size is known now, another inode has it

    async def read(self, offset: int, size: int) -> memoryview:
        return await self.exports.read(self.export, max(0, min(size, self.export.size - offset)), offset)

    async def release(self) -> None:
        await self.exports.release(self.export)

    @property
    def version(self) -> object:
        return self.export  # another export of the same content starts with an empty page cache
