"""Remembered export sizes: what `stat` can say of an export.tar before the engine is asked.

Kept in CACHE_DIR/sizes.json, shared with other daemons using the same cache
directory (merged on every save, the newest last), bounded, and validated on
load. A size proven wrong is forgotten and not merged back from the file.
"""

from __future__ import annotations

import json

import trio

from .store import Store

MAX_SIZES = 10_000
FILE = "sizes.json"


class Sizes:
    def __init__(self, store: Store) -> None:
        self.store = store
        self._sizes: dict[str, int] = {}
        self._forgotten: set[str] = set()
        self._saving = trio.Lock()  # one merge at a time: two would race on the file and undo each other

    def load(self) -> None:
        """Blocking; at mount."""
        self._sizes = _parse(self.store.read_small(FILE))

    def get(self, key: str) -> int | None:
        return self._sizes.get(key)

    def remember(self, key: str, size: int) -> None:
        self._forgotten.discard(key)
        self._sizes.pop(key, None)
        self._sizes[key] = size  # newest last: the oldest go first past the bound

    def forget(self, key: str) -> None:
        self._sizes.pop(key, None)
        self._forgotten.add(key)

    async def save(self) -> None:
        async with self._saving:
            ours = dict(self._sizes)
            merged = await trio.to_thread.run_sync(self._write, ours, frozenset(self._forgotten))
            merged.update((k, v) for k, v in self._sizes.items() if k not in ours)  # remembered meanwhile
            for key in self._forgotten:
                merged.pop(key, None)
            self._sizes = _bounded(merged)

    def _write(self, ours: dict[str, int], forgotten: frozenset[str]) -> dict[str, int]:
        theirs = _parse(self.store.read_small(FILE))
        merged = {k: v for k, v in theirs.items() if k not in ours and k not in forgotten}
        merged.update(ours)
        merged = _bounded(merged)
        self.store.write_small(FILE, json.dumps(merged, indent=0).encode())
        return merged


def _bounded(sizes: dict[str, int]) -> dict[str, int]:
    return dict(list(sizes.items())[-MAX_SIZES:])


def _parse(data: bytes | None) -> dict[str, int]:
    """Whatever is unreadable or malformed is ignored: the sizes only spare a wait."""
    try:
        doc = json.loads(data or b"{}")
    except ValueError:
        return {}
    if not isinstance(doc, dict):
        return {}
    return {str(k): v for k, v in doc.items() if isinstance(v, int) and not isinstance(v, bool) and v >= 0}
