"""The node protocol: what the adapter may ask of any node and of any open file.

A node stands for one piece of content, named by its `key`: equal keys are the
same inode, and a node whose content changes is a different node. So whatever
the kernel caches for an inode (its size, its pages) stays true for it; a name
that moves to other content leads to another node. Directories resolve their
children one name at a time (`lookup`) from the same table they list
(`entries`). Nothing here knows FUSE: failures are `imagefs.errors` classes.
"""

from __future__ import annotations

import hashlib
import stat as st
from abc import ABC, abstractmethod
from collections.abc import Hashable
from dataclasses import dataclass, field

import cachetools
import trio

from ..activity import Activity
from ..catalog import Catalog
from ..errors import NotPermitted, ReadOnly
from ..references import TreePath
from ..rootfs.indexes import Indexes
from ..spool.exports import Exports
from ..uploads.service import Uploads

SEARCH_TTL = 10.0  # seconds a search answer is kept: a lookup, then the read, then a second look


@dataclass(frozen=True)
class Stat:
    mode: int  # st_mode with the file type
    size: int
    mtime: int  # unix seconds; also ctime, which must not move under GNU tar
    volatile: bool = False  # the kernel must not cache these attributes (they may change for this node)
    nlink: int | None = None  # None: 2 for a directory, 1 otherwise
    uid: int | None = None  # None: the mounting user
    gid: int | None = None
    rdev: int = 0
    blksize: int = 128 * 1024  # the I/O size cp and cat choose for this file


@dataclass
class Context:
    """What every node of one mount reaches: the catalog, the exports, the mount's mode, control outcomes,
    the images' indexes (beside the spools)."""

    catalog: Catalog
    exports: Exports
    read_only: bool = False
    outcomes: dict[TreePath, str] = field(default_factory=dict)
    activity: Activity = field(default_factory=Activity)  # long operations, for .imagefs/status
    uploads: Uploads | None = None  # None: no load/, import/, build/ (a tree without a nursery for them)
    # .imagefs/search answers by name: their bytes and when they were had, kept briefly
    searches: cachetools.TTLCache[str, tuple[bytes, int]] = field(
        default_factory=lambda: cachetools.TTLCache(256, SEARCH_TTL, timer=trio.current_time))
    rootfs: Indexes = field(init=False)

    def __post_init__(self) -> None:
        self.rootfs = Indexes(self.exports, self.exports.store.path / "rootfs")


class Node(ABC):
    path: TreePath
    # Whether this node's attributes, and a directory's names, never change for its key: the
    # adapter lets the kernel keep them as long as it likes, and keeps a directory's replies too.
    immutable = False

    @property
    def key(self) -> Hashable:
        """What content this node stands for: nodes with equal keys are one inode."""
        return (type(self).__name__, self.path)

    @abstractmethod
    async def stat(self) -> Stat: ...

    async def listing_stat(self) -> Stat:
        """The attributes a lookup or readdir gives: never waits, never wrong for a later read."""
        return await self.stat()

    async def readlink(self) -> bytes:
        raise NotPermitted(f"/{'/'.join(self.path)} is not a symbolic link")

    async def xattrs(self) -> dict[bytes, bytes]:
        return {}


class Dir(Node):
    @abstractmethod
    async def lookup(self, name: str) -> Node | None:
        """The child of that name, listed or hidden; None when there is none."""

    @abstractmethod
    async def entries(self) -> list[tuple[str, Node]]:
        """The children readdir lists (hidden ones excepted)."""

    async def create(self, name: str, flags: int, pid: int) -> tuple[Node, Handle]:
        """A new file of that name, opened for the process `pid` (an upload watches its writer)."""
        raise NotPermitted(f"no file can be created in /{'/'.join(self.path)}")


class File(Node):
    @property
    def writable(self) -> bool:
        return False

    @abstractmethod
    async def open(self, flags: int, pid: int) -> Handle: ...


class Handle(ABC):
    """One open file. It reads what it opened: no lookup, catalog or engine call on its read path."""

    cacheable = True  # the kernel may serve reads from its page cache
    # A lookup of this node's path now leads to another inode (one told the size this open found):
    # the adapter has the kernel forget the names it holds, so that the next opener gets that one.
    relookup = False

    @abstractmethod
    async def read(self, offset: int, size: int) -> bytes | memoryview: ...

    async def write(self, offset: int, data: bytes) -> int:
        raise ReadOnly("this file takes no writes")

    async def truncate(self, size: int) -> None:
        """ftruncate(2) of this open file by a writer: only to nothing (`echo cmd > file`)."""
        if size:
            raise NotPermitted("this file can only be truncated to nothing")

    async def flush(self) -> None:
        """close(2) of one descriptor: its errno is the caller's (a release's is lost)."""
        return None

    async def release(self) -> None:
        """The last descriptor is gone."""
        return None

    @property
    def version(self) -> object:
        """Equal versions mean equal bytes: the kernel may keep the pages it cached for this inode."""
        return None


@dataclass
class BytesHandle(Handle):
    data: bytes
    digest: bytes  # of `data`: its version

    async def read(self, offset: int, size: int) -> bytes:
        return self.data[offset : offset + size]

    @property
    def version(self) -> object:
        return self.digest


def digest(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=16).digest()


def dir_stat(mtime: int) -> Stat:
    """A directory's attributes: read and search for everyone, nothing else."""
    return Stat(st.S_IFDIR | 0o555, 0, mtime)
