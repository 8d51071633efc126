"""The indexes, inflated layers and kept walks in CACHE_DIR/rootfs count against --cache-size with the spools.

Least recently used first (an index's mtime is when a mount last opened it); an
index open in this mount stays, and an inflated layer, a layer's kept walk or
its blob's diff ID goes only with the last index that has the layer. A kept walk
or a blob's diff ID no index has (left by a build that failed) goes once the
indexes alone do not bring the directory under its bound; an inflated layer no
index has stays, since a build still running may be about to name it in its
index, and serves the next build with that layer. (One that went with an evicted
index while a build that had found it ran is inflated again by the first read
that misses it: `indexes`.) A part file a builder left
when it was killed (its pid is gone) goes at the next trim. Another daemon that
has an index open keeps its descriptor, and a later open there builds the index
again.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from pathlib import Path

from ..spool.store import abandoned
from . import walks

INDEX = ".sqlite"


def sources(index: Path) -> set[str]:
    """The inflated layers an index reads, the kept walks of its layers and its blobs' diff IDs (blocking)."""
    try:
        with contextlib.closing(sqlite3.connect(f"file:{index}?mode=ro", uri=True)) as db:
            return {name for source, diff_id, member in db.execute("SELECT source, diff_id, member FROM layer")
                    for name in (source, walks.name(diff_id), walks.blob_name(member)) if name}
    except sqlite3.Error:
        return set()


def trim(directory: Path, budget: int, keep: set[str]) -> list[str]:
    """(blocking) Remove indexes not in `keep` until the directory holds at most `budget` bytes, and the part
    files of builders that are gone; what went."""
    entries = list(os.scandir(directory))
    files = {e.name: e.stat(follow_symlinks=False) for e in entries
             if e.is_file(follow_symlinks=False) and not e.name.startswith(".")}
    held = sum(s.st_size for s in files.values())
    removed = [e.name for e in entries if e.name.startswith(".") and abandoned(e.name)]
    for name in removed:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(directory / name)
    freed: set[str] = set()  # inflated layers and kept walks that only removed indexes may still need
    for _, name in sorted((s.st_mtime, n) for n, s in files.items() if n.endswith(INDEX) and n not in keep):
        if held <= budget:
            break
        freed |= sources(directory / name)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(directory / name)
        held -= files.pop(name).st_size
        removed.append(name)
    orphans = {name for name in files if name.endswith((walks.SUFFIX, walks.BLOB))} if held > budget else set()
    if candidates := (freed | orphans) & set(files):  # else no index need be read
        needed = set().union(*(sources(directory / name) for name in files if name.endswith(INDEX)))
        for name in sorted(candidates - needed):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(directory / name)
            removed.append(name)
    return removed
