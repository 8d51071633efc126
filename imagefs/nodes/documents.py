"""Generated documents: `inspect`, `history`, `.imagefs/version` — a node is the bytes it was made with.

The bytes are fetched when the name is looked up, so the node's size is their
length for as long as the kernel holds the inode, and a document that changes
(a tag added to the image shows in its inspect) is another node.
"""

from __future__ import annotations

import stat as st
from collections.abc import Hashable
from dataclasses import dataclass

from ..catalog import Image
from ..references import TreePath
from .base import BytesHandle, Context, File, Handle, Stat, digest


@dataclass
class DocumentFile(File):
    path: TreePath
    data: bytes
    mtime: int

    def __post_init__(self) -> None:
        self._digest = digest(self.data)  # once: every lookup asks the key, every open the version

    @property
    def key(self) -> Hashable:
        return ("document", self.path, self._digest)

    async def stat(self) -> Stat:
        return Stat(st.S_IFREG | 0o444, len(self.data), self.mtime)

    async def open(self, flags: int, pid: int) -> Handle:
        return BytesHandle(self.data, self._digest)


async def image_document(ctx: Context, path: TreePath, image: Image, kind: str) -> DocumentFile:
    return DocumentFile(path, await ctx.catalog.document(image.id, kind), image.created)


async def version_document(ctx: Context, path: TreePath) -> DocumentFile:
    snap = await ctx.catalog.snapshot()
    return DocumentFile(path, await ctx.catalog.version(), snap.newest.get((), 0))
