"""The merged tree while it is being built: its rows in the index's own node table, its directories in memory.

A million-entry layer held as Python objects costs over a gigabyte; here a
file's row goes to SQLite as soon as its member is read, and what the merge
must ask about a path (is something there, what) is a B-tree probe. Only
directories (a few per thousand entries) are objects, and the keys of the
symlinks. A layer's regular files wait in a batch and go in many per statement,
each over what is already at its path, if anything (the table's key is the path);
one over a directory or a symlink (known here without asking the table) is the
merge's slow path, as are directories, links and parents not seen yet
(`rootmerge`).

Each row also carries what the merge needs later: `wrote`, the layer that
wrote the path last (-1: made as a missing parent), and `letter`, what that
layer did to it (A or C, `docker diff`'s letters).
"""

from __future__ import annotations

import itertools
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .members import DIRECTORY, SYMLINK
from .merge import Path, resolve

ROOT_ID = 1
ROWS_PER_INSERT = 64  # rows one INSERT statement takes

# parent, name, id, kind, mode, uid, gid, mtime, size, layer, offset, link, rdev, ino, nlink, wrote, letter
Row = tuple[int, bytes, int, int, int, int, int, int, int, int, int, bytes, int, int, int, int, str | None]
INSERT = "INSERT INTO node VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)"
FIELDS = "parent, name, id, kind, mode, uid, gid, mtime, size, layer, offset, link, rdev, ino, nlink, wrote, letter"


@dataclass(frozen=True, slots=True)
class Dir:
    parent: int
    name: bytes
    path: Path


def dir_row(parent: int, name: bytes, id_: int) -> tuple[int, bytes, int, int, int, int, int, int, int, int, int,
                                                        bytes, int, int, int]:
    """The row of a directory no member made (a missing parent, a tree's top): 0755, root's, time 0."""
    return (parent, name, id_, DIRECTORY, 0o755, 0, 0, 0, 0, -1, 0, b"", 0, id_, 2)


class Insert:
    """An INSERT of rows shaped as `row`, ROWS_PER_INSERT of them a statement: SQLite's cost is per statement
    more than per row."""

    def __init__(self, head: str, row: str, tail: str = "") -> None:
        self.per = ROWS_PER_INSERT
        self.one, self.many = f"{head}{row}{tail}", f"{head}{','.join([row] * self.per)}{tail}"

    def __call__(self, con: sqlite3.Connection, rows: Sequence[tuple[object, ...]]) -> None:
        whole = len(rows) - len(rows) % self.per
        con.executemany(self.many, [tuple(itertools.chain.from_iterable(rows[at : at + self.per]))
                                    for at in range(0, whole, self.per)])
        con.executemany(self.one, rows[whole:])


class Live:
    """The rows of the tree being merged, and its directories (by id, and by parent and name)."""

    def __init__(self, con: sqlite3.Connection, root_name: bytes) -> None:
        self.con = con
        self.ids = itertools.count(ROOT_ID + 1)
        self.dirs: dict[int, Dir] = {ROOT_ID: Dir(0, root_name, ())}
        self.subdirs: dict[tuple[int, bytes], int] = {}
        con.execute(INSERT, (*dir_row(0, root_name, ROOT_ID), -1, None))
        self.parents: dict[Path, tuple[int, Path]] = {}  # resolved parents, while nothing moves
        self.by_raw: dict[bytes, tuple[int, Path]] = {}  # the same, by a member's parent as written
        self.links: set[tuple[int, bytes]] = set()  # where the symlinks are: what a file must not be written over

    def new_id(self) -> int:
        return next(self.ids)

    def row(self, parent: int, name: bytes) -> Row | None:
        found = self.con.execute(f"SELECT {FIELDS} FROM node WHERE parent = ? AND name = ?", (parent, name))
        return found.fetchone()  # type: ignore[no-any-return]

    def children(self, parent: int) -> list[Row]:
        return self.con.execute(f"SELECT {FIELDS} FROM node WHERE parent = ?", (parent,)).fetchall()

    def insert(self, row: Row, path: Path) -> None:
        self.con.execute(INSERT, row)
        if row[3] == DIRECTORY:
            self.dirs[row[2]] = Dir(row[0], row[1], path)
            self.subdirs[(row[0], row[1])] = row[2]
        elif row[3] == SYMLINK:
            self.links.add((row[0], row[1]))

    def moved(self) -> None:
        """A directory or a link went: a cached parent may be under it, or reached through it."""
        self.parents.clear()
        self.by_raw.clear()

    def remove(self, top: Row, path: Path) -> list[tuple[Row, Path]]:
        """`top` and every row below it, gone; the rows as they were, with their paths."""
        found, pending = [(top, path)], [(top, path)]
        while pending:
            row, where = pending.pop()
            if row[3] == DIRECTORY:
                below = [(child, (*where, child[1])) for child in self.children(row[2])]
                found += below
                pending += below
        self.con.execute("DELETE FROM node WHERE parent = ? AND name = ?", top[:2])
        gone_dirs = [row[2] for row, _ in found if row[3] == DIRECTORY]
        self.con.executemany("DELETE FROM node WHERE parent = ?", [(d,) for d in gone_dirs])
        for d in gone_dirs:
            gone = self.dirs.pop(d)
            del self.subdirs[(gone.parent, gone.name)]
        self.links.difference_update(row[:2] for row, _ in found if row[3] == SYMLINK)
        if gone_dirs or top[3] == SYMLINK:
            self.moved()
        return found

    def resolve(self, path: Path, create: bool) -> tuple[int, Path] | None:
        """The directory at `path` (links followed inside the root) and its real path; missing parents
        made (0755, root's) with `create`."""
        cached = self.parents.get(path)
        if cached is not None:
            return cached
        found = resolve(ROOT_ID, path, self._step(create))
        if found is not None:
            self.parents[path] = found
        return found

    def _step(self, create: bool) -> Callable[[int, bytes], int | bytes | None]:
        def step(here: int, name: bytes) -> int | bytes | None:
            child = self.subdirs.get((here, name))
            if child is not None:
                return child
            row = self.row(here, name)
            if row is None and create:
                child = self.new_id()
                self.insert((*dir_row(here, name, child), -1, None),
                            (*self.dirs[here].path, name))
                return child
            return row[11] if row is not None and row[3] == SYMLINK else None  # a link, or no directory there

        return step
