"""export.tar and all.tar: one engine export per image, spooled to disk, shared by every reader.

GNU tar, rsync and sendfile copy exactly `st_size` bytes, and the engine sends
no length, so a size is only ever reported when it is exact: 0 with mode 0440
before an export was ever seen (GNU tar then opens the file and asks again),
the remembered size of an earlier export, or — while an export runs — the
final size, which a `stat` waits for. A stream that breaks, is not one whole
tar archive (tarcheck: the engine ends an export by closing the connection, so
a crash looks like an end), or differs in length from the remembered one fails
every reader with EIO and its spool is dropped: a short file that looks complete
is data loss.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import mmap
import os
import stat as st
from dataclasses import dataclass, field
from pathlib import Path

import trio

from . import tarcheck
from .engine import Engine, quote_name
from .errors import EngineFailed, EngineUnreachable, ImagefsError
from .nodes import Handle, Stat

log = logging.getLogger(__name__)

MAX_SIZES = 10_000  # remembered export sizes


@dataclass(eq=False)
class Export:
    key: str  # what its size is remembered under
    file: str  # which file it is the content of: a reference, an ID, or "all"
    url_path: str
    params: list[tuple[str, str]]
    names: tuple[str, ...]
    spool: Path | None = None
    fd: int = -1
    map: mmap.mmap | None = None  # the complete spool, mapped for reads
    written: int = 0
    expected: int | None = None  # the remembered size when it started: what readers were told
    complete: bool = False
    error: ImagefsError | None = None
    readers: int = 0
    last_used: float = 0.0
    done: trio.Event = field(default_factory=trio.Event)
    progress: trio.Event = field(default_factory=trio.Event)
    stopper: trio.CancelScope = field(default_factory=trio.CancelScope)  # `abort` ends the export with it

    def advance(self, n: int) -> None:
        """`n` more bytes are in the spool: wake the readers waiting for them."""
        self.written += n
        self.progress.set()
        self.progress = trio.Event()

    def end(self, error: ImagefsError | None = None) -> None:
        """No more bytes: complete (verified) unless `error`; every waiting reader wakes."""
        self.complete = error is None
        self.error = error
        self.done.set()
        self.advance(0)


class Exports:
    def __init__(self, engine: Engine, cache_dir: Path, cache_size: int, identity: str = "") -> None:
        self.engine = engine
        # Sizes are remembered per engine: another engine (version) may save the same image differently.
        self.identity = identity
        self.cache_size = cache_size
        self.nursery: trio.Nursery | None = None  # where export tasks run; set once the mount's nursery is open
        self.sizes_file = cache_dir / "sizes.json"
        self.spool_dir = cache_dir / f"spool-{os.getpid()}"
        self._sizes: dict[str, int] = {}
        self._forgotten: set[str] = set()  # sizes proven wrong: not to be merged back from the file
        self._active: dict[str, Export] = {}
        self._held: dict[str, Export] = {}  # per file, the export its open handles read
        self._nowait = True  # the spool's file system serves RWF_NOWAIT reads
        self._closing = False  # aborted: the mount is going away
        self._mappable = True  # the spool's file system maps files
        self._probe = bytearray(1)
        self._lent: list[tuple[mmap.mmap, int, int]] = []  # mapped ranges the last reads answered with

    def setup(self) -> None:
        """Make the spool directory and drop the spools of daemons that died (blocking; call at mount)."""
        self.spool_dir.mkdir(parents=True, exist_ok=True)
        for old in self.spool_dir.parent.glob("spool-*"):
            pid = old.name.removeprefix("spool-")
            if old != self.spool_dir and (not pid.isdigit() or not Path(f"/proc/{pid}").exists()):
                for f in old.iterdir():
                    f.unlink(missing_ok=True)
                old.rmdir()
        self._sizes = _load_sizes(self.sizes_file)

    def abort(self) -> None:
        """End every running export with EIO now, and start no other: readers must not hold up an unmount."""
        self._closing = True
        for export in self._active.values():
            export.stopper.cancel()

    def close(self) -> None:
        for export in list(self._active.values()):
            self._drop(export)
        with contextlib.suppress(OSError):
            self.spool_dir.rmdir()

    # --- which export ---------------------------------------------------------------------

    def for_image(self, image_id: str, target: str) -> Export:
        key = f"{self.identity} {image_id} {target}"
        return self._active.get(key) or Export(key, target, f"/images/{quote_name(target)}/get", [], (target,))

    def for_all(self, refs: dict[str, str]) -> Export:
        listing = "\n".join(f"{ref} {image_id}" for ref, image_id in sorted(refs.items()))
        key = f"{self.identity} all " + hashlib.sha256(listing.encode()).hexdigest()
        names = tuple(sorted(refs))
        return self._active.get(key) or Export(key, "all", "/images/get", [("names", n) for n in names], names)

    # --- what the tree asks ---------------------------------------------------------------

    def _current(self, export: Export) -> Export:
        """The export a file's readers are on: while one is open, a moved image or tag set waits its turn.

        Even a failed one: its readers' size refreshes must fail too, not read 0 (an end-of-file).
        """
        held = self._held.get(export.file)
        if held is not None and held.readers > 0:
            return held
        return export

    async def stat(self, export: Export, mtime: int, wait: bool = True) -> Stat:
        """Only ever an exact size: remembered, final, or waited for (a listing does not wait)."""
        current = self._current(export)
        if current is export:
            return await self._stat(export, mtime, wait)
        # Held for readers of an image (or tag set) that has since moved: true only until they close.
        return dataclasses.replace(await self._stat(current, mtime, wait), volatile=True)

    async def _stat(self, export: Export, mtime: int, wait: bool) -> Stat:
        if export.error is not None:
            if wait:
                raise export.error
            # A listing goes on; the volatile 0 sends any reader of it back to stat, which fails.
            return Stat(st.S_IFREG | 0o440, 0, mtime, volatile=True)
        if export.complete:
            return Stat(st.S_IFREG | 0o444, export.written, mtime)
        known = export.expected if export.fd >= 0 else self._sizes.get(export.key)
        if known is not None:
            # Unproven until this export is verified: reads check it before their end-of-file
            # (ExportHandle.read), and the kernel must ask again rather than cache it.
            return Stat(st.S_IFREG | 0o444, known, mtime, volatile=True)
        if export.fd >= 0 and wait:
            await export.done.wait()
            if export.error is not None:
                raise export.error
            return Stat(st.S_IFREG | 0o444, export.written, mtime)
        # 0 bytes, not world-readable: GNU tar opens it and re-stats instead of storing it empty.
        return Stat(st.S_IFREG | 0o440, 0, mtime, volatile=True)

    async def open(self, export: Export) -> ExportHandle:
        current = self._current(export)
        if current.error is None:  # a failed one is not joined: a new open exports afresh
            export = current
        if export.fd < 0:
            self._start(export)
        export.readers += 1
        self._held[export.file] = export
        return ExportHandle(self, export)

    # --- the spool ------------------------------------------------------------------------

    def _start(self, export: Export) -> None:
        if self._closing:
            raise EngineUnreachable(f"export {export.key} not started: the mount is closing")
        self._evict(reserve=self._sizes.get(export.key, 0))
        export.expected = self._sizes.get(export.key)
        export.spool = self.spool_dir / hashlib.sha256(export.key.encode()).hexdigest()
        export.fd = os.open(export.spool, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        self._active[export.key] = export
        assert self.nursery is not None, "exports opened before the mount's nursery"
        self.nursery.start_soon(self._run, export)

    async def _run(self, export: Export) -> None:
        log.info("export %s: started", export.key)
        try:
            with export.stopper:
                await self._spool(export)
                await self._verify(export)
        except ImagefsError as exc:
            self._fail(export, exc)
        except OSError as exc:
            self._fail(export, EngineFailed(500, f"spool {export.spool}: {exc.strerror}", export.url_path))
        except Exception as exc:  # a bug: it fails this export, never the mount
            log.exception("unexpected error in export %s", export.key)
            self._fail(export, EngineFailed(500, f"internal error: {exc!r}", export.url_path))
        except BaseException:  # cancelled (the mount is closing), alone or in a group
            self._fail(export, EngineUnreachable(f"export {export.key} cancelled: the mount is closing"))
            raise
        else:
            if export.stopper.cancelled_caught:
                self._fail(export, EngineUnreachable(f"export {export.key} aborted: the mount is closing"))
                return
            export.end()
            log.info("export %s: complete, %d bytes", export.key, export.written)
            self._remember(export.key, export.written)
            try:
                await self._save_sizes()
            except Exception as exc:  # the sizes only save a later export's first wait
                log.warning("cannot save export sizes in %s: %r", self.sizes_file, exc)
            self._evict()

    async def _spool(self, export: Export) -> None:
        async with self.engine.bulk_get(export.url_path, export.params) as body:
            await body.write_into(export.fd, export.advance)

    async def _verify(self, export: Export) -> None:
        def read(offset: int, n: int) -> bytes:
            return os.pread(export.fd, n, offset)

        problem = await trio.to_thread.run_sync(tarcheck.whole, read, export.written)
        if problem:
            raise EngineFailed(500, f"export of {' '.join(export.names)} is not a whole tar archive after "
                               f"{export.written} bytes: {problem} (cut short, or an error inside the stream?)",
                               export.url_path)
        if export.expected is not None and export.expected != export.written:
            self._sizes.pop(export.key, None)
            self._forgotten.add(export.key)
            with contextlib.suppress(Exception):
                await self._save_sizes()
            raise EngineFailed(500, f"export is {export.written} bytes, {export.expected} before", export.url_path)

    def _fail(self, export: Export, exc: ImagefsError) -> None:
        log.error("export %s failed: %s", export.key, exc)
        export.end(exc)
        self._drop(export)

    def _drop(self, export: Export) -> None:
        """Forget an export; its spool goes now, its descriptor once the last reader is gone."""
        if self._active.get(export.key) is export:
            del self._active[export.key]
        if export.spool is not None:
            export.spool.unlink(missing_ok=True)
            export.spool = None
        if export.readers == 0 and export.fd >= 0:
            if export.map is not None:
                # Unmapped as soon as no view of it is left (a view keeps it); the spool's blocks with it.
                self._lent = [lent for lent in self._lent if lent[0] is not export.map]
                export.map = None
            os.close(export.fd)
            export.fd = -1

    def _evict(self, reserve: int = 0) -> None:
        """Drop the least recently used complete spools nobody reads until the cache bound holds."""
        held = sum(e.written for e in self._active.values())
        idle = sorted((e for e in self._active.values() if e.complete and e.readers == 0), key=lambda e: e.last_used)
        for export in idle:
            if held + reserve <= self.cache_size:
                break
            held -= export.written
            self._drop(export)

    def _remember(self, key: str, size: int) -> None:
        self._forgotten.discard(key)
        self._sizes.pop(key, None)
        self._sizes[key] = size  # newest last: the oldest go first past the bound

    async def _save_sizes(self) -> None:
        """Write the sizes (merged under those of other daemons sharing the cache directory), bounded."""
        ours = dict(self._sizes)
        merged = await trio.to_thread.run_sync(_write_sizes, self.sizes_file, ours, frozenset(self._forgotten))
        merged.update((k, v) for k, v in self._sizes.items() if k not in ours)  # remembered meanwhile
        for key in self._forgotten:
            merged.pop(key, None)
        self._sizes = dict(list(merged.items())[-MAX_SIZES:])

    async def _pread(self, fd: int, size: int, offset: int) -> memoryview:
        """Exactly `size` spool bytes: at once when the page cache has them, else from a worker thread.

        A short answer would read as end-of-file to the kernel, so partial reads are completed.
        """
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
                raise EngineFailed(500, f"spool ended at {offset + got} of {offset + size} bytes")
            got += n
        return view

    async def read(self, export: Export, size: int, offset: int) -> memoryview:
        """Spool bytes; those of a complete export in the page cache as a view of its mapped spool,
        which the reply to the kernel copies with no copy here (the read pass of a 512 MiB export:
        0.17–0.19 s, against 0.21–0.23 s reading into a new buffer first)."""
        self._return_lent()
        if export.complete and size > 0 and self._mappable and self._resident(export.fd, size, offset):
            try:
                if export.map is None:
                    export.map = mmap.mmap(export.fd, export.written, prot=mmap.PROT_READ)
            except OSError as exc:
                log.info("spool file system refuses mmap (%s); reading with pread", exc.strerror)
                self._mappable = False
            else:
                self._lent.append((export.map, offset, size))
                return memoryview(export.map)[offset : offset + size]
        return await self._pread(export.fd, size, offset)

    def _resident(self, fd: int, size: int, offset: int) -> bool:
        """Whether a range's first and last pages are in the page cache (asked without waiting).

        The reply copies from the mapping in the event loop: pages that had to come from disk
        (an old spool, evicted) would hold every request of the mount up meanwhile.
        """
        if not self._nowait:
            return False
        try:
            return all(os.preadv(fd, [self._probe], at, os.RWF_NOWAIT) for at in (offset, offset + size - 1))
        except OSError:  # BlockingIOError: not there; another one: `_pread` finds out and says so
            return False

    def _return_lent(self) -> None:
        """Take the pages of earlier answers out of the daemon's memory (RSS); the page cache keeps them.

        pyfuse3 replies as soon as the read handler returns, before its task yields: once another
        read runs, those replies are made. Were one not, it would only map the pages again.
        """
        for area, offset, size in self._lent:
            start = offset - offset % mmap.PAGESIZE
            area.madvise(mmap.MADV_DONTNEED, start, offset + size - start)
        self._lent.clear()

    def release(self, export: Export) -> None:
        export.readers -= 1
        if export.readers == 0 and self._held.get(export.file) is export:
            del self._held[export.file]
        export.last_used = trio.current_time()
        if export.key not in self._active or export.error is not None:
            self._drop(export)
        else:
            self._evict()


@dataclass
class ExportHandle(Handle):
    """Served through the page cache even while the export grows: the kernel's reads past the size
    it knows ask getattr first, which waits for the exact size; readers of one export share pages."""

    exports: Exports
    export: Export

    async def read(self, offset: int, size: int) -> memoryview:
        export = self.export
        while export.error is None and not export.complete and export.written < offset + size:
            await export.progress.wait()
        if not export.complete and export.expected is not None and offset + size >= export.expected:
            # This read reaches the end the kernel was told (a remembered size): the reader must
            # not see end-of-file before the export is verified to have exactly that length.
            await export.done.wait()
        if export.error is not None:
            raise export.error
        return await self.exports.read(export, max(0, min(size, export.written - offset)), offset)

    async def release(self) -> None:
        self.exports.release(self.export)

    @property
    def version(self) -> object:
        return self.export  # a new export of the same image starts with an empty page cache


def _write_sizes(path: Path, ours: dict[str, int], forgotten: frozenset[str]) -> dict[str, int]:
    """Merge ours over the file's (other daemons may share it), keep the newest MAX_SIZES, write atomically."""
    merged = {k: v for k, v in _load_sizes(path).items() if k not in ours and k not in forgotten}
    merged.update(ours)
    merged = dict(list(merged.items())[-MAX_SIZES:])
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(merged, indent=0))
    tmp.replace(path)
    return merged


def _load_sizes(path: Path) -> dict[str, int]:
    """Remembered sizes from disk; whatever is unreadable or malformed there is ignored."""
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(doc, dict):
        return {}
    return {str(k): v for k, v in doc.items() if isinstance(v, int) and not isinstance(v, bool) and v >= 0}
