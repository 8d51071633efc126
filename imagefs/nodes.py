"""The tree of SPEC §1: which path is which node, what each node lists, stats and opens.

Nothing here knows FUSE. A node is a small value named by its path; the
adapter resolves paths to nodes on every request, so a node is never stale
longer than the catalog's snapshot is.
"""

from __future__ import annotations

import hashlib
import stat as st
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from . import controls, references
from .catalog import Catalog, Change, Image, Snapshot
from .errors import NoSuchImage, ReadOnly
from .references import Path

if TYPE_CHECKING:
    from .exports import Export, Exports

RESERVED = ".imagefs"
IDS = "ids"
IMAGE_FILES = ("inspect", "history", "export.tar", "tag", "delete")
RESERVED_FILES = ("version", "prune", "all.tar")


@dataclass(frozen=True)
class Stat:
    mode: int  # st_mode with the file type
    size: int
    mtime: int  # unix seconds; also ctime, which must not move under GNU tar
    volatile: bool = False  # the kernel must not cache these attributes (size may change under it)


class Node(ABC):
    path: Path

    @abstractmethod
    async def stat(self) -> Stat: ...

    async def listing_stat(self) -> Stat:
        """The attributes readdir gives, which must never be wrong for a later read."""
        return await self.stat()


class Dir(Node):
    @abstractmethod
    async def names(self) -> Iterable[str]:
        """The names readdir lists (hidden ones excepted)."""


class File(Node):
    @property
    def writable(self) -> bool:
        return False

    @abstractmethod
    async def open(self) -> Handle: ...


class Handle(ABC):
    """One open file: what its reads return (a snapshot) and, for control files, its writes."""

    cacheable = True  # the kernel may serve reads from its page cache

    @abstractmethod
    async def read(self, offset: int, size: int) -> bytes | memoryview: ...

    async def write(self, data: bytes) -> None:
        raise ReadOnly("this file takes no writes")

    async def release(self) -> None:
        return None

    @property
    def version(self) -> object:
        """Equal versions mean equal content: the kernel may keep its cached pages."""
        return None


@dataclass
class BytesHandle(Handle):
    data: bytes

    async def read(self, offset: int, size: int) -> bytes:
        return self.data[offset : offset + size]

    @property
    def version(self) -> object:
        return hashlib.blake2b(self.data, digest_size=16).digest()


@dataclass
class Tree:
    """Resolves paths against the catalog and owns what control files remember."""

    catalog: Catalog
    exports: Exports
    read_only: bool = False

    def __post_init__(self) -> None:
        self.outcomes: dict[Path, str] = {}

    async def newest(self) -> int:
        """The time of engine-wide nodes: the newest image's Created."""
        return (await self.catalog.snapshot()).newest.get((), 0)

    async def resolve(self, path: Path) -> Node | None:
        if not path:
            return Root(self)
        if path[0] == RESERVED:
            return await self._resolve_reserved(path)
        if path[-1] in IMAGE_FILES and references.is_image_path(path[:-1]):
            image = (await self.catalog.snapshot()).image_at(path[:-1])
            if image is not None:  # the fixed file wins over a namespace child of the same name
                return self._image_file(path, image, "/".join(path[:-1]))
        if not (references.is_image_path(path) or references.is_namespace_path(path)):
            return None  # no reference can live here: answered without the engine
        snap = await self.catalog.snapshot()
        image = snap.image_at(path)
        if image is None and not snap.is_namespace(path):
            return None
        return RefDir(self, path, image)

    async def _resolve_reserved(self, path: Path) -> Node | None:
        rest = path[1:]
        if not rest:
            return ReservedDir(self, path)
        if rest == ("version",):
            return VersionFile(self, path)
        if rest == ("prune",):
            return ControlFile(self, path, controls.COMMANDS["prune"], "")
        if rest == ("all.tar",):
            return AllExportFile(self, path)
        if rest[0] != IDS or len(rest) > 3:
            return None
        if len(rest) == 1:
            return IdsDir(self, path)
        if not references.is_image_id(rest[1]):
            return None
        image = (await self.catalog.snapshot()).images.get(rest[1])
        if image is None:
            return None
        if len(rest) == 2:
            return IdDir(self, path, image)
        return self._image_file(path, image, image.id) if rest[2] in IMAGE_FILES else None

    def _image_file(self, path: Path, image: Image, target: str) -> File:
        name = path[-1]
        if name in ("inspect", "history"):
            return DocumentFile(self, path, image, name)
        if name == "export.tar":
            return ExportFile(self, path, image, target)
        return ControlFile(self, path, controls.COMMANDS[name], target, image)

    def affected(self, change: Change) -> tuple[set[Path], set[Path]]:
        """For a catalog change: subtrees the kernel must forget whole, and nodes whose attributes changed."""
        new = change.new
        trees: set[Path] = set()
        nodes: set[Path] = {(), (RESERVED,), (RESERVED, IDS)}
        for ref in change.refs:
            path = tuple(ref.split("/"))
            trees.add(path)
            for depth in range(1, len(path)):  # namespaces that emptied, or whose newest image changed
                prefix = path[:depth]
                exists = new.is_namespace(prefix) or new.image_at(prefix) is not None
                (nodes if exists else trees).add(prefix)
        if change.refs:
            nodes.add((RESERVED, "all.tar"))  # every tagged reference is in it
        for image_id in change.ids:
            trees.add((RESERVED, IDS, image_id))
            for image in (change.old.images.get(image_id), new.images.get(image_id)):
                trees.update(tuple(ref.split("/")) for ref in (image.tags + image.digests if image else ()))
        return trees, nodes


