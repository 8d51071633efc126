"""An upload kept on the local disk while it is written, for an engine that keeps partial bodies (podman).

Such an engine makes an image of whatever an aborted request brought, so nothing may
reach it before the commit: the written bytes go to a file in the cache directory's
spool/, and only a whole, verified archive is sent, from that file, at the writer's
close. The file is unlinked as soon as it is made: no end of the daemon, a crash
included, leaves it behind (the kernel frees it with the descriptor), and the next
start removes the `.part` a crash between the two steps would leave (Store.open).
It is not counted against --cache-size: it lives only as long as its upload.
"""

from __future__ import annotations

import errno
import os
from collections.abc import AsyncIterator

import trio

from ..errors import SpoolError
from ..spool.store import Store, write_all

PIECE = 4 << 20  # bytes read back at a time while the spool is sent: memory stays flat


class Spool:
    def __init__(self, fd: int, where: str) -> None:
        self.fd = fd
        self.where = where
        self.size = 0

    @classmethod
    async def create(cls, store: Store, target: str) -> Spool:
        def make() -> int:
            part, fd = store.create_part("upload")
            store.unlink(part)
            return fd

        where = f"the local spool of the upload {target} in {store.path}"
        try:
            return cls(await trio.to_thread.run_sync(make), where)
        except OSError as exc:
            raise SpoolError.of(exc, where) from exc

    async def write(self, data: bytes) -> None:
        """Append all of `data` (only this writes to the spool; reads take offsets); a full disk is SpoolError with
        ENOSPC, the writer's errno."""
        try:
            await trio.to_thread.run_sync(write_all, self.fd, data)
        except OSError as exc:
            raise SpoolError.of(exc, self.where) from exc
        self.size += len(data)

    async def chunks(self) -> AsyncIterator[bytes]:
        """The spooled bytes from the start, a piece at a time (the request body at the commit)."""
        offset = 0
        while offset < self.size:
            try:
                piece = await trio.to_thread.run_sync(os.pread, self.fd, min(PIECE, self.size - offset), offset)
            except OSError as exc:
                raise SpoolError.of(exc, self.where) from exc
            if not piece:
                raise SpoolError(f"{self.where}: ends after {offset} of {self.size} bytes", errno.EIO)
            offset += len(piece)
            yield piece

    async def close(self) -> None:
        """The blocks go with the descriptor: the last close of a big unlinked file takes a while."""
        fd, self.fd = self.fd, -1
        if fd >= 0:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(os.close, fd)
