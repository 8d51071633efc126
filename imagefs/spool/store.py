"""The cache directory: spool files by content key, kept across mounts, that cannot be turned against us.

The daemon runs as root more often than not, and a cache directory may sit where
another user can reach it. So the directory must belong to the mounting user and
be writable by nobody else; it is made 0700; everything in it is reached through
directory descriptors with O_NOFOLLOW, so a planted link is refused, never
followed; and stale files are removed by name, which never follows a link.

Layout: CACHE_DIR/spool/<sha256 of the key>.tar for a complete, verified export
(published by an atomic rename), `.<name>.<pid>.part` while one is written, and
CACHE_DIR/sizes.json. Spools of the old per-daemon layout (`spool-<pid>/`) are
removed once their daemon is gone.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import itertools
import logging
import os
import stat as st
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

SPOOL = "spool"
SUFFIX = ".tar"
NOFOLLOW = os.O_NOFOLLOW | os.O_CLOEXEC


class UnsafeCache(Exception):
    """The cache directory (or something in it) could be redirected by another user; the text says how."""


@dataclass
class Stored:
    size: int
    used: float  # the last time a reader opened it: eviction goes by this


def spool_name(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest() + SUFFIX


class Store:
    """Safe file operations in one cache directory, and the index of its complete spools."""

    def __init__(self, cache_dir: Path) -> None:
        self.path = cache_dir
        self.uid = os.geteuid()
        self.dir_fd = -1
        self.spool_fd = -1
        self.stored: dict[str, Stored] = {}  # complete spools by file name
        self._serial = itertools.count(1)  # unique names from any thread (next() is atomic)

    # --- at mount (blocking) --------------------------------------------------------------

    def open(self) -> None:
        """Make or check the directory, drop what dead daemons left, index the complete spools."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileExistsError):
            os.mkdir(self.path, 0o700)
        self.dir_fd = self._open_dir(str(self.path), None)
        with contextlib.suppress(FileExistsError):
            os.mkdir(SPOOL, 0o700, dir_fd=self.dir_fd)
        self.spool_fd = self._open_dir(SPOOL, self.dir_fd)
        self._remove_old_layout()
        for entry in os.scandir(self.spool_fd):
            self._index(entry)

    def _open_dir(self, name: str, dir_fd: int | None) -> int:
        where = name if dir_fd is None else f"{self.path}/{name}"
        try:
            fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | NOFOLLOW, dir_fd=dir_fd)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                raise UnsafeCache(f"{where} is a symbolic link or not a directory") from None
            raise
        self._check(os.fstat(fd), where, fd)
        return fd

    def _check(self, info: os.stat_result, where: str, fd: int | None = None) -> None:
        problem = None
        if info.st_uid != self.uid:
            problem = f"is owned by uid {info.st_uid}, not by the mounting user ({self.uid})"
        elif st.S_ISDIR(info.st_mode) and info.st_mode & 0o022:
            problem = "is writable by other users"
        if problem:
            if fd is not None:
                os.close(fd)
            raise UnsafeCache(f"{where} {problem}")

    def _index(self, entry: os.DirEntry[str]) -> None:
        info = entry.stat(follow_symlinks=False)
        where = f"{self.path}/{SPOOL}/{entry.name}"
        if not st.S_ISREG(info.st_mode):
            raise UnsafeCache(f"{where} is not a regular file")
        self._check(info, where)
        if entry.name.endswith(".part"):
            if abandoned(entry.name):
                os.unlink(entry.name, dir_fd=self.spool_fd)
        elif entry.name.endswith(SUFFIX):
            self.stored[entry.name] = Stored(info.st_size, info.st_mtime)

    def _remove_old_layout(self) -> None:
        for entry in os.scandir(self.dir_fd):
            pid = entry.name.removeprefix("spool-")
            if pid == entry.name or (pid.isdigit() and Path(f"/proc/{pid}").exists()):
                continue
            if entry.is_symlink() or not entry.is_dir(follow_symlinks=False):
                os.unlink(entry.name, dir_fd=self.dir_fd)
                continue
            fd = os.open(entry.name, os.O_RDONLY | os.O_DIRECTORY | NOFOLLOW, dir_fd=self.dir_fd)
            try:
                for old in os.scandir(fd):
                    os.unlink(old.name, dir_fd=fd)  # never follows: a link is removed, not its target
            finally:
                os.close(fd)
            os.rmdir(entry.name, dir_fd=self.dir_fd)

    def close(self) -> None:
        for fd in (self.spool_fd, self.dir_fd):
            if fd >= 0:
                os.close(fd)
        self.spool_fd = self.dir_fd = -1

    # --- spools: the file operations block (worker threads); the index is the loop's ------

    def create_part(self, name: str) -> tuple[str, int]:
        """A new, empty file to write an export into, and its name."""
        part = f".{name}.{next(self._serial)}.{os.getpid()}.part"
        fd = os.open(part, os.O_RDWR | os.O_CREAT | os.O_EXCL | NOFOLLOW, 0o600, dir_fd=self.spool_fd)
        return part, fd

    def publish(self, part: str, name: str) -> None:
        """A verified export becomes a complete spool, for this mount and the next (then `index` it)."""
        os.rename(part, name, src_dir_fd=self.spool_fd, dst_dir_fd=self.spool_fd)

    def index(self, name: str, size: int, used: float) -> None:
        self.stored[name] = Stored(size, used)

    def open_stored(self, name: str, size: int) -> int:
        """A complete spool's descriptor, if it is still the file of that size that was indexed."""
        fd = os.open(name, os.O_RDONLY | NOFOLLOW, dir_fd=self.spool_fd)
        info = os.fstat(fd)
        if not st.S_ISREG(info.st_mode) or info.st_size != size:
            os.close(fd)
            raise FileNotFoundError(errno.ENOENT, "the stored spool changed", name)
        return fd

    def unlink(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name, dir_fd=self.spool_fd)

    def touch(self, name: str, used: float) -> None:
        if name in self.stored:
            self.stored[name].used = used

    # --- small files in the cache directory -----------------------------------------------

    def read_small(self, name: str, limit: int = 16 << 20) -> bytes | None:
        try:
            fd = os.open(name, os.O_RDONLY | NOFOLLOW, dir_fd=self.dir_fd)
        except FileNotFoundError:
            return None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise UnsafeCache(f"{self.path}/{name} is a symbolic link") from None
            raise
        try:
            self._check(os.fstat(fd), f"{self.path}/{name}")
            return os.read(fd, limit)
        finally:
            os.close(fd)

    def write_small(self, name: str, data: bytes) -> None:
        """Replace a file atomically (another daemon may read it meanwhile)."""
        tmp = f".{name}.{next(self._serial)}.{os.getpid()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | NOFOLLOW, 0o600, dir_fd=self.dir_fd)
        try:
            write_all(fd, data)
        finally:
            os.close(fd)
        os.rename(tmp, name, src_dir_fd=self.dir_fd, dst_dir_fd=self.dir_fd)


def write_all(fd: int, data: bytes | memoryview) -> None:
    """(blocking) All of `data` at the file's offset: a short write is rare on a regular file, but not an error."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def abandoned(part: str) -> bool:
    """Is `part` (named `….<pid>.part`) a file whose writer is gone? Nothing will finish it."""
    pid = part.rsplit(".", 2)[-2] if part.endswith(".part") else ""
    return bool(pid) and not (pid.isdigit() and Path(f"/proc/{pid}").exists())
