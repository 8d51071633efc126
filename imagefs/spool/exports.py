"""Exports by content: one engine export per piece of content, spooled, shared, verified, kept.

A piece of content is "these image IDs under these references" (`Content`), so
what an export holds never changes under its key: a tag that moves leads to
another key. Many readers of one content share one export; a failed one is
never joined (the next open exports afresh); a complete one is published into
the store and outlives the mount, bounded by --cache-size.

The engine sends no length and ends an export by closing the connection, so an
export counts as complete only once tarcheck walks it as one whole archive, its
manifest names exactly the images it was asked for, and its length is the one
readers may have been told (a remembered size).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os

import trio

from .. import tarcheck
from ..engine import Engine, Flavor, quote_name
from ..engine.flavor import SAVE_INDEXES, normalized, save_name
from ..errors import Closing, ExportBroken, ExportMoved, ImagefsError, SpoolError
from .export import Content, Export, State
from .reader import Reader
from .sizes import Sizes
from .store import Store, UnsafeCache, spool_name

log = logging.getLogger(__name__)


class Exports:
    def __init__(self, engine: Engine, store: Store, sizes: Sizes, cache_size: int, identity: str,
                 nursery: trio.Nursery) -> None:
        self.engine = engine
        self.store = store
        self.sizes = sizes
        self.cache_size = cache_size
        # Spools and sizes are kept per engine: another engine (version) may save an image differently.
        self.identity = identity
        self.nursery = nursery
        self.reader = Reader()
        self._active: dict[str, Export] = {}  # running or complete, by key
        self._held: dict[str, Export] = {}  # failed but still open: its stat must fail, not read 0
        self._closing = False

    # --- what content -------------------------------------------------------------------

    def for_image(self, image_id: str, target: str) -> Content:
        key = f"{self.identity} {image_id} {target}"
        return Content(key, f"/images/{quote_name(save_name(target))}/get", (), ((target, image_id),))

    def for_all(self, refs: dict[str, str]) -> Content:
        images = tuple(sorted(refs.items()))
        listing = "\n".join(f"{ref} {image_id}" for ref, image_id in images)
        key = f"{self.identity} all " + hashlib.sha256(listing.encode()).hexdigest()
        return Content(key, "/images/get", tuple(("names", ref) for ref, _ in images), images)

    # --- what the nodes ask -------------------------------------------------------------

    def current(self, content: Content) -> Export:
        """The export a stat of this content sees (a new, idle one if none runs, completed or failed open)."""
        return self._active.get(content.key) or self._held.get(content.key) or self._fresh(content)

    def _fresh(self, content: Content) -> Export:
        name = spool_name(content.key)
        kept = self.store.stored.get(name)
        stored = kept.size if kept else None
        # What readers may be told before an export runs: a stored spool's size, else a remembered one.
        return Export(content, name, stored=stored, expected=stored if kept else self.sizes.get(content.key))

    async def open(self, content: Content) -> Export:
        """Join the export of this content, or start one (a failed one is never joined)."""
        export = self._active.get(content.key)
        if export is None:
            if self._closing:
                raise Closing(f"export of {' '.join(content.names)} not started: the mount is closing")
            export = self._active[content.key] = self._fresh(content)
            if export.stored is None or not await self._adopt(export):
                self._start(export)
        export.readers += 1
        return export

    async def read(self, export: Export, size: int, offset: int) -> memoryview:
        return await self.reader.read(export, size, offset)

    async def release(self, export: Export) -> None:
        export.readers -= 1
        self.store.touch(export.name, trio.current_time())
        if export.readers > 0:
            return
        if export.state is State.FAILED:
            if self._held.get(export.key) is export:
                del self._held[export.key]
            await self._close(export)
        else:
            await self._evict()

    # --- running one --------------------------------------------------------------------

    def _start(self, export: Export) -> None:
        export.state = State.RUNNING
        self.nursery.start_soon(self._run, export)

    async def _adopt(self, export: Export) -> bool:
        """Serve a complete spool an earlier mount (or another daemon) left: no engine call."""
        assert export.stored is not None
        try:
            export.fd = await trio.to_thread.run_sync(self.store.open_stored, export.name, export.stored)
        except OSError as exc:  # evicted meanwhile (by another daemon too), or replaced
            log.info("stored spool %s not used: %s", export.name, exc.strerror)
            self.store.stored.pop(export.name, None)
            return False
        export.size = export.stored
        export.complete()
        log.info("export of %s: served from the stored spool", " ".join(export.content.names))
        return True

    async def _run(self, export: Export) -> None:
        names = " ".join(export.content.names)
        log.info("export of %s: started", names)
        try:
            with export.stopper:
                await self._spool(export)
                await self._verify(export)
            if export.stopper.cancelled_caught:
                raise Closing(f"export of {names} aborted: the mount is closing")
            await self._publish(export)
        except ImagefsError as exc:
            await self._fail(export, exc)
        except OSError as exc:
            await self._fail(export, SpoolError.of(exc, f"the spool of {names} in {self.store.path}"))
        except Exception as exc:  # a bug: it fails this export, never the mount
            log.exception("unexpected error in the export of %s", names)
            await self._fail(export, ExportBroken(f"internal error: {exc!r}"))
        except BaseException:  # cancelled (the mount is closing), alone or in a group
            self._end_failed(export, Closing(f"export of {names} cancelled: the mount is closing"))
            _discard(self.store, export)
            raise

    async def _spool(self, export: Export) -> None:
        export.part, export.fd = await trio.to_thread.run_sync(self.store.create_part, export.name)
        await self._evict(reserve=export.expected or 0)
        async with self.engine.bulk_get(export.content.url_path, list(export.content.params)) as body:
            await body.write_into(export.fd, export.advance)

    async def _verify(self, export: Export) -> None:
        def read(offset: int, n: int) -> bytes:
            return os.pread(export.fd, n, offset)

        walk = await trio.to_thread.run_sync(tarcheck.walk, read, export.size, SAVE_INDEXES)
        names = " ".join(export.content.names)
        if walk.problem:
            raise ExportBroken(f"export of {names} is not a whole tar archive after {export.size} bytes: "
                               f"{walk.problem} (cut short, or an error inside the stream?)")
        problem = _content_problem(self.engine.flavor, walk.kept, export.content)
        if problem:
            raise problem
        if export.expected is not None and export.expected != export.size:
            self.sizes.forget(export.key)
            await self._save_sizes()
            raise ExportBroken(f"export of {names} is {export.size} bytes, {export.expected} before")

    async def _publish(self, export: Export) -> None:
        assert export.part is not None
        try:
            await trio.to_thread.run_sync(self.store.publish, export.part, export.name)
            export.part = None
            self.store.index(export.name, export.size, trio.current_time())
        except OSError as exc:  # served all the same (its part goes at close); the next mount exports again
            log.warning("export of %s not kept in %s: %s", export.key, self.store.path, exc.strerror)
        export.complete()
        log.info("export of %s: complete, %d bytes", " ".join(export.content.names), export.size)
        self.sizes.remember(export.key, export.size)
        await self._save_sizes()
        await self._evict()

    async def _save_sizes(self) -> None:
        try:
            await self.sizes.save()
        except (OSError, UnsafeCache) as exc:  # the sizes only spare a later export's first wait
            log.warning("cannot save export sizes in %s: %s", self.store.path, exc)

    async def _fail(self, export: Export, exc: ImagefsError) -> None:
        with trio.CancelScope(shield=True):  # the space is free before any reader hears of the failure
            await trio.to_thread.run_sync(_discard, self.store, export)
        self._end_failed(export, exc)
        if export.readers == 0:
            await self._close(export)

    def _end_failed(self, export: Export, exc: ImagefsError) -> None:
        level = logging.INFO if isinstance(exc, Closing) else logging.ERROR
        log.log(level, "export of %s failed: %s", " ".join(export.content.names), exc)
        export.fail(exc)
        if self._active.get(export.key) is export:
            del self._active[export.key]
        if export.readers > 0:
            self._held[export.key] = export

    async def _close(self, export: Export) -> None:
        """Its descriptor goes once nobody reads it (a view of its mapping keeps the mapping alive)."""
        self.reader.forget(export)
        await trio.to_thread.run_sync(_discard, self.store, export)
        fd, export.fd = export.fd, -1
        if fd >= 0:
            await trio.to_thread.run_sync(os.close, fd)  # the last close of a big unlinked file frees it

    async def _evict(self, reserve: int = 0) -> None:
        """Remove the least recently used complete spools nobody here reads, until the bound holds."""
        running = sum(e.size for e in self._active.values() if e.state is State.RUNNING)
        held = running + sum(s.size for s in self.store.stored.values()) + reserve
        for name, stored in sorted(self.store.stored.items(), key=lambda item: item[1].used):
            if held <= self.cache_size:
                break
            owner = next((e for e in self._active.values() if e.name == name), None)
            if (owner is not None and owner.readers > 0) or self.store.stored.pop(name, None) is None:
                continue  # read here, or evicted meanwhile by a concurrent call
            held -= stored.size
            if owner is not None:
                self._active.pop(owner.key, None)
                await self._close(owner)
            await trio.to_thread.run_sync(self.store.unlink, name)

    # --- the mount's end ----------------------------------------------------------------

    def abort(self) -> None:
        """End every running export now, and start no other: readers must not hold up an unmount."""
        self._closing = True
        for export in self._active.values():
            export.stopper.cancel()

    def close(self) -> None:
        """At the mount's end (blocking): every descriptor, and every spool that is not complete."""
        for export in [*self._active.values(), *self._held.values()]:
            _discard(self.store, export)
            self.reader.forget(export)
            if export.fd >= 0:
                os.close(export.fd)
                export.fd = -1


