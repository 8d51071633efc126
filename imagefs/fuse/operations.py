"""The pyfuse3 handlers: inodes for nodes, handles for open files, errnos for errors.

It translates and holds no Docker knowledge: nodes come from `nodes.Tree`,
errnos from `errors.errno_for`. pyfuse3 lets any exception but `FUSEError`
kill the mount, so every handler runs under `_guard`.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import stat as st
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, Concatenate, NoReturn, ParamSpec, TypeVar

import pyfuse3
import trio
from cachetools import LRUCache

from ..errors import EngineError, ImagefsError, SpoolError, errno_for
from ..nodes.base import Dir, File, Handle, Node, Stat
from ..nodes.tree import Invalidation, Tree
from .inodes import Inodes
from .kernel import Kernel

log = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND
# Attributes of a kind the mount has none of, unless a file of an image carries one.
UNLABELLED = frozenset({b"security.selinux", b"system.posix_acl_access", b"system.posix_acl_default"})
# Seconds the kernel may keep what an immutable node told it: a name in an immutable directory
# (or its absence), that node's attributes. Only a change on the path to them drops them sooner.
FOREVER = 24 * 3600.0
LISTED = 30_000  # entries of immutable directories whose readdir replies are kept (~300 B each)


def _guard(fn: Callable[Concatenate[Operations, P], Awaitable[T]]) -> Callable[Concatenate[Operations, P],
                                                                               Coroutine[Any, Any, T]]:
    """Known failures become their errno; anything else is a bug: logged with its traceback, EIO."""

    @functools.wraps(fn)
    async def wrapper(self: Operations, *args: P.args, **kwargs: P.kwargs) -> T:
        log.debug("%s%r", fn.__name__, args)
        try:
            return await fn(self, *args, **kwargs)
        except pyfuse3.FUSEError:
            raise
        except ImagefsError as exc:
            failed = isinstance(exc, EngineError | SpoolError) or errno_for(exc) == errno.EIO
            log.log(logging.WARNING if failed else logging.INFO, "%s: %s: %s", fn.__name__, type(exc).__name__, exc)
            raise pyfuse3.FUSEError(errno_for(exc)) from None
        except Exception:
            log.exception("unexpected error in %s%r", fn.__name__, args)
            raise pyfuse3.FUSEError(errno.EIO) from None

    return wrapper


@dataclass
class OpenDir:
    """A listing as opendir took it; an immutable directory's is kept, its replies built once."""

    ino: int
    entries: list[tuple[str, Node]]
    # The immutable directory it was taken from, shared by its later opens while the inode stands
    # for an equal node (a lookup again by the same path makes another, equal one); a node reached
    # by another path (another reference) lists nodes of its own.
    fixed: Dir | None = None
    replies: list[tuple[bytes, pyfuse3.EntryAttributes] | None] = field(init=False)

    def __post_init__(self) -> None:
        self.replies = [None] * len(self.entries) if self.fixed is not None else []  # only kept ones fill it


