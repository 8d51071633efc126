"""`export.tar` and `.imagefs/all.tar`: spool states as the attributes GNU tar, cp and sendfile need.

They copy exactly `st_size` bytes and the engine sends no length, so a size is
reported only when it is exact: the size of a complete or stored spool; a
remembered size, volatile until an export proves it; or, while an export runs,
the final size, which a `stat` waits for. Before any of these: 0 with mode 0440,
which GNU tar opens and stats again rather than storing empty (it skips only
0-byte files everyone may read). A lookup or listing never waits.
"""

from __future__ import annotations

import stat as st
from collections.abc import Hashable
from dataclasses import dataclass

from ..references import TreePath
from ..spool.export import Content, Export, State
from ..spool.exports import Exports
from .base import Context, File, Handle, Stat


async def export_stat(export: Export, mtime: int, wait: bool) -> Stat:
    """Only ever an exact size, or the volatile 0 that sends a reader back to stat."""
    if export.state is State.FAILED and wait and export.error is not None:
        raise export.error
    if export.state is State.COMPLETE:
        return Stat(st.S_IFREG | 0o444, export.size, mtime)
    if export.state is State.IDLE and export.stored is not None:
        return Stat(st.S_IFREG | 0o444, export.stored, mtime)
    if export.state is not State.FAILED and export.expected is not None:
        # Unproven until an export is verified, which every open waits for before any read.
        return Stat(st.S_IFREG | 0o444, export.expected, mtime, volatile=True)
    if export.state is State.RUNNING and wait:
        await export.done.wait()
        return await export_stat(export, mtime, wait)
    return Stat(st.S_IFREG | 0o440, 0, mtime, volatile=True)  # failed (a listing goes on), or not known yet


@dataclass
class ExportFile(File):
    """ImageGet of one content: these images under these references, spooled once, shared by all readers."""

    ctx: Context
    path: TreePath
    content: Content
    mtime: int

    @property
    def key(self) -> Hashable:
        return ("export", self.path, self.content.key)

    async def stat(self) -> Stat:
        return await export_stat(self.ctx.exports.current(self.content), self.mtime, wait=True)

    async def listing_stat(self) -> Stat:
        return await export_stat(self.ctx.exports.current(self.content), self.mtime, wait=False)

    async def open(self, flags: int, pid: int) -> Handle:
        """Returns once the export is complete and verified (or fails with its error).

        The kernel may have been told size 0 (not known yet) by a lookup or listing, and with an
        attribute timeout of 0 it still trusts that for the rest of the jiffy: a read then would
        be an end-of-file, `cat` would exit 0 with nothing. So no read may come before the size is
        exact, and the kernel is made to ask for it again (`refreshes`) before the open returns.
        """
        export = await self.ctx.exports.open(self.content)
        try:
            await export.done.wait()
            if export.error is not None:
                raise export.error
        except BaseException:
            await self.ctx.exports.release(export)
            raise
        return ExportHandle(self.ctx.exports, export)


@dataclass
class ExportHandle(Handle):
    """A complete, verified export, served through the page cache: readers of one export share pages."""

    exports: Exports
    export: Export
    refreshes = True

    async def read(self, offset: int, size: int) -> memoryview:
        return await self.exports.read(self.export, max(0, min(size, self.export.size - offset)), offset)

    async def release(self) -> None:
        await self.exports.release(self.export)

    @property
    def version(self) -> object:
        return self.export  # another export of the same content starts with an empty page cache
