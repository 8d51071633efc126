"""One image's index, read: rows by (parent, name), listings, extended attributes, layers.

Each query is one B-tree probe or range scan of a small database in the page
cache (microseconds), so the nodes ask it inline; the database never changes
once built, so nothing here locks or invalidates.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path

from cachetools import LRUCache

from .build import FORMAT

LISTED_ROWS = 20_000  # rows of recent listings kept, about 4 MB
KEPT_CHANGES = 4 << 20  # bytes of `changes` texts kept
_COLUMNS = "name, id, kind, mode, uid, gid, mtime, size, layer, offset, link, rdev, ino, nlink"


@dataclass(frozen=True, slots=True)
class Row:
    name: bytes
    id: int
    kind: int  # the tar type flag: b"0" regular … b"6" fifo
    mode: int
    uid: int
    gid: int
    mtime: int
    size: int
    layer: int  # whose tar holds its bytes (-1: none)
    offset: int  # in that layer's uncompressed tar
    link: bytes
    rdev: int
    ino: int
    nlink: int


@dataclass(frozen=True, slots=True)
class LayerInfo:
    n: int
    diff_id: str
    member: str
    compression: str
    source: str  # the inflated side file of a compressed layer, else ""
    size: int
    created_by: str
    wasted: int
    changed: int  # paths it added, changed or deleted


class Index:
    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self._db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)
        except sqlite3.Error as exc:
            raise ValueError(f"no index at {path}: {exc}") from None
        try:
            version = self._db.execute("SELECT value FROM meta WHERE key = 'format'").fetchone()
        except sqlite3.Error as exc:
            self._db.close()
            raise ValueError(f"{path} is not an index: {exc}") from None
        if version is None or version[0] != FORMAT:
            self._db.close()
            raise ValueError(f"{path} is an index of another format ({version})")
        self._listings: LRUCache[int, list[Row]] = LRUCache(LISTED_ROWS, getsizeof=len)
        self._changes: LRUCache[int, bytes] = LRUCache(KEPT_CHANGES, getsizeof=len)
        self.layers = [LayerInfo(*row) for row in self._db.execute(
            "SELECT n, diff_id, member, compression, source, size, created_by, wasted, changed FROM layer ORDER BY n")]

    def close(self) -> None:
        self._db.close()

    def tree(self, name: bytes) -> Row:
        """The root row of one tree: `build.ROOTFS`, or a layer's `files_tree(n)` or `removed_tree(n)`."""
        row = self.lookup(0, name)
        if row is None:
            raise ValueError(f"{self.path} has no tree {name!r}")
        return row

    def lookup(self, parent: int, name: bytes) -> Row | None:
        found = self._db.execute(f"SELECT {_COLUMNS} FROM node WHERE parent = ? AND name = ?", (parent, name))
        row = found.fetchone()
        return Row(*row) if row else None

    def children(self, parent: int) -> list[Row]:
        """A directory's rows by name; recent listings are kept: the kernel keeps none of a FUSE directory,
        so every warm `find` or `ls` lists again."""
        rows = self._listings.get(parent)
        if rows is None:
            rows = [Row(*row) for row in self._db.execute(
                f"SELECT {_COLUMNS} FROM node WHERE parent = ? ORDER BY name", (parent,))]
            if len(rows) <= LISTED_ROWS:
                self._listings[parent] = rows
        return rows

    def xattrs(self, ino: int) -> dict[bytes, bytes]:
        return dict(self._db.execute("SELECT key, value FROM xattr WHERE ino = ?", (ino,)).fetchall())

    def changes(self, n: int) -> bytes:
        """Layer `n`'s `changes` (blocking: a scan of the rows and a sort, 1 s for a million-path layer), made
        when asked: few read it, and the build is the faster for it. Recent ones are kept."""
        text = self._changes.get(n)
        if text is None:
            text = b"".join(line for line, in self._db.execute(_CHANGES, (n,)))
            if len(text) <= KEPT_CHANGES:
                self._changes[n] = text
        return text


# Layer n's letters: in the rows it wrote, and in `chg` for those that went since; by path
_CHANGES = """
    SELECT line FROM (
        SELECT CAST(d.path || n.name AS BLOB) AS path,
               CAST(n.letter || ' /' || d.path || n.name || x'0a' AS BLOB) AS line
        FROM node n JOIN dirpath d ON d.id = n.parent WHERE n.wrote = ?1
        UNION ALL SELECT path, CAST(letter || ' /' || path || x'0a' AS BLOB) FROM chg WHERE layer = ?1)
    ORDER BY path"""