@dataclass
class Operations(pyfuse3.Operations):
    tree: Tree
    uid: int = field(default_factory=os.getuid)
    gid: int = field(default_factory=os.getgid)

    def __post_init__(self) -> None:
        super().__init__()
        self.inodes = Inodes(self.tree.root)
        self.kernel = Kernel(self.inodes)
        self.handles: dict[int, Handle | OpenDir] = {}
        self._next_fh = 1
        self._versions: dict[int, object] = {}  # inode -> the content version its cached pages hold
        # An immutable directory's listing by its inode: every warm `find` opens every directory again.
        self._listings: LRUCache[int, OpenDir] = LRUCache(LISTED, getsizeof=lambda d: len(d.entries) + 1)
        self.initialized = trio.Event()  # the kernel's INIT has been answered

    def init(self) -> None:
        self.initialized.set()

    # --- attributes -----------------------------------------------------------------------

    def _attributes(self, ino: int, s: Stat, immutable: bool, fixed_name: bool = False) -> pyfuse3.EntryAttributes:
        """`fixed_name`: the name it was reached by is in an immutable directory."""
        attr = pyfuse3.EntryAttributes()
        attr.st_ino = ino
        attr.st_mode = s.mode
        attr.st_nlink = s.nlink if s.nlink is not None else 2 if st.S_ISDIR(s.mode) else 1
        attr.st_size = s.size
        attr.st_uid = self.uid if s.uid is None else s.uid
        attr.st_gid = self.gid if s.gid is None else s.gid
        attr.st_rdev = s.rdev
        attr.st_blksize = s.blksize
        attr.st_blocks = (s.size + 511) // 512
        attr.st_atime_ns = attr.st_mtime_ns = attr.st_ctime_ns = s.mtime * 1_000_000_000
        ttl = self.tree.entry_ttl
        attr.entry_timeout = FOREVER if fixed_name else ttl
        attr.attr_timeout = FOREVER if immutable else 0 if s.volatile else ttl
        return attr

    async def _entry(self, node: Node, fixed_name: bool) -> pyfuse3.EntryAttributes:
        """A node handed to the kernel: its inode and the attributes that never wait."""
        return self._attributes(self.inodes.add(node), await node.listing_stat(), node.immutable, fixed_name)

    async def _listed(self, listing: OpenDir, i: int) -> tuple[bytes, pyfuse3.EntryAttributes]:
        """Entry `i`'s readdirplus reply, made: an immutable directory's is kept, for as long as its inode is."""
        name, node = listing.entries[i]
        reply = (os.fsencode(name), await self._entry(node, listing.fixed is not None))
        if listing.fixed is not None:
            listing.replies[i] = reply
        return reply

    def _dir(self, ino: int) -> Dir:
        node = self.inodes.node(ino)
        if not isinstance(node, Dir):
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        return node

    def _handle(self, fh: int) -> Handle:
        handle = self.handles[fh]
        assert isinstance(handle, Handle)
        return handle

    def _new_fh(self, handle: Handle | OpenDir) -> int:
        fh, self._next_fh = self._next_fh, self._next_fh + 1
        self.handles[fh] = handle
        return fh

    # --- lookups --------------------------------------------------------------------------

    @_guard
    async def lookup(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        if name in (b".", b".."):
            raise pyfuse3.FUSEError(errno.ENOENT)
        parent = self._dir(parent_inode)
        child = await parent.lookup(os.fsdecode(name))
        if child is None and parent.immutable:  # st_ino 0: the kernel keeps the name's absence
            return self._attributes(0, Stat(0, 0, 0), False, fixed_name=True)
        if child is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        # Never waits (an export's size): the kernel holds the directory's lock until this is answered.
        attr = await self._entry(child, parent.immutable)
        self.inodes.remember(attr.st_ino, parent_inode, os.fsdecode(name))
        return attr

    @_guard
    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        node = self.inodes.node(inode)
        return self._attributes(inode, await node.stat(), node.immutable)

    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        for ino, n in inode_list:
            if self.inodes.forget(ino, n):
                self._versions.pop(ino, None)
                self._listings.pop(ino, None)

    @_guard
    async def readlink(self, inode: int, ctx: pyfuse3.RequestContext) -> bytes:
        return await self.inodes.node(inode).readlink()

    @_guard
    async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        if not self.tree.xattrs:
            raise pyfuse3.FUSEError(errno.ENOSYS)
        value = (await self.inodes.node(inode).xattrs()).get(name)
        if value is None:
            # `ls -l` asks these of every entry, but takes ENOTSUP as "not on this device" and stops
            # asking (coreutils' unsupported_device): 2 requests a listing instead of 2-3 an entry.
            raise pyfuse3.FUSEError(errno.ENOTSUP if name in UNLABELLED else errno.ENODATA)
        return value

    @_guard
    async def listxattr(self, inode: int, ctx: pyfuse3.RequestContext) -> list[bytes]:
        if not self.tree.xattrs:
            raise pyfuse3.FUSEError(errno.ENOSYS)
        return list(await self.inodes.node(inode).xattrs())

    # --- directories ----------------------------------------------------------------------

    @_guard
    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        # The listing is taken once, here: readdir offsets then index a list that cannot shift.
        dir_ = self._dir(inode)
        listing = self._listings.get(inode) if dir_.immutable else None
        if listing is None or listing.fixed != dir_:
            listing = OpenDir(inode, await dir_.entries(), dir_ if dir_.immutable else None)
            if listing.fixed is not None:
                self._listings[inode] = listing
        return self._new_fh(listing)

    @_guard
    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        listing = self.handles[fh]
        assert isinstance(listing, OpenDir)
        replies, inodes = listing.replies, self.inodes  # a warm `find` spends its time in this loop
        for i in range(start_id, len(listing.entries)):
            name, node = listing.entries[i]
            reply = replies[i] if replies else None
            # The number a kept reply gave must still be the node's: not if the kernel forgot it since.
            if reply is None or not (inodes.holds(reply[1].st_ino, node) or inodes.add(node) == reply[1].st_ino):
                reply = await self._listed(listing, i)
            if not pyfuse3.readdir_reply(token, reply[0], reply[1], i + 1):
                break
            inodes.remember(reply[1].st_ino, listing.ino, name)  # readdirplus: a lookup

    @_guard
    async def releasedir(self, fh: int) -> None:
        self.handles.pop(fh, None)

    # --- files ----------------------------------------------------------------------------

    @_guard
    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        node = self.inodes.node(inode)
        if not isinstance(node, File):
            raise pyfuse3.FUSEError(errno.EISDIR)
        if flags & WRITE_FLAGS and not node.writable:
            raise pyfuse3.FUSEError(errno.EROFS if self.tree.read_only else errno.EACCES)
        handle = await node.open(flags, ctx.pid)
        if handle.relookup:  # queued, not awaited: forgetting a name takes its directory's lock
            self.kernel.invalidate_soon(Invalidation(frozenset({node.path}), frozenset()))
        return self._file_info(inode, handle)

    def _file_info(self, inode: int, handle: Handle) -> pyfuse3.FileInfo:
        keep = handle.cacheable and self._versions.get(inode) == handle.version
        if handle.cacheable:
            self._versions[inode] = handle.version
        return pyfuse3.FileInfo(fh=self._new_fh(handle), direct_io=not handle.cacheable, keep_cache=keep)

    @_guard
    async def create(self, parent_inode: int, name: bytes, mode: int, flags: int,
                     ctx: pyfuse3.RequestContext) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        if self.tree.read_only:
            raise pyfuse3.FUSEError(errno.EROFS)
        node, handle = await self._dir(parent_inode).create(os.fsdecode(name), flags, ctx.pid)
        attr = await self._entry(node, False)
        self.inodes.remember(attr.st_ino, parent_inode, os.fsdecode(name))
        return self._file_info(attr.st_ino, handle), attr

    @_guard
    async def read(self, fh: int, off: int, size: int) -> bytes:
        return await self._handle(fh).read(off, size)  # type: ignore[return-value]  # pyfuse3 takes buffers

    @_guard
    async def write(self, fh: int, off: int, buf: bytes) -> int:
        return await self._handle(fh).write(off, buf)

    @_guard
    async def flush(self, fh: int) -> None:
        if not self.tree.flushes:
            raise pyfuse3.FUSEError(errno.ENOSYS)
        await self._handle(fh).flush()

    @_guard
    async def release(self, fh: int) -> None:
        handle = self.handles.pop(fh, None)
        if isinstance(handle, Handle):
            await handle.release()

    @_guard
    async def setattr(self, inode: int, attr: pyfuse3.EntryAttributes, fields: pyfuse3.SetattrFields,
                      fh: int | None, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        node = self.inodes.node(inode)
        # A writable file's size is all that changes: `echo cmd > file` truncates, a sparse `cp` extends;
        # times are taken and ignored (`touch` of a new upload), owners and modes never change.
        if fields.update_mode or fields.update_uid or fields.update_gid or not (
                isinstance(node, File) and node.writable):
            self._refuse()
        handle = self.handles.get(fh) if fh is not None else None
        if fields.update_size and isinstance(handle, Handle):
            await handle.truncate(attr.st_size)
        elif fields.update_size and attr.st_size:
            self._refuse()
        return self._attributes(inode, await node.stat(), node.immutable)

    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        data = pyfuse3.StatvfsData()
        data.f_bsize = data.f_frsize = 4096
        data.f_namemax = 255
        return data

    # --- nothing else changes anything ----------------------------------------------------

    def _refuse(self) -> NoReturn:
        raise pyfuse3.FUSEError(errno.EROFS if self.tree.read_only else errno.EPERM)

    async def unlink(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        self._refuse()

    async def rmdir(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        self._refuse()

    async def rename(self, parent_inode_old: int, name_old: bytes, parent_inode_new: int, name_new: bytes,
                     flags: int, ctx: pyfuse3.RequestContext) -> None:
        self._refuse()

    async def mkdir(self, parent_inode: int, name: bytes, mode: int,
                    ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        self._refuse()

    async def symlink(self, parent_inode: int, name: bytes, target: bytes,
                      ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        self._refuse()

    async def link(self, inode: int, new_parent_inode: int, new_name: bytes,
                   ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        self._refuse()

    async def mknod(self, parent_inode: int, name: bytes, mode: int, rdev: int,
                    ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        self._refuse()

    # --- coherence ------------------------------------------------------------------------

    async def on_change(self, what: Invalidation | None, settle: bool = False) -> None:
        """Have the kernel forget what changed (None: everything); with `settle`, wait until it has."""
        done = self.kernel.invalidate_soon(what)
        if settle:
            await done.wait()
