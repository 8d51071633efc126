"""`.imagefs/status`: the journal of long operations (imagefs.activity), read as it grows.

Its size is exact at every getattr (the attributes are volatile) and a read returns what the
journal holds at that moment, so `tail -f`, which polls a FUSE file's size, prints each new line.
"""

from __future__ import annotations

import stat as st
from dataclasses import dataclass

from ..references import TreePath
from .base import Context, File, Handle, Stat


@dataclass
class StatusFile(File):
    ctx: Context
    path: TreePath
    mtime: int

    async def stat(self) -> Stat:
        return Stat(st.S_IFREG | 0o444, len(self.ctx.activity.text().encode()), self.mtime, volatile=True)

    async def open(self, flags: int, pid: int) -> Handle:
        return StatusHandle(self.ctx)


@dataclass
class StatusHandle(Handle):
    ctx: Context
    cacheable = False

    async def read(self, offset: int, size: int) -> bytes:
        return self.ctx.activity.text().encode()[offset : offset + size]
