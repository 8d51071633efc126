"""The directories: the root and reference paths (images, namespaces, both), `.imagefs`, `ids/`.

Each kind resolves a name from one table of its own (fixed files first, then
what the catalog's snapshot holds) and lists by resolving the names it lists,
so listing and lookup can never disagree. A directory's key holds the image it
stands for: a moved tag makes the path another directory.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass

from .. import controls, references
from ..catalog import Image
from ..errors import EngineTimeout, EngineUnreachable
from ..references import TreePath
from ..rootfs.build import ROOTFS
from ..uploads import kinds
from .base import Context, Dir, Node, Stat, dir_stat
from .controls import ControlFile
from .documents import image_document, version_document
from .exports import ExportFile
from .layers import LayersDir
from .rootfs import TreeDir, View
from .search import SearchDir
from .status import StatusFile
from .uploads import UploadDir

RESERVED = ".imagefs"
IDS = "ids"
UPLOADS = (kinds.LOAD, kinds.IMPORT, kinds.BUILD)

ImageFile = Callable[[Context, TreePath, Image, str], Awaitable[Node]]


async def _inspect(ctx: Context, path: TreePath, image: Image, target: str) -> Node:
    return await image_document(ctx, path, image, "inspect")


async def _history(ctx: Context, path: TreePath, image: Image, target: str) -> Node:
    return await image_document(ctx, path, image, "history")


async def _export(ctx: Context, path: TreePath, image: Image, target: str) -> Node:
    return ExportFile(ctx, path, ctx.exports.for_image(image.id, target), image.created)


async def _rootfs(ctx: Context, path: TreePath, image: Image, target: str) -> Node:
    return TreeDir(View(ctx, image.id, target, ROOTFS), path, image.created)


async def _layers(ctx: Context, path: TreePath, image: Image, target: str) -> Node:
    return LayersDir(ctx, path, image, target)


def _control(name: str) -> ImageFile:
    async def make(ctx: Context, path: TreePath, image: Image, target: str) -> Node:
        return ControlFile(ctx, path, controls.COMMANDS[name], target, image.id, image.created)

    return make


# The files of every image directory, in listing order; `target` is what the engine calls the image.
IMAGE_FILES: dict[str, ImageFile] = {
    "inspect": _inspect, "history": _history, "export.tar": _export, "tag": _control("tag"),
    "delete": _control("delete"), "push": _control("push"), "rootfs": _rootfs, "layers": _layers,
}
# The engine-wide control files of .imagefs/.
RESERVED_CONTROLS = ("prune", "pull", "commit", "build-prune")


async def _children(dir_: Dir, names: list[str]) -> list[tuple[str, Node]]:
    found = [(name, await dir_.lookup(name)) for name in names]
    return [(name, node) for name, node in found if node is not None]


@dataclass
class RefDir(Dir):
    """A directory at a reference path: an image, a namespace, or both at once."""

    ctx: Context
    path: TreePath
    image: Image | None

    @property
    def key(self) -> Hashable:
        return ("dir", self.path, self.image.id if self.image else None)

    async def stat(self) -> Stat:
        if self.image is not None:
            return dir_stat(self.image.created)
        return dir_stat((await self.ctx.catalog.snapshot()).newest.get(self.path, 0))

    async def lookup(self, name: str) -> Node | None:
        if self.image is not None and name in IMAGE_FILES:  # a fixed file wins over a namespace child
            return await IMAGE_FILES[name](self.ctx, (*self.path, name), self.image, "/".join(self.path))
        path = (*self.path, name)
        if not (references.is_image_path(path) or references.is_namespace_path(path)):
            return None  # no reference can live here: answered without the engine
        snap = await self.ctx.catalog.snapshot()
        image = snap.image_at(path)
        if image is None and not snap.is_namespace(path):
            return None
        return RefDir(self.ctx, path, image)

    async def entries(self) -> list[tuple[str, Node]]:
        files = list(IMAGE_FILES) if self.image is not None else []
        children = (await self.ctx.catalog.snapshot()).children.get(self.path, set())
        # A namespace child named like a fixed file is shadowed; its images stay reachable by ID.
        return await _children(self, [*files, *sorted(children - set(files))])


@dataclass
class Root(RefDir):
    """The mount's root: the first components of references, and the hidden `.imagefs`."""

    path: TreePath = ()
    image: Image | None = None

    @property
    def key(self) -> Hashable:
        return "root"

    async def lookup(self, name: str) -> Node | None:
        if name == RESERVED:
            return ReservedDir(self.ctx, (RESERVED,))
        return await super().lookup(name)


@dataclass
class ReservedDir(Dir):
    ctx: Context
    path: TreePath

    async def stat(self) -> Stat:
        try:
            return dir_stat((await self.ctx.catalog.snapshot()).newest.get((), 0))
        except (EngineUnreachable, EngineTimeout):
            if self.ctx.uploads is None:
                raise
            # The upload records below are local: what went wrong stays readable with the engine down.
            return dir_stat(int(self.ctx.uploads.started))

    async def lookup(self, name: str) -> Node | None:
        path = (*self.path, name)
        if name == IDS:
            return IdsDir(self.ctx, path)
        if name == "version":
            return await version_document(self.ctx, path)
        if name == "search":
            return SearchDir(self.ctx, path)
        if name in UPLOADS and self.ctx.uploads is not None:
            return UploadDir(self.ctx, path, self.ctx.uploads, name)
        snap = await self.ctx.catalog.snapshot()
        if name in RESERVED_CONTROLS:
            return ControlFile(self.ctx, path, controls.COMMANDS[name], "", None, snap.newest.get((), 0))
        if name == "status":
            return StatusFile(self.ctx, path, snap.newest.get((), 0))
        if name == "all.tar":
            refs = {ref: image.id for ref, image in snap.by_ref.items() if "@" not in ref}
            if refs:  # no tagged image: nothing to export, no file
                return ExportFile(self.ctx, path, self.ctx.exports.for_all(refs), snap.newest.get((), 0))
        return None

    async def entries(self) -> list[tuple[str, Node]]:
        return await _children(self, sorted([IDS, "all.tar", *RESERVED_CONTROLS, "search", "status", "version",
                                             *UPLOADS]))


@dataclass
class IdsDir(ReservedDir):
    async def lookup(self, name: str) -> Node | None:
        if not references.is_image_id(name):
            return None
        image = (await self.ctx.catalog.snapshot()).images.get(name)
        return IdDir(self.ctx, (*self.path, name), image) if image else None

    async def entries(self) -> list[tuple[str, Node]]:
        return await _children(self, sorted((await self.ctx.catalog.snapshot()).images))


@dataclass
class IdDir(Dir):
    ctx: Context
    path: TreePath
    image: Image

    @property
    def key(self) -> Hashable:
        return ("dir", self.path, self.image.id)

    async def stat(self) -> Stat:
        return dir_stat(self.image.created)

    async def lookup(self, name: str) -> Node | None:
        make = IMAGE_FILES.get(name)
        return await make(self.ctx, (*self.path, name), self.image, self.image.id) if make else None

    async def entries(self) -> list[tuple[str, Node]]:
        return await _children(self, list(IMAGE_FILES))
