"""Each image's index, built once from the same spooled export that `export.tar` serves, kept by image ID.

The first look inside an image joins (or starts) the export of its directory's
`export.tar` — never a second engine export — and indexes the spool once the
export is verified (`tarcheck`: a cut or broken export is refused before any
row is made, so a tree is never partial). The index is a file named by the image
ID and the index format: an image ID names its content, so an index is never
stale and is reused by every later mount. Indexing runs in a process of its own
(`build`).

A file's bytes are read from the spool of the directory it was opened in: the
index says which layer and where in that layer's tar; where that layer starts
in this spool is read once per spool (the save's small outer members).
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TypeVar

import trio

from ..errors import ExportBroken, ExportMoved, ImagefsError, SpoolError
from ..spool.export import Export
from ..spool.exports import Exports
from .build import FORMAT
from .index import Index
from .members import BadArchive, Window
from .save import read_save
from .trim import INDEX, trim

log = logging.getLogger(__name__)
T = TypeVar("T")

MAX_OPEN = 16  # indexes open at once; another is opened again from disk in microseconds
LENGTHS_EVERY = 0.02  # seconds between the lengths told to a builder that follows a running export


@dataclass
class _Building:
    done: trio.Event = field(default_factory=trio.Event)
    error: ImagefsError | None = None


class Indexes:
    def __init__(self, exports: Exports, directory: Path) -> None:
        self.exports = exports
        self.directory = directory
        self._open: dict[tuple[str, bool], Index] = {}  # by image ID and views
        self._building: dict[tuple[str, bool], _Building] = {}
        self._starts: dict[str, list[tuple[str, int]]] = {}  # spool name -> each layer's diff ID and start

    async def index(self, image_id: str, target: str, views: bool = False) -> Index:
        """The image's index (with `views`: of its layers' own and removed files): opened, or built from the
        export of `target` (what its directory exports)."""
        key = (image_id, views)
        if (ix := self._open.pop(key, None)) is not None:
            self._open[key] = ix  # the most recently used, the last to be closed
            return ix
        while (ix := self._open.get(key)) is None:
            building = self._building.get(key)
            if building is not None:
                await building.done.wait()
                if building.error is not None:
                    raise building.error
                continue
            building = self._building[key] = _Building()
            try:
                self._open[key] = await self._load(image_id, target, views)
                while len(self._open) > MAX_OPEN:  # each holds a connection and its caches
                    self._open.pop(next(iter(self._open))).close()
            except ImagefsError as exc:
                building.error = exc
                raise
            finally:
                del self._building[key]
                building.done.set()
        return ix

    def _path(self, image_id: str, views: bool) -> Path:
        return self.directory / f"{image_id}.v{FORMAT}{'.layers' if views else ''}{INDEX}"

    async def _load(self, image_id: str, target: str, views: bool) -> Index:
        path = self._path(image_id, views)
        with contextlib.suppress(OSError, ValueError):  # none yet, or unreadable: built again
            ix = await trio.to_thread.run_sync(Index, path)
            await trio.to_thread.run_sync(os.utime, path)  # used now: the last to be evicted
            return ix
        return await self._by_id_if_moved(image_id, target, partial(self._indexed, image_id, path, views))

    async def _by_id_if_moved(self, image_id: str, target: str, use: Callable[[str], Awaitable[T]]) -> T:
        """`use` the export of `target`; when the reference was moved to another image while the engine saved
        it, that of the image by its ID: a second export, but only in that race, and the image's own bytes."""
        try:
            return await use(target)
        except ExportMoved as exc:
            if target == image_id:
                raise
            log.warning("%s; exporting image %s by its ID instead", exc, image_id[:12])
            return await use(image_id)

    async def _indexed(self, image_id: str, path: Path, views: bool, target: str) -> Index:
        export = await self.exports.open(self.exports.for_image(image_id, target))
        try:
            started = trio.current_time()
            rows, size, ended, walks = await self._build(export, path, views)
            log.info("index of %s%s: built, %d rows, %d bytes, %.3f s after the export; %s", image_id[:12],
                     " (layers)" if views else "", rows, size, trio.current_time() - max(started, ended), walks)
            ix = await trio.to_thread.run_sync(Index, path)
            await self._trim(keep=path.name)
            return ix
        finally:
            await self.exports.release(export)

    async def _build(self, export: Export, path: Path, views: bool) -> tuple[int, int, float, str]:
        """Index the spool into `path`, which appears only once whole and only from a verified export; its rows
        and bytes, when the export ended, and which layers were walked (`walks`). The rootfs of an export still
        running is indexed as it arrives."""
        names = " ".join(export.content.names)
        part = path.with_name(f".{path.name}.{os.getpid()}.part")
        follow = not views and not export.done.is_set()
        while follow and export.fd < 0 and not export.done.is_set():
            await trio.sleep(LENGTHS_EVERY)  # its spool is being made
        if not follow:
            await export.done.wait()
        if export.done.is_set() and export.error is not None:
            raise export.error
        lengths, tell = os.pipe() if follow else (-1, -1)
        ended = [trio.current_time()]
        try:
            await trio.to_thread.run_sync(partial(self.directory.mkdir, mode=0o700, exist_ok=True))
            command = [sys.executable, "-m", "imagefs.rootfs.build", str(export.fd), str(part), str(self.directory),
                       *(["views"] if views else []), *([f"follow={lengths}"] if follow else [])]
            async with trio.open_nursery() as nursery:
                if follow:
                    nursery.start_soon(_tell_lengths, export, tell, ended)
                    tell = -1  # the task's now
                done = await _run(command, (export.fd, *([lengths] if follow else [])))
                await export.done.wait()  # an index stands only on a verified export
            if export.error is not None:
                raise export.error
            if isinstance(done, OSError):
                raise done
            _check(done, names)
            walks = ", ".join(line for line in done.stderr.decode(errors="replace").splitlines()
                              if line.startswith("layer "))
            return int(done.stdout), await trio.to_thread.run_sync(_publish, part, path), ended[0], walks
        except OSError as exc:
            raise SpoolError.of(exc, f"the index {path}") from None
        finally:
            for fd in (lengths, tell):
                if fd >= 0:
                    os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(part)

    async def _trim(self, keep: str) -> None:
        spools = sum(stored.size for stored in self.exports.store.stored.values())
        names = {self._path(*key).name for key in self._open} | {keep}
        try:
            removed = await trio.to_thread.run_sync(trim, self.directory, self.exports.cache_size - spools, names)
        except OSError as exc:  # the bound is not kept this time: nothing is lost
            log.warning("cannot trim the indexes in %s: %s", self.directory, exc.strerror)
            return
        for name in removed:
            log.info("index cache: %s removed (--cache-size)", name)

    async def data(self, image_id: str, target: str, layer: int) -> Source:
        """Where the bytes of `layer` are: its inflated side file, or its place in the export of `target`."""
        ix = await self.index(image_id, target)
        info = ix.layers[layer]
        if info.source:
            fd = await self._side_file(info.source, missing_ok=True)
            if fd < 0:
                # A trim after another build removed it with an index it evicted while this one was built (which
                # had found it there): the image is indexed again, which inflates the layer again.
                log.warning("the inflated layer %s of image %s is gone; indexing the image again", info.source,
                            image_id[:12])
                await self._drop(image_id, ix)
                fd = await self._side_file((await self.index(image_id, target)).layers[layer].source, False)
            return Source(self, None, fd, 0)
        return await self._by_id_if_moved(image_id, target, partial(self._source, image_id, layer, info.diff_id))

    async def _side_file(self, source: str, missing_ok: bool) -> int:
        """An inflated layer, opened; -1 for one that is not there, if that is `missing_ok`."""
        try:
            return await trio.to_thread.run_sync(os.open, self.directory / source, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError as exc:
            if missing_ok and isinstance(exc, FileNotFoundError):
                return -1
            raise SpoolError.of(exc, f"the inflated layer {source}") from None

    async def _drop(self, image_id: str, ix: Index) -> None:
        """The image's rootfs index `ix` forgotten and its file removed, unless another has replaced it meanwhile
        (its readers go on with it)."""
        key = (image_id, False)
        if key not in self._building and self._open.get(key) in (ix, None):
            self._open.pop(key, None)
            with contextlib.suppress(FileNotFoundError):
                await trio.to_thread.run_sync(os.unlink, self._path(image_id, False))

    async def _source(self, image_id: str, layer: int, layer_diff_id: str, target: str) -> Source:
        export = await self.exports.open(self.exports.for_image(image_id, target))
        try:
            await export.done.wait()
            if export.error is not None:
                raise export.error
            starts = self._starts.get(export.name)
            if starts is None:
                starts = self._starts[export.name] = await trio.to_thread.run_sync(_layer_starts, export)
            diff_id, start = starts[layer] if layer < len(starts) else ("", 0)
            if diff_id != layer_diff_id:
                raise ExportBroken(f"export of {target} holds layer {diff_id or 'none'} where the index has "
                                   f"{layer_diff_id}")
            return Source(self, export, export.fd, start)
        except BaseException:
            await self.exports.release(export)
            raise


async def _tell_lengths(export: Export, fd: int, ended: list[float]) -> None:
    """Tell the builder the spool's length as it grows, then the export's verdict (`follow`); note when it
    ended in `ended`."""
    stream = trio.lowlevel.FdStream(fd)
    try:
        told = -1
        while True:
            finished = export.done.is_set()
            if export.size != told:
                told = export.size
                await stream.send_all(b"%d\n" % told)
            if finished:
                ended[0] = trio.current_time()
                await stream.send_all(b"broken\n" if export.error is not None else b"end %d\n" % export.size)
                return
            with trio.move_on_after(LENGTHS_EVERY):
                await export.done.wait()
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass  # the builder is done, or gave up
    finally:
        await stream.aclose()


async def _run(command: list[str], fds: tuple[int, ...]) -> subprocess.CompletedProcess[bytes] | OSError:
    """The builder's run; an OSError is returned, not raised, so that it leaves its nursery as itself."""
    try:
        return await trio.run_process(command, pass_fds=fds, capture_stdout=True, capture_stderr=True, check=False)
    except OSError as exc:
        return exc


def _check(done: subprocess.CompletedProcess[bytes], names: str) -> None:
    why = done.stderr.decode(errors="replace").strip()
    if done.returncode == 2:
        raise ExportBroken(f"export of {names}: {why}")
    if done.returncode != 0:
        log.error("indexing the export of %s failed (exit status %d):\n%s", names, done.returncode, why)
        raise ExportBroken(f"export of {names} could not be indexed: {why.splitlines()[-1:]}")


def _publish(part: Path, path: Path) -> int:
    os.chmod(part, 0o600)  # what the image holds is the mounting user's to read, like its spool
    os.rename(part, path)
    return path.stat().st_size


def _layer_starts(export: Export) -> list[tuple[str, int]]:
    try:
        return [(ref.diff_id, ref.offset) for ref in read_save(Window(export.fd)).layers]
    except BadArchive as exc:
        raise ExportBroken(f"export of {' '.join(export.content.names)}: {exc}") from None


@dataclass
class Source:
    """An open layer's bytes: `read` takes offsets in the layer's tar."""

    indexes: Indexes
    export: Export | None  # None: a side file, `fd` its own
    fd: int
    start: int

    async def read(self, size: int, offset: int) -> bytes | memoryview:
        if self.export is not None:
            return await self.indexes.exports.read(self.export, size, self.start + offset)
        try:
            return await trio.to_thread.run_sync(os.pread, self.fd, size, offset)
        except OSError as exc:
            raise SpoolError.of(exc, "reading an inflated layer") from None

    async def close(self) -> None:
        if self.export is not None:
            await self.indexes.exports.release(self.export)
        else:
            await trio.to_thread.run_sync(os.close, self.fd)
