"""What images exist, what the engine said about them, and when that stops being true.

The catalog holds one snapshot of the engine's image list and caches of the
generated documents (inspect, history) by image ID. Every refresh compares the
new snapshot with the old one and hands the difference to the listeners: that
is the single point where caches and the kernel's view are invalidated, whether
the change came from a control write, the events stream or a TTL expiring.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import cachetools
import trio

from . import references
from .engine import Engine
from .options import default
from .references import TreePath

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Image:
    id: str  # 64 hex, no "sha256:"
    created: int  # unix seconds
    tags: tuple[str, ...]
    digests: tuple[str, ...]


@dataclass
class Snapshot:
    """The image list, indexed the ways the tree asks for it."""

    images: dict[str, Image] = field(default_factory=dict)  # by ID
    by_ref: dict[str, Image] = field(default_factory=dict)  # tagged and digest references
    children: dict[TreePath, set[str]] = field(default_factory=dict)  # namespace path -> listed names
    newest: dict[TreePath, int] = field(default_factory=dict)  # namespace path -> newest Created beneath

    @classmethod
    def from_list(cls, summaries: list[dict[str, Any]]) -> Snapshot:
        snap = cls()
        for s in summaries:
            tags = tuple(t for t in s.get("RepoTags") or () if references.to_path(t))
            digests = tuple(d for d in s.get("RepoDigests") or () if references.to_path(d))
            image = Image(references.short_id(s["Id"]), int(s.get("Created") or 0), tags, digests)
            snap.images[image.id] = image
            for ref in tags + digests:
                snap.by_ref[ref] = image
            for ref in tags:
                path = tuple(ref.split("/"))
                for depth in range(len(path)):
                    prefix = path[:depth]
                    snap.children.setdefault(prefix, set()).add(path[depth])
                    snap.newest[prefix] = max(snap.newest.get(prefix, 0), image.created)
        return snap

    def image_at(self, path: TreePath) -> Image | None:
        return self.by_ref.get("/".join(path)) if references.is_image_path(path) else None

    def is_namespace(self, path: TreePath) -> bool:
        return path in self.children


@dataclass(frozen=True)
class Change:
    """What a refresh found different: references whose image changed, and images whose data changed."""

    old: Snapshot
    new: Snapshot
    refs: frozenset[str]
    ids: frozenset[str]

    @classmethod
    def between(cls, old: Snapshot, new: Snapshot) -> Change:
        refs = {r for r in old.by_ref.keys() | new.by_ref.keys() if old.by_ref.get(r) != new.by_ref.get(r)}
        ids = {i for i in old.images.keys() | new.images.keys() if old.images.get(i) != new.images.get(i)}
        return cls(old, new, frozenset(refs), frozenset(ids))

    @classmethod
    def none(cls, snap: Snapshot) -> Change:
        return cls(snap, snap, frozenset(), frozenset())

    def __bool__(self) -> bool:
        return bool(self.refs or self.ids)


# Called with each change (None: nothing is known any more, forget everything); `settle` asks to
# return only once the change has taken effect. A control write settles: when it returns, the kernel
# has forgotten what changed — the one place where a node waits for the adapter, on purpose.
Listener = Callable[[Change | None, bool], Awaitable[None]]


def pretty(doc: Any) -> bytes:
    """The generated-file form of an engine answer: 2-space JSON, keys as sent, trailing newline."""
    return (json.dumps(doc, indent=2, ensure_ascii=False) + "\n").encode()


class Catalog:
    def __init__(
        self, engine: Engine, *, fallback_ttl: float = default("list_ttl"), live_ttl: float = default("live_ttl"),
        cache_ttl: float = default("cache_ttl"), cache_entries: int = default("cache_entries"),
    ) -> None:
        self.engine = engine
        self.fallback_ttl = fallback_ttl
        self.live_ttl = live_ttl
        self.events_live = False
        self.listeners: list[Listener] = []
        self._snapshot = Snapshot()
        self._fetched_at: float | None = None
        self._lock = trio.Lock()
        self._docs: cachetools.TTLCache[tuple[str, str], bytes] = cachetools.TTLCache(
            cache_entries, cache_ttl, timer=trio.current_time
        )

    @property
    def ttl(self) -> float:
        return self.live_ttl if self.events_live else self.fallback_ttl

    async def snapshot(self) -> Snapshot:
        """The image list, fetched again once it is older than the TTL in force."""
        if self._stale():
            await self.refresh(only_if_stale=True)
        return self._snapshot

    def _stale(self) -> bool:
        return self._fetched_at is None or trio.current_time() - self._fetched_at >= self.ttl

    async def refresh(self, only_if_stale: bool = False, settle: bool = False) -> Change:
        """Fetch the list now (one fetch however many callers), drop what changed, tell the listeners.

        With `settle`, return only once the listeners have acted on the change (a control write
        must show its effect when it returns); a lookup must not wait for that.
        """
        async with self._lock:
            if only_if_stale and not self._stale():  # another caller fetched it while this one waited
                return Change.none(self._snapshot)
            started = trio.current_time()
            new = Snapshot.from_list(await self.engine.list_images())
            change = Change.between(self._snapshot, new)
            self._snapshot, self._fetched_at = new, started
            for image_id in change.ids:
                for kind in ("inspect", "history"):
                    self._docs.pop((image_id, kind), None)
        if change or settle:  # settling on "no change" still waits for changes queued before it
            log.debug("catalog changed: refs %s, ids %s", sorted(change.refs), sorted(change.ids))
            for listener in self.listeners:
                await listener(change, settle)
        return change

    def set_live(self, live: bool) -> None:
        """Whether the events stream is followed: the snapshot is trusted for long only while it is."""
        self.events_live = live

    async def lose_track(self) -> None:
        """The events stream broke: nothing is known to be current; every listener forgets everything."""
        self.events_live = False
        self._fetched_at = None
        self._docs.clear()
        for listener in self.listeners:
            await listener(None, False)

    async def version(self) -> bytes:
        """The engine's /version plus the API path in use, as `.imagefs/version` reads."""
        doc = self._docs.get(("", "version"))
        if doc is None:
            answer = await self.engine.version()
            answer["ImagefsApiPath"] = self.engine.api_path
            doc = self._docs[("", "version")] = pretty(answer)
        return doc

    async def document(self, image_id: str, kind: str) -> bytes:
        """`inspect` or `history` of an image, as the bytes a read returns."""
        key = (image_id, kind)
        doc = self._docs.get(key)
        if doc is None:
            fetch = {"inspect": self.engine.inspect, "history": self.engine.history}[kind]
            doc = pretty(await fetch(image_id))
            self._docs[key] = doc
        return doc
