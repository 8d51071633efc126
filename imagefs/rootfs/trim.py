"""The indexes and inflated layers in CACHE_DIR/rootfs count against --cache-size with the spools.

Least recently used first (an index's mtime is when a mount last opened it); an
index open in this mount stays, and an inflated layer goes only with the last
index that reads it. Another daemon that has an index open keeps its descriptor,
and a later open there builds the index again.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from pathlib import Path

INDEX = ".sqlite"


def sources(index: Path) -> set[str]:
    """The inflated layers an index reads (blocking)."""
    try:
        with contextlib.closing(sqlite3.connect(f"file:{index}?mode=ro", uri=True)) as db:
            return {row[0] for row in db.execute("SELECT source FROM layer WHERE source != ''")}
    except sqlite3.Error:
        return set()


def trim(directory: Path, budget: int, keep: set[str]) -> list[str]:
    """(blocking) Remove indexes not in `keep` until the directory holds at most `budget` bytes; what went."""
    files = {e.name: e.stat(follow_symlinks=False) for e in os.scandir(directory)
             if e.is_file(follow_symlinks=False) and not e.name.startswith(".")}
    held = sum(s.st_size for s in files.values())
    removed: list[str] = []
    freed: set[str] = set()  # inflated layers that only removed indexes may still need
    for _, name in sorted((s.st_mtime, n) for n, s in files.items() if n.endswith(INDEX) and n not in keep):
        if held <= budget:
            break
        freed |= sources(directory / name)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(directory / name)
        held -= files.pop(name).st_size
        removed.append(name)
    if freed:
        for name in files:
            if name.endswith(INDEX):
                freed -= sources(directory / name)
        for name in sorted(freed & set(files)):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(directory / name)
            removed.append(name)
    return removed