def _dir_stat(mtime: int) -> Stat:
    return Stat(st.S_IFDIR | 0o555, 0, mtime)


@dataclass
class Root(Dir):
    tree: Tree
    path: Path = ()

    async def stat(self) -> Stat:
        return _dir_stat(await self.tree.newest())

    async def names(self) -> Iterable[str]:
        return sorted((await self.tree.catalog.snapshot()).children.get((), ()))


@dataclass
class RefDir(Dir):
    """A directory at a reference path: an image, a namespace, or both at once."""

    tree: Tree
    path: Path
    image: Image | None

    async def stat(self) -> Stat:
        if self.image is not None:
            return _dir_stat(self.image.created)
        return _dir_stat((await self.tree.catalog.snapshot()).newest.get(self.path, 0))

    async def names(self) -> Iterable[str]:
        snap: Snapshot = await self.tree.catalog.snapshot()
        files = IMAGE_FILES if self.image is not None else ()
        # A namespace child named like a fixed file is shadowed; its images stay reachable by ID.
        return [*files, *sorted(set(snap.children.get(self.path, ())) - set(files))]


@dataclass
class ReservedDir(Dir):
    tree: Tree
    path: Path

    async def stat(self) -> Stat:
        return _dir_stat(await self.tree.newest())

    async def names(self) -> Iterable[str]:
        return [IDS, *RESERVED_FILES]


@dataclass
class IdsDir(ReservedDir):
    async def names(self) -> Iterable[str]:
        return sorted((await self.tree.catalog.snapshot()).images)


@dataclass
class IdDir(Dir):
    tree: Tree
    path: Path
    image: Image

    async def stat(self) -> Stat:
        return _dir_stat(self.image.created)

    async def names(self) -> Iterable[str]:
        return IMAGE_FILES


@dataclass
class DocumentFile(File):
    """`inspect` or `history`: the engine's JSON, pretty, fetched when asked for."""

    tree: Tree
    path: Path
    image: Image
    kind: str

    async def stat(self) -> Stat:
        doc = await self.tree.catalog.document(self.image.id, self.kind)
        return Stat(st.S_IFREG | 0o444, len(doc), self.image.created)

    async def open(self) -> Handle:
        return BytesHandle(await self.tree.catalog.document(self.image.id, self.kind))


@dataclass
class VersionFile(File):
    tree: Tree
    path: Path

    async def stat(self) -> Stat:
        return Stat(st.S_IFREG | 0o444, len(await self.tree.catalog.version()), await self.tree.newest())

    async def open(self) -> Handle:
        return BytesHandle(await self.tree.catalog.version())


@dataclass
class ControlFile(File):
    """A file whose write is a command; a read gives its usage and the last outcome."""

    tree: Tree
    path: Path
    command: controls.Command
    target: str  # the reference or ID the command is about ("" for engine-wide commands)
    image: Image | None = None

    @property
    def writable(self) -> bool:
        return not self.tree.read_only

    def content(self) -> bytes:
        last = self.tree.outcomes.get(self.path)
        text = f"usage: {self.command.usage}\n" + (f"last: {last}\n" if last else "")
        return text.encode()

    async def stat(self) -> Stat:
        mtime = self.image.created if self.image else await self.tree.newest()
        return Stat(st.S_IFREG | 0o600, len(self.content()), mtime, volatile=True)

    async def open(self) -> Handle:
        return ControlHandle(self)

    async def run(self, data: bytes) -> None:
        if self.tree.read_only:
            raise ReadOnly("mounted read-only")
        try:
            params = self.command.parse(controls.decode(data))
            outcome = await self.command.run(self.tree.catalog.engine, self.target, params)
        except Exception as exc:
            self.tree.outcomes[self.path] = f"error: {getattr(exc, 'message', None) or exc}"
            raise
        self.tree.outcomes[self.path] = outcome
        await self.tree.catalog.refresh(settle=True)


@dataclass
class ControlHandle(Handle):
    node: ControlFile
    cacheable = False

    async def read(self, offset: int, size: int) -> bytes:
        return self.node.content()[offset : offset + size]

    async def write(self, data: bytes) -> None:
        await self.node.run(data)


@dataclass
class ExportFile(File):
    """`export.tar`: ImageGet of this reference (or ID), spooled once and shared by every reader."""

    tree: Tree
    path: Path
    image: Image
    target: str

    def _export(self) -> Export:
        return self.tree.exports.for_image(self.image.id, self.target)

    async def stat(self) -> Stat:
        return await self.tree.exports.stat(self._export(), self.image.created)

    async def listing_stat(self) -> Stat:
        return await self.tree.exports.stat(self._export(), self.image.created, wait=False)

    async def open(self) -> Handle:
        return await self.tree.exports.open(self._export())


@dataclass
class AllExportFile(File):
    """`.imagefs/all.tar`: ImageGetAll of every tagged reference."""

    tree: Tree
    path: Path

    async def _export(self) -> Export:
        snap = await self.tree.catalog.snapshot()
        return self.tree.exports.for_all({ref: image.id for ref, image in snap.by_ref.items() if "@" not in ref})

    async def _stat(self, wait: bool) -> Stat:
        return await self.tree.exports.stat(await self._export(), await self.tree.newest(), wait=wait)

    async def stat(self) -> Stat:
        return await self._stat(wait=True)

    async def listing_stat(self) -> Stat:
        return await self._stat(wait=False)

    async def open(self) -> Handle:
        export = await self._export()
        if not export.names:
            raise NoSuchImage(404, "no tagged images to export")
        return await self.tree.exports.open(export)
