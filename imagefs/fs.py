"""The pyfuse3 adapter: inodes for paths, nodes for requests, errnos for errors.

It translates and holds no Docker knowledge: nodes come from `nodes.Tree`,
errnos from `errors.errno_for`. pyfuse3 lets any exception but `FUSEError`
kill the mount, so every handler runs under `_guard`.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import logging
import math
import os
import stat as st
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pyfuse3
import trio

from .catalog import Change
from .errors import EngineError, ImagefsError, errno_for
from .nodes import Dir, File, Handle, Node, Stat, Tree
from .references import Path

log = logging.getLogger(__name__)

T = TypeVar("T")
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND


def _guard(fn: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
    """Known failures become their errno; anything else is a bug: logged with its traceback, EIO."""

    @functools.wraps(fn)
    async def wrapper(self: Operations, *args: Any) -> T:
        try:
            return await fn(self, *args)
        except pyfuse3.FUSEError:
            raise
        except ImagefsError as exc:
            level = logging.WARNING if isinstance(exc, EngineError) or errno_for(exc) == errno.EIO else logging.INFO
            log.log(level, "%s: %s: %s", fn.__name__, type(exc).__name__, exc)
            raise pyfuse3.FUSEError(errno_for(exc)) from None
        except Exception:
            self.unexpected += 1
            log.exception("unexpected error in %s%r", fn.__name__, args)
            raise pyfuse3.FUSEError(errno.EIO) from None

    return wrapper


class Inodes:
    """Path <-> inode, with the kernel's lookup counts. Numbers are a hash of the path: stable across mounts."""

    def __init__(self) -> None:
        self._path: dict[int, Path] = {pyfuse3.ROOT_INODE: ()}
        self._ino: dict[Path, int] = {(): pyfuse3.ROOT_INODE}
        self._lookups: dict[int, int] = {}

    def ino(self, path: Path) -> int:
        ino = self._ino.get(path)
        if ino is None:
            digest = hashlib.blake2b("/".join(path).encode(), digest_size=8).digest()
            ino = max(int.from_bytes(digest) >> 1, pyfuse3.ROOT_INODE + 1)
            while ino in self._path:  # a collision: probe on, stable for this mount
                ino += 1
            self._ino[path], self._path[ino] = ino, path
        return ino

    def path(self, ino: int) -> Path:
        try:
            return self._path[ino]
        except KeyError:
            raise pyfuse3.FUSEError(errno.ESTALE) from None

    def known(self) -> dict[Path, int]:
        return dict(self._ino)

    def remember(self, ino: int) -> None:
        self._lookups[ino] = self._lookups.get(ino, 0) + 1

    def forget(self, ino: int, n: int) -> bool:
        """Count down the kernel's references; True when the inode is gone from the table."""
        left = self._lookups.get(ino, 0) - n
        if left > 0:
            self._lookups[ino] = left
            return False
        if ino == pyfuse3.ROOT_INODE:
            return False
        self._lookups.pop(ino, None)
        path = self._path.pop(ino, None)
        if path is not None:
            self._ino.pop(path, None)
        return True


@dataclass
class OpenDir:
    entries: list[tuple[str, Node]]


