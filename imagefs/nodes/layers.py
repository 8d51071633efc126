"""`layers/`: one directory per `RootFS.Layers` entry, bottom first, each as dive shows a layer.

    layers/<n>-<diff id>/changes      what the layer added, changed, deleted (`docker diff`'s form)
    layers/<n>-<diff id>/layer.json   its history line, diff ID, size, and the bytes it wasted
    layers/<n>-<diff id>/files/       the layer's own files, also those later layers hid
    layers/<n>-<diff id>/removed/     what the layer removed or replaced, as it was

The list of layers comes from the image's inspect document, so `ls layers/`
needs no export; what is inside a layer comes from the image's index.
"""

from __future__ import annotations

import json
from collections.abc import Hashable
from dataclasses import dataclass

import trio

from ..catalog import Image
from ..errors import EngineFailed
from ..references import TreePath
from ..rootfs.views import files_tree, removed_tree
from .base import Context, Dir, Node, Stat, dir_stat
from .documents import DocumentFile
from .rootfs import TreeDir, View

LAYER_FILES = ("changes", "files", "layer.json", "removed")


@dataclass
class LayersDir(Dir):
    ctx: Context
    path: TreePath
    image: Image
    target: str

    @property
    def key(self) -> Hashable:
        return ("layers", self.image.id)

    async def stat(self) -> Stat:
        return dir_stat(self.image.created)

    async def _names(self) -> list[str]:
        try:
            diff_ids = json.loads(await self.ctx.catalog.document(self.image.id, "inspect"))["RootFS"]["Layers"]
        except (ValueError, KeyError, TypeError) as exc:
            raise EngineFailed(200, f"the inspect document of {self.image.id[:12]} lists no layers ({exc})") from None
        width = max(2, len(str(len(diff_ids) - 1)))  # ls sorts them bottom first
        return [f"{n:0{width}d}-{str(d).removeprefix('sha256:')[:12]}" for n, d in enumerate(diff_ids)]

    async def lookup(self, name: str) -> Node | None:
        names = await self._names()
        if name not in names:
            return None
        return LayerDir(self.ctx, (*self.path, name), self.image, self.target, names.index(name))

    async def entries(self) -> list[tuple[str, Node]]:
        return [(name, LayerDir(self.ctx, (*self.path, name), self.image, self.target, n))
                for n, name in enumerate(await self._names())]


@dataclass
class LayerDir(Dir):
    ctx: Context
    path: TreePath
    image: Image
    target: str
    n: int

    @property
    def key(self) -> Hashable:
        return ("layer", self.image.id, self.n)

    async def stat(self) -> Stat:
        return dir_stat(self.image.created)

    async def lookup(self, name: str) -> Node | None:
        path, mtime = (*self.path, name), self.image.created
        if name in ("files", "removed"):
            tree = files_tree(self.n) if name == "files" else removed_tree(self.n)
            return TreeDir(View(self.ctx, self.image.id, self.target, tree), path, mtime)
        if name not in LAYER_FILES:
            return None
        ix = await self.ctx.rootfs.index(self.image.id, self.target)
        if name == "changes":
            return DocumentFile(path, await trio.to_thread.run_sync(ix.changes, self.n), mtime)  # a sort
        info = ix.layers[self.n]
        doc = {"layer": self.n, "diff_id": info.diff_id, "created_by": info.created_by, "size": info.size,
               "compression": info.compression or None, "changed_paths": info.changed, "wasted_bytes": info.wasted}
        return DocumentFile(path, (json.dumps(doc, indent=2, ensure_ascii=False) + "\n").encode(), mtime)

    async def entries(self) -> list[tuple[str, Node]]:
        found = [(name, await self.lookup(name)) for name in LAYER_FILES]
        return [(name, node) for name, node in found if node is not None]
