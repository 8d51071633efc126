"""`.imagefs/load/`, `import/`, `build/`: files created to be written into the engine, then read for how it went.

A name that has no upload yet does not exist, so `cp` and `>` create it (a directory
would make `cp` copy into it). Under import/ and build/, any name that can be a
namespace is a directory (`import/myorg/base:1` needs no mkdir); the leaf holds the
reference and options (imagefs.uploads.kinds). After an upload, its path is the record
of the latest upload to that target: its state, bytes sent, the engine's lines.
"""

from __future__ import annotations

import os
import stat as st
from collections.abc import Hashable
from dataclasses import dataclass

from ..errors import BadCommand, ReadOnly, Unseekable
from ..references import TreePath
from ..uploads import kinds
from ..uploads.service import Uploads
from ..uploads.upload import Upload
from .base import Context, Dir, File, Handle, Node, Stat

WRITING = os.O_WRONLY | os.O_RDWR | os.O_TRUNC


@dataclass
class UploadDir(Dir):
    ctx: Context
    path: TreePath
    uploads: Uploads
    kind: str
    prefix: TreePath = ()  # the namespace components below the kind's directory

    @property
    def key(self) -> Hashable:
        return ("uploads", self.path)

    async def stat(self) -> Stat:
        mode = 0o555 if self.ctx.read_only else 0o755
        return Stat(st.S_IFDIR | mode, 0, int(self.uploads.started))  # local: answered with the engine down too

    def _file(self, name: str) -> UploadFile:
        target = kinds.target_of(self.kind, self.prefix, name)
        return UploadFile(self.ctx, (*self.path, name), self.uploads, self.kind, self.prefix, target)

    async def lookup(self, name: str) -> Node | None:
        if self.kind != kinds.LOAD and kinds.is_namespace(self.prefix, name):
            return UploadDir(self.ctx, (*self.path, name), self.uploads, self.kind, (*self.prefix, name))
        try:
            file = self._file(name)
        except BadCommand:
            return None
        return file if self.uploads.get(self.kind, file.target) is not None else None

    async def entries(self) -> list[tuple[str, Node]]:
        below: dict[str, Node] = {}
        depth = len(self.prefix)
        for target in self.uploads.targets(self.kind):
            parts = (target,) if self.kind == kinds.LOAD else tuple(target.split("/"))
            if parts[:depth] != self.prefix or len(parts) == depth:
                continue
            name = parts[depth]
            if len(parts) > depth + 1:
                below[name] = UploadDir(self.ctx, (*self.path, name), self.uploads, self.kind, (*self.prefix, name))
            else:
                below[name] = self._file(name)
        return sorted(below.items())

    async def create(self, name: str, flags: int, pid: int) -> tuple[Node, Handle]:
        if self.ctx.read_only:
            raise ReadOnly("mounted read-only")
        request = kinds.request(self.kind, self.prefix, name)  # a bad name or option: EINVAL, nothing sent
        file = self._file(name)
        return file, file.begin(request, flags, pid)


@dataclass
class UploadFile(File):
    ctx: Context
    path: TreePath
    uploads: Uploads
    kind: str
    prefix: TreePath  # the namespace components below the kind's directory
    target: str

    @property
    def key(self) -> Hashable:
        return ("upload", self.kind, self.target)

    @property
    def writable(self) -> bool:
        return not self.ctx.read_only

    def text(self) -> bytes:
        upload = self.uploads.get(self.kind, self.target)
        return upload.text().encode() if upload is not None else b""

    async def stat(self) -> Stat:
        mode = 0o444 if self.ctx.read_only else 0o644
        upload = self.uploads.get(self.kind, self.target)
        size, mtime = (len(self.text()), int(upload.created)) if upload else (0, 0)
        # 1 MiB, the kernel's largest write: a quarter of the round trips cp would make at 128 KiB.
        return Stat(st.S_IFREG | mode, size, mtime, volatile=True, blksize=1 << 20)

    async def open(self, flags: int, pid: int) -> Handle:
        if not flags & WRITING:
            return RecordHandle(self)
        if self.ctx.read_only:
            raise ReadOnly("mounted read-only")
        return self.begin(kinds.request(self.kind, self.prefix, self.path[-1]), flags, pid)

    def begin(self, request: kinds.Request, flags: int, pid: int) -> Handle:
        if flags & os.O_APPEND:
            raise Unseekable(f"{request.target}: an upload cannot be appended to; write it whole")
        return UploadHandle(self, self.uploads.begin(request, pid))


@dataclass
class RecordHandle(Handle):
    node: UploadFile
    cacheable = False

    async def read(self, offset: int, size: int) -> bytes:
        return self.node.text()[offset : offset + size]


@dataclass
class UploadHandle(Handle):
    node: UploadFile
    upload: Upload
    cacheable = False

    async def read(self, offset: int, size: int) -> bytes:
        return self.upload.text().encode()[offset : offset + size]

    async def write(self, offset: int, data: bytes) -> int:
        return await self.upload.write(offset, data)

    async def truncate(self, size: int) -> None:
        await self.upload.truncate(size)

    async def flush(self) -> None:
        await self.upload.finish()

    async def release(self) -> None:
        await self.upload.abandon()