@dataclass
class Operations(pyfuse3.Operations):
    tree: Tree
    uid: int = field(default_factory=os.getuid)
    gid: int = field(default_factory=os.getgid)

    def __post_init__(self) -> None:
        super().__init__()
        self.inodes = Inodes()
        self.handles: dict[int, Handle | OpenDir] = {}
        self._next_fh = 1
        self._versions: dict[int, object] = {}  # inode -> content version the kernel may have cached
        self.unexpected = 0  # handler bugs caught by _guard; the tests expect none
        self.initialized = trio.Event()  # the kernel's INIT has been answered
        self._changes, self._pending = trio.open_memory_channel[tuple[Change | None, trio.Event]](math.inf)

    def init(self) -> None:
        self.initialized.set()

    # --- attributes -----------------------------------------------------------------------

    def _attributes(self, path: Path, s: Stat) -> pyfuse3.EntryAttributes:
        attr = pyfuse3.EntryAttributes()
        attr.st_ino = self.inodes.ino(path)
        attr.st_mode = s.mode
        attr.st_nlink = 2 if st.S_ISDIR(s.mode) else 1
        attr.st_size = s.size
        attr.st_uid, attr.st_gid = self.uid, self.gid
        attr.st_blksize = 128 * 1024
        attr.st_blocks = (s.size + 511) // 512
        attr.st_atime_ns = attr.st_mtime_ns = attr.st_ctime_ns = s.mtime * 1_000_000_000
        ttl = self.tree.catalog.ttl
        attr.entry_timeout = ttl
        attr.attr_timeout = 0 if s.volatile else ttl
        return attr

    async def _resolve(self, path: Path) -> Node:
        node = await self.tree.resolve(path)
        if node is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return node

    def _new_fh(self, handle: Handle | OpenDir) -> int:
        fh, self._next_fh = self._next_fh, self._next_fh + 1
        self.handles[fh] = handle
        return fh

    # --- lookups --------------------------------------------------------------------------

    @_guard
    async def lookup(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        path = (*self.inodes.path(parent_inode), os.fsdecode(name))
        if name in (b".", b".."):
            raise pyfuse3.FUSEError(errno.ENOENT)
        # Never waits (an export's size): the kernel holds the directory's lock until this is answered.
        attr = self._attributes(path, await (await self._resolve(path)).listing_stat())
        self.inodes.remember(attr.st_ino)
        return attr

    @_guard
    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        path = self.inodes.path(inode)
        return self._attributes(path, await (await self._resolve(path)).stat())

    async def forget(self, inode_list: list[tuple[int, int]]) -> None:
        for ino, n in inode_list:
            if self.inodes.forget(ino, n):
                self._versions.pop(ino, None)

    # --- directories ----------------------------------------------------------------------

    @_guard
    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        path = self.inodes.path(inode)
        node = await self._resolve(path)
        if not isinstance(node, Dir):
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        entries: list[tuple[str, Node]] = []
        for name in await node.names():
            child = await self.tree.resolve((*path, name))
            if child is not None:
                entries.append((name, child))
        return self._new_fh(OpenDir(entries))

    @_guard
    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        listing = self.handles[fh]
        assert isinstance(listing, OpenDir)
        for i in range(start_id, len(listing.entries)):
            name, node = listing.entries[i]
            attr = self._attributes(node.path, await node.listing_stat())
            if not pyfuse3.readdir_reply(token, os.fsencode(name), attr, i + 1):
                break
            self.inodes.remember(attr.st_ino)  # readdirplus counts as a lookup

    @_guard
    async def releasedir(self, fh: int) -> None:
        self.handles.pop(fh, None)

    # --- files ----------------------------------------------------------------------------

    @_guard
    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        node = await self._resolve(self.inodes.path(inode))
        if not isinstance(node, File):
            raise pyfuse3.FUSEError(errno.EISDIR)
        if flags & WRITE_FLAGS and not node.writable:
            raise pyfuse3.FUSEError(errno.EROFS if self.tree.read_only else errno.EACCES)
        handle = await node.open()
        keep = handle.cacheable and self._versions.get(inode) == handle.version
        if handle.cacheable:
            self._versions[inode] = handle.version
        return pyfuse3.FileInfo(fh=self._new_fh(handle), direct_io=not handle.cacheable, keep_cache=keep)

    @_guard
    async def read(self, fh: int, off: int, size: int) -> bytes | memoryview:
        handle = self.handles[fh]
        assert isinstance(handle, Handle)
        return await handle.read(off, size)

    @_guard
    async def write(self, fh: int, off: int, buf: bytes) -> int:
        handle = self.handles[fh]
        assert isinstance(handle, Handle)
        await handle.write(buf)
        return len(buf)

    @_guard
    async def release(self, fh: int) -> None:
        handle = self.handles.pop(fh, None)
        if isinstance(handle, Handle):
            await handle.release()

    @_guard
    async def setattr(self, inode: int, attr: pyfuse3.EntryAttributes, fields: pyfuse3.SetattrFields,
                      fh: int | None, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        path = self.inodes.path(inode)
        node = await self._resolve(path)
        # Truncating a control file to 0 is how `echo cmd > file` may begin; nothing else changes.
        only_truncate = fields.update_size and attr.st_size == 0 and not (
            fields.update_mode or fields.update_uid or fields.update_gid or fields.update_atime or fields.update_mtime)
        if not (only_truncate and isinstance(node, File) and node.writable):
            self._refuse()
        return self._attributes(path, await node.stat())

    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        data = pyfuse3.StatvfsData()
        data.f_bsize = data.f_frsize = 4096
        data.f_namemax = 255
        return data

    # --- nothing else changes anything ----------------------------------------------------

    def _refuse(self) -> None:
        raise pyfuse3.FUSEError(errno.EROFS if self.tree.read_only else errno.EPERM)

    async def unlink(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        self._refuse()

    async def rmdir(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        self._refuse()

    async def rename(self, p_old: int, n_old: bytes, p_new: int, n_new: bytes, flags: int,
                     ctx: pyfuse3.RequestContext) -> None:
        self._refuse()

    async def mkdir(self, parent_inode: int, name: bytes, mode: int, ctx: pyfuse3.RequestContext) -> Any:
        self._refuse()

    async def create(self, parent_inode: int, name: bytes, mode: int, flags: int, ctx: pyfuse3.RequestContext) -> Any:
        self._refuse()

    async def symlink(self, parent_inode: int, name: bytes, target: bytes, ctx: pyfuse3.RequestContext) -> Any:
        self._refuse()

    async def link(self, inode: int, new_parent_inode: int, new_name: bytes, ctx: pyfuse3.RequestContext) -> Any:
        self._refuse()

    async def mknod(self, parent_inode: int, name: bytes, mode: int, rdev: int, ctx: pyfuse3.RequestContext) -> Any:
        self._refuse()

    # --- coherence: the one place the kernel is told to forget ----------------------------

    async def on_change(self, change: Change | None, settle: bool = False) -> None:
        """Have the kernel forget what changed (None: everything); with `settle`, wait until it has.

        The invalidator task does the work: a lookup or readdir that caused a refresh holds its
        directory's lock in the kernel until it is answered, and invalidating an entry there
        needs that lock, so such a request must never wait for its own invalidation.
        """
        done = self.invalidate_soon(change)
        if settle:
            await done.wait()

    def invalidate_soon(self, change: Change | None = None) -> trio.Event:
        """Queue a change for the invalidator (None: everything); the event is set once it is done."""
        done = trio.Event()
        self._changes.send_nowait((change, done))
        return done

    async def invalidator(self) -> None:
        """The task behind on_change: one change at a time, in order."""
        async for change, done in self._pending:
            try:
                await self._invalidate(change)
            except Exception:
                log.exception("unexpected error invalidating the kernel's cache")
            finally:
                done.set()

    async def _invalidate(self, change: Change | None) -> None:
        known = self.inodes.known()
        if change is None:
            dropped, touched = [p for p in known if p], set()
        else:
            trees, touched = self.tree.affected(change)
            dropped = [p for p in known if any(p[:depth] in trees for depth in range(1, len(p) + 1))]
        inodes = [known[p] for p in dropped] + [known[p] for p in touched if p in known]
        dentries = [(known[p[:-1]], os.fsencode(p[-1])) for p in dropped if p[:-1] in known]
        for ino in inodes:
            self._versions.pop(ino, None)
        if inodes or dentries:
            # In a worker thread: invalidate_entry blocks until the kernel has done it.
            await trio.to_thread.run_sync(_notify_kernel, dentries, inodes)


def _notify_kernel(dentries: list[tuple[int, bytes]], inodes: list[int]) -> None:
    for parent, name in dentries:
        try:
            pyfuse3.invalidate_entry(parent, name)
        except OSError as exc:  # ENOENT: the kernel had no such entry
            if exc.errno != errno.ENOENT:
                log.warning("invalidate_entry(%d, %r): %s", parent, name, exc)
    for ino in inodes:
        try:
            # Attributes only: pages are dropped at the next open when the content's version differs
            # (keep_cache), and a page a reader holds while it waits would block this call.
            pyfuse3.invalidate_inode(ino, attr_only=True)
        except OSError as exc:
            if exc.errno != errno.ENOENT:
                log.warning("invalidate_inode(%d): %s", ino, exc)

