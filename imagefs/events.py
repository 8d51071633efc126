"""Following the engine's image events, so that changes made by others show within a second.

While the stream is up the catalog trusts its snapshot for long and refreshes on
each burst of events; when the stream breaks, everything the kernel holds is
dropped, the catalog falls back to short TTLs, and the follower reconnects with
backoff, refreshing once it is back to catch what it missed.
"""

from __future__ import annotations

import logging

import trio

from .catalog import Catalog
from .errors import ImagefsError

log = logging.getLogger(__name__)

FILTERS = {"type": ["image"]}


class EventFollower:
    def __init__(self, catalog: Catalog, backoff: float = 0.2, max_backoff: float = 5.0) -> None:
        self.catalog = catalog
        self.backoff = backoff
        self.max_backoff = max_backoff
        self._dirty = trio.Event()
        self._told = False  # a failure to follow has been logged

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._refresher)
            delay = self.backoff
            while True:
                try:
                    await self._follow()
                    reason = "the engine ended the stream"
                except ImagefsError as exc:
                    reason = str(exc)
                except Exception as exc:  # a bug (say, an event it cannot decode): never the mount's end
                    log.exception("unexpected error following events")
                    reason = repr(exc)
                if self.catalog.events_live:
                    log.warning("events stream down (%s); %.1f s TTLs until it is back",
                                reason, self.catalog.fallback_ttl)
                    delay = self.backoff
                    await self.catalog.lose_track()
                elif not self._told:  # never followed: say why changes by others show only after a TTL
                    log.warning("cannot follow engine events (%s); %.1f s TTLs until it can",
                                reason, self.catalog.fallback_ttl)
                self._told = True
                await trio.sleep(delay)
                delay = min(delay * 2, self.max_backoff)

    async def _follow(self) -> None:
        async with self.catalog.engine.events(FILTERS) as events:
            log.info("following engine events")
            self.catalog.set_live(True)
            self._dirty.set()  # catch up on whatever happened while the stream was down
            async for event in events:
                log.debug("event %s %s", event.get("Action"), event.get("id"))
                # An action that changes no image, tag or digest (each engine names its own: flavor)
                # needs no new list. A save comes with every export (imagefs's own too), in the middle
                # of it, where a refresh of a long list costs most.
                if event.get("Action") not in self.catalog.engine.flavor.unchanging:
                    self._dirty.set()

    async def _refresher(self) -> None:
        """One refresh per burst of events: events arriving during a refresh cause one more."""
        while True:
            await self._dirty.wait()
            self._dirty = trio.Event()
            try:
                await self.catalog.refresh()
            except ImagefsError as exc:
                log.warning("refresh after events failed: %s", exc)
            except Exception:
                log.exception("unexpected error refreshing after events")
