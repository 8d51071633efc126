"""Reading spool files without holding the event loop up: RWF_NOWAIT first, threads for the disk.

A complete spool whose pages are in the page cache is answered with a view of
its mapping, which pyfuse3's reply copies with no copy here; those pages leave
the daemon's memory (RSS) at the next read, the page cache keeps them.
"""

from __future__ import annotations

import logging
import mmap
import os

import trio

from ..errors import ExportBroken, SpoolError
from .export import Export, State

log = logging.getLogger(__name__)


class Reader:
    def __init__(self) -> None:
        self._nowait = True  # the spool's file system serves RWF_NOWAIT reads
        self._mappable = True
        self._probe = bytearray(1)
        self._lent: list[tuple[mmap.mmap, int, int]] = []  # mapped ranges the last reads answered with

    async def read(self, export: Export, size: int, offset: int) -> memoryview:
        self._return_lent()
        if export.state is State.COMPLETE and size > 0 and self._mappable and self._resident(export.fd, size, offset):
            try:
                if export.map is None:
                    export.map = mmap.mmap(export.fd, export.size, prot=mmap.PROT_READ)
            except OSError as exc:
                log.info("spool file system refuses mmap (%s); reading with pread", exc.strerror)
                self._mappable = False
            else:
                self._lent.append((export.map, offset, size))
                return memoryview(export.map)[offset : offset + size]
        try:
            return await self._pread(export.fd, size, offset)
        except OSError as exc:
            raise SpoolError.of(exc, f"reading the spool of {' '.join(export.content.names)}") from exc

    def forget(self, export: Export) -> None:
        """The export's mapping goes (with its last view): no lent range may point into it."""
        if export.map is not None:
            self._lent = [lent for lent in self._lent if lent[0] is not export.map]
            export.map = None

    async def _pread(self, fd: int, size: int, offset: int) -> memoryview:
        """Exactly `size` bytes: a short answer would read as end-of-file to the kernel."""
        view = memoryview(bytearray(size))
        got = 0
        if self._nowait:
            try:
                got = os.preadv(fd, [view], offset, os.RWF_NOWAIT)
            except BlockingIOError:
                pass
            except OSError as exc:  # tmpfs, overlayfs, NFS: no RWF_NOWAIT for reads
                log.info("spool file system refuses RWF_NOWAIT (%s); reading in threads", exc.strerror)
                self._nowait = False
        while got < size:
            n = await trio.to_thread.run_sync(os.preadv, fd, [view[got:]], offset + got)
            if n == 0:
                raise ExportBroken(f"spool ended at {offset + got} of {offset + size} bytes")
            got += n
        return view

    def _resident(self, fd: int, size: int, offset: int) -> bool:
        """Whether a range's first and last pages are in the page cache (asked without waiting):
        the reply copies from the mapping in the event loop, where a page from disk would hold
        every request of the mount up."""
        if not self._nowait:
            return False
        try:
            return all(os.preadv(fd, [self._probe], at, os.RWF_NOWAIT) for at in (offset, offset + size - 1))
        except OSError:  # BlockingIOError: not there; another one: `_pread` finds out and says so
            return False

    def _return_lent(self) -> None:
        """pyfuse3 replies as soon as the read handler returns, before its task yields: once another
        read runs, those replies are made. Were one not, it would only map the pages again."""
        for area, offset, size in self._lent:
            start = offset - offset % mmap.PAGESIZE
            area.madvise(mmap.MADV_DONTNEED, start, offset + size - start)
        self._lent.clear()
