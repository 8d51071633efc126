"""The least a pyfuse3 filesystem over trio does: a local tree mirrored, read-only, for the benchmark's floor.

    python3 scripts/floorfs.py SOURCE MOUNTPOINT    # serves until `fusermount3 -u MOUNTPOINT`

Every name and attribute is taken once at start and held in memory; a file's bytes are `pread` from the
local file. The kernel may keep names, attributes and pages as long as imagefs lets it keep rootfs/'s,
and the mount has imagefs's options. Flush is answered, as it must be on a mount whose uploads report
their failures at close. What `grep -r` costs over it beside rootfs/ is what the stack (the kernel's
round trips, libfuse, pyfuse3, trio) costs and imagefs does not add.
"""

from __future__ import annotations

import errno
import os
import stat
import sys
from pathlib import Path

import pyfuse3
import trio

FOREVER = 24 * 3600.0  # as imagefs's kernel timeouts for what never changes


class Mirror(pyfuse3.Operations):
    def __init__(self, source: Path) -> None:
        super().__init__()
        self.paths: dict[int, Path] = {pyfuse3.ROOT_INODE: source}
        self.attrs: dict[int, pyfuse3.EntryAttributes] = {}
        self.children: dict[int, list[tuple[bytes, int]]] = {}
        self.names: dict[tuple[int, bytes], int] = {}
        self._take(pyfuse3.ROOT_INODE, source)

    def _take(self, ino: int, path: Path) -> None:
        s = os.lstat(path)
        a = pyfuse3.EntryAttributes()
        a.st_ino, a.st_mode, a.st_nlink, a.st_size = ino, s.st_mode, s.st_nlink, s.st_size
        a.st_uid, a.st_gid, a.st_mtime_ns, a.st_ctime_ns, a.st_atime_ns = (
            s.st_uid, s.st_gid, s.st_mtime_ns, s.st_ctime_ns, s.st_atime_ns)
        a.entry_timeout = a.attr_timeout = FOREVER
        self.attrs[ino] = a
        if stat.S_ISDIR(s.st_mode):
            listed = self.children[ino] = []
            for entry in sorted(os.scandir(path), key=lambda e: e.name):
                child = len(self.paths) + 1
                self.paths[child] = Path(entry.path)
                listed.append((os.fsencode(entry.name), child))
                self.names[ino, os.fsencode(entry.name)] = child
                self._take(child, Path(entry.path))

    async def lookup(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        ino = self.names.get((parent_inode, name))
        if ino is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self.attrs[ino]

    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        return self.attrs[inode]

    async def readlink(self, inode: int, ctx: pyfuse3.RequestContext) -> bytes:
        return os.fsencode(os.readlink(self.paths[inode]))

    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        return inode

    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        listed = self.children[fh]
        for i in range(start_id, len(listed)):
            name, ino = listed[i]
            if not pyfuse3.readdir_reply(token, name, self.attrs[ino], i + 1):
                break

    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        return pyfuse3.FileInfo(fh=os.open(self.paths[inode], os.O_RDONLY), keep_cache=True)

    async def read(self, fh: int, off: int, size: int) -> bytes:
        return os.pread(fh, size, off)

    async def flush(self, fh: int) -> None:
        pass

    async def release(self, fh: int) -> None:
        os.close(fh)


async def serve(source: Path, mountpoint: str) -> None:
    options = set(pyfuse3.default_options) - {"default_permissions"}
    pyfuse3.init(Mirror(source), mountpoint, options | {"fsname=floorfs", "rw", "nodev", "nosuid"})
    try:
        await pyfuse3.main()
    finally:
        pyfuse3.close()


if __name__ == "__main__":
    trio.run(serve, Path(sys.argv[1]), sys.argv[2])