def _discard(store: Store, export: Export) -> None:
    """A spool being written that will never be complete: its file goes, and its blocks with it,
    although readers still hold its descriptor (blocking)."""
    part, export.part = export.part, None
    if part is not None:
        with contextlib.suppress(OSError):
            os.unlink(part, dir_fd=store.spool_fd)
        with contextlib.suppress(OSError):
            os.ftruncate(export.fd, 0)


def _content_problem(flavor: Flavor, members: dict[str, bytes], content: Content) -> ExportBroken | None:
    """Whether the archive holds exactly the images asked for, each under its reference (how a save
    says which images it holds depends on the engine: flavor)."""
    names = " ".join(content.names)
    try:
        saved = flavor.saved(members)
    except ValueError as exc:
        return ExportBroken(f"export of {names}: {exc}")
    held = {ref: image_id for image_id, refs in saved.items() for ref in refs}
    wanted = {image_id for _, image_id in content.images}
    moved = [ref for ref, image_id in content.images if held.get(normalized(ref), image_id) != image_id]
    if saved.keys() != wanted or moved:
        return ExportMoved(f"export of {names}: it holds image(s) {' '.join(sorted(i[:12] for i in saved))}, not "
                           f"{' '.join(sorted(i[:12] for i in wanted))}: a tag moved while the engine saved it")
    return None
