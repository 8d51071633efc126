"""The merged rootfs, layer by layer, onto the index's node table (`live`): `merge`'s rules, row by row.

The rules are `merge`'s (its docstring lists them; the tests hold this merge
to it), and so are the paths' letters (`changes`), the bytes each layer
wasted and the hardlink identities. What differs is where the tree lives: a
regular file costs a tuple in a batch; anything else (directories, hardlinks,
extended attributes, a parent not seen yet, a file over a directory or a
symlink) takes the slow path, which asks the table. A batch goes in by one
upsert per `live.ROWS_PER_INSERT` rows: a row that meets a file (or a fifo, a
device) already there replaces it in place, and a trigger keeps the row it
replaced (`over`); the bookkeeping `_add` does for a replaced row is done for
the batch's in a few statements, and in Python only where hardlinks, extended
attributes or the layer views need it. Nothing a batch holds can move a
directory, so no member is ever merged twice.

The layer views (`views`) run this merge too, told of each hardlink's inode
and each removal's rows (`on_link`, `made`, `on_gone`).

A path's letter lives in its row while the row does (`wrote`, `letter`); when
a later layer removes or rewrites the row, the letter moves to the `chg` table,
and `changes` reads both.
"""

from __future__ import annotations

import itertools
import os
import sqlite3
from collections import Counter
from collections.abc import Callable, Iterable, Iterator

from .live import FIELDS, ROOT_ID, Insert, Live, Path, Row
from .members import DIRECTORY, HARDLINK, REGULAR, SYMLINK, Raw, components
from .merge import OPAQUE, WHITEOUT

BATCH = 4096
ODD_NAMES = frozenset((b"", b".", b".."))
ATTRS = ", ".join(FIELDS.split(", ")[3:14])  # a row's inode: kind … ino
SET_ATTRS = ", ".join(f"{attr} = ?" for attr in ATTRS.split(", "))
Attrs = tuple[int, int, int, int, int, int, int, int, bytes, int, int]  # a row's inode: kind … ino (0: a new one)
FastRow = tuple[int, bytes, int, int, int, int, int, int, int, int]  # parent, name, id, mode … offset, ino
# A file over a file: the new row's values, its letter C over a lower layer's row, else the old row's
_UPSERT = (" ON CONFLICT(parent, name) DO UPDATE SET " + ", ".join(
    f"{field} = excluded.{field}" for field in FIELDS.split(", ")[2:-1])
    + ", letter = CASE WHEN node.wrote != excluded.wrote THEN 'C' ELSE coalesce(node.letter, 'A') END")
# `node` is whichever table the merge's other statements write: the TEMP copy `views` makes, if it made one
_OVER = f"""
    CREATE TEMP TABLE over({FIELDS});
    CREATE TEMP TRIGGER keep_over AFTER UPDATE OF id ON node
        BEGIN INSERT INTO over VALUES ({", ".join(f"old.{field}" for field in FIELDS.split(", "))}); END;
    CREATE TEMP TABLE dirname(id INTEGER PRIMARY KEY, path BLOB);"""
_OVER_PATH = "CAST(d.path || o.name AS BLOB)"
_OVER_JOIN = "over o JOIN dirname d ON d.id = o.parent"
# the letters of the lower rows the batch wrote over, moved to `chg`
_OVER_CHG = (f"INSERT INTO chg SELECT o.wrote, {_OVER_PATH}, o.letter FROM {_OVER_JOIN} "
             "WHERE o.rowid > ? AND o.wrote >= 0 AND o.wrote != ?")
# a lower row a file of this layer wrote over, by its path (the index made only when first asked)
_REPLACED = (f"SELECT {', '.join(f'o.{a}' for a in ATTRS.split(', '))} FROM {_OVER_JOIN} "
             "WHERE o.name = ? AND d.path = ? AND o.wrote != ?")


def _dirname(path: Path) -> bytes:
    """A directory's path as `dirname` holds it (each name and a slash): `_OVER_PATH` and `_REPLACED` join on it."""
    return b"".join(name + b"/" for name in path)


class RootMerge:
    def __init__(self, con: sqlite3.Connection, root_name: bytes) -> None:
        self.con = con
        self.tree = Live(con, root_name)
        self.n = -1
        self.wasted: list[int] = []
        self.changed: list[int] = []  # each layer's paths with a letter
        self.alive = 0  # rows the layer being merged wrote, still there
        self.pending: list[FastRow] = []  # fast-path rows of regular files
        self._insert: Insert | None = None  # the fast path's rows, made for each layer
        self.named: set[int] = set()  # directories whose paths `dirname` holds
        self.deleted: set[Path] = set()  # what this layer's whiteouts removed (D), not added again
        self.touched: dict[Path, str] = {}  # letters of this layer's rows that went again
        self.linked: dict[int, set[tuple[int, bytes]]] = {}  # hardlinked inodes: the keys of their rows
        self.with_xattrs: Counter[int] = Counter()  # inodes with extended attributes: their rows
        # what the layer views (`views`) are told: each hardlink's inode as the tree held it, each removal's rows
        self.on_link: Callable[[Raw, Attrs | None], None] | None = None
        self.on_gone: Callable[[list[tuple[Row, Path]]], None] | None = None
        self.made: dict[int, int] | None = None  # the layer's new inodes but files' and directories': their offsets
        # What this layer removed: `_remove`'s (each removal's top, and every path under it); and the lower rows
        # files of this layer were written over, kept in `over` for the layer (rows past `seen` are the batch's
        # to file; a file has nothing under it, and its path is one no `_remove` of this layer files, as a file
        # of this layer is there or was, so the two never hold one path)
        self.seen = 0
        con.executescript(f"CREATE TEMP TABLE removed(top BLOB, path BLOB, {ATTRS}, PRIMARY KEY(top, path)) "
                          "WITHOUT ROWID;" + _OVER)

    def apply(self, walk: Callable[[], Iterator[list[Raw]]], whiteouts: Callable[[], bool],
              merged: Callable[[list[Raw]], None] | None = None) -> None:
        """The next layer, bottom first: `walk()` gives its members in batches, twice if `whiteouts()` says it
        may hold whiteouts: those first. `merged(batch)`: told of each batch once its members are merged (but
        for rows still waiting to go in)."""
        self.n += 1
        self.wasted.append(0)
        self.alive = 0
        self.tree.moved()
        self.deleted, self.touched = set(), {}
        self.con.execute("DELETE FROM removed")
        self.con.execute("DELETE FROM over")
        self.con.execute("DROP INDEX IF EXISTS temp.over_name")
        self.seen = 0
        if self.n > 0 and whiteouts():  # the lowest layer's hide nothing
            for m in itertools.chain.from_iterable(walk()):
                path = components(m[0])
                if path and path[-1].startswith(WHITEOUT):
                    self._whiteout(path)
        row = f"(?,?,?,{REGULAR},?,?,?,?,?,{self.n},?,x'',0,?,1,{self.n},'A')"
        self._insert = Insert("INSERT INTO node VALUES ", row, _UPSERT)
        for batch in walk():
            self._merge(batch)
            if merged is not None:  # every hardlink of the batch was merged: links take the slow path at once
                merged(batch)
        self._flush()
        self._chg([(self.n, b"/".join(p), "D") for p in self.deleted])
        self._chg([(self.n, b"/".join(p), letter) for p, letter in self.touched.items()])
        self.changed.append(self.alive + len(self.deleted) + len(self.touched))

    def _merge(self, batch: list[Raw]) -> None:
        by_raw, pending, ids, lettered = self.tree.by_raw, self.pending, self.tree.ids, self._lettered
        subdirs, links, deleted, touched = self.tree.subdirs, self.tree.links, self.deleted, self.touched
        for m in batch:
            if m[1] == REGULAR and m[10] is None:  # the fast path, inline: most members take it
                parent, _, name = m[0].rpartition(b"/")
                found = by_raw.get(parent)
                if (found is not None and name not in ODD_NAMES and not name.startswith(WHITEOUT)
                        and (key := (found[0], name)) not in subdirs and key not in links
                        and not ((deleted or touched) and lettered((*found[1], name)))):
                    row_id = next(ids)
                    pending.append((*key, row_id, m[2], m[3], m[4], m[5], m[6], m[7], row_id))
                    if len(pending) >= BATCH:
                        self._flush()
                    continue
            self._flush()  # the slow path reads the table: the batch goes in first
            self._add(m)

    def _flush(self) -> None:
        """The batch in, each row over what is at its path (neither a directory nor a symlink) if anything is."""
        rows = self.pending
        if not rows:
            return
        assert self._insert is not None
        self._insert(self.con, rows)
        (top,) = self.con.execute("SELECT max(rowid) FROM over").fetchone()
        over = (top or 0) - self.seen
        self.alive += len(rows) - over
        rows.clear()
        if over:
            self._file_over(self.n)
            if self.linked or self.with_xattrs or self.on_gone is not None:
                self._count_over()
            self.seen = top

    def _file_over(self, n: int) -> None:
        """`_add`'s bookkeeping, in SQL, for the rows the batch wrote over (`over`, kept by the trigger): their
        letters (`chg`), the removals, the bytes wasted, and the lower layers' rows now rewritten."""
        con = self.con
        parents = [p for (p,) in con.execute("SELECT DISTINCT parent FROM over WHERE rowid > ?", (self.seen,))
                   if p not in self.named]
        con.executemany("INSERT INTO dirname VALUES (?,?)",
                        [(p, _dirname(self.tree.dirs[p].path)) for p in parents])
        self.named.update(parents)
        con.execute(_OVER_CHG, (self.seen, n))
        for layer, size, lower in con.execute(
                f"SELECT layer, sum(CASE WHEN kind = {REGULAR} THEN size ELSE 0 END), sum(wrote != ?) FROM over "
                "WHERE rowid > ? GROUP BY layer", (n, self.seen)):
            if layer >= 0:
                self.wasted[layer] += size
            self.alive += lower

    def _count_over(self) -> None:
        """The rest of `_add`'s bookkeeping for those rows, in Python: hardlinks and extended attributes
        counted, and the layer views told."""
        for old in self.con.execute(f"SELECT {FIELDS} FROM over WHERE rowid > ?", (self.seen,)).fetchall():
            self._count(old, -1)
            if self.on_gone is not None and old[15] != self.n:
                self.on_gone([(old, (*self.tree.dirs[old[0]].path, old[1]))])

    # --- the slow path --------------------------------------------------------------------

    def _add(self, m: Raw) -> None:
        path = components(m[0])
        if path is None or (path and path[-1].startswith(WHITEOUT)):
            return
        attrs = self._attrs(m)
        if self.on_link is not None and m[1] == HARDLINK:
            self.on_link(m, attrs)
        if attrs is None:
            return
        if not path:  # the root itself: only its attributes
            if attrs[0] == DIRECTORY:
                root = self.tree.row(0, self.tree.dirs[ROOT_ID].name)
                assert root is not None
                self._rewrite(root, attrs, m, -1, None)
            return
        found = self.tree.resolve(path[:-1], create=True)
        if found is None:
            return  # its parent is a file, or a loop of links: no engine could unpack it
        raw_parent, _, raw_name = m[0].rpartition(b"/")
        if raw_name == path[-1]:
            self.tree.by_raw[raw_parent] = found
        parent, name, resolved = found[0], path[-1], (*found[1], path[-1])
        old = self.tree.row(parent, name)
        letter = self._letter(resolved, old)
        if old is not None and old[3] == DIRECTORY and attrs[0] == DIRECTORY:
            self._moved_letter(old, resolved)
            self._rewrite(old, attrs, m, self.n, letter)
            return
        if old is not None:
            self._remove(old, resolved, own=old[15] == self.n)
            self.touched.pop(resolved, None)  # the new row holds the path's letter
        row_id = self.tree.new_id()
        ino = attrs[10] or self._new_inode(row_id, m)
        if self.made is not None and not attrs[10] and attrs[0] not in (REGULAR, DIRECTORY):
            self.made[ino] = m[7]
        row = (parent, name, row_id, *attrs[:10], ino, 2 if attrs[0] == DIRECTORY else 1, self.n, letter)
        self.tree.insert(row, resolved)  # type: ignore[arg-type]
        self.alive += 1
        self._count(row, 1)  # type: ignore[arg-type]

    def _attrs(self, m: Raw) -> Attrs | None:
        """A member's inode: its own, or for a hardlink its target's as the tree holds it now."""
        kind = m[1]
        if kind != HARDLINK:
            data = kind == REGULAR
            return (kind, m[2], m[3], m[4], m[5], m[6], self.n if data else -1, m[7] if data else 0,
                    m[8] if kind == SYMLINK else b"", os.makedev(*m[9]), 0)
        target = components(m[8])
        if not target:
            return None
        found = self.tree.resolve(target[:-1], create=False)
        row = self.tree.row(found[0], target[-1]) if found is not None else None
        if row is not None:
            attrs: Attrs | None = row[3:14]  # type: ignore[assignment]
        else:  # whited out by this layer, after the link in its tar: the link holds the old file
            attrs = self._removed(target)
        if attrs is None or attrs[0] == DIRECTORY:
            return None  # a link to nothing, or to a directory: no engine would unpack it
        self.linked.setdefault(attrs[10], {row[:2]} if row is not None else set())
        return attrs

    def _new_inode(self, ino: int, m: Raw) -> int:
        if m[10]:
            self.con.executemany("INSERT INTO xattr VALUES (?,?,?)", [(ino, k, v) for k, v in m[10].items()])
            self.with_xattrs[ino] += 0  # known to have some; its rows are counted as they come and go
        return ino

    def _rewrite(self, old: Row, attrs: Attrs, m: Raw, wrote: int, letter: str | None) -> None:
        """A directory's new attributes (a new inode), its id and children kept."""
        self._count(old, -1)
        self.alive += wrote == self.n != old[15]
        ino = self._new_inode(self.tree.new_id(), m)
        self.con.execute(f"UPDATE node SET {SET_ATTRS}, wrote = ?, letter = ? WHERE parent = ? AND name = ?",
                         (*attrs[:10], ino, wrote, letter, *old[:2]))
        if ino in self.with_xattrs:
            self.with_xattrs[ino] += 1

    def _lettered(self, path: Path) -> bool:
        """Has this layer a letter for `path` that no row holds?"""
        return path in self.deleted or path in self.touched

    def _letter(self, resolved: Path, old: Row | None) -> str:
        if resolved in self.deleted or (old is not None and old[15] != self.n):
            self.deleted.discard(resolved)
            self.touched.pop(resolved, None)
            return "C"  # also what a whiteout of this layer removed, then re-added
        if old is not None and old[16] is not None:
            return old[16]
        return self.touched.pop(resolved, "A")

    def _moved_letter(self, old: Row, path: Path) -> None:
        """A lower layer's letter for a path this layer rewrites: kept in `chg`."""
        if 0 <= old[15] != self.n:
            self._chg([(old[15], b"/".join(path), old[16])])

    def _remove(self, old: Row, path: Path, own: bool = False) -> None:
        """`own`: an earlier member of the same path in this layer, which nobody below ever saw."""
        gone = self.tree.remove(old, path)
        moved = []
        for row, where in gone:
            if row[9] >= 0 and row[3] == REGULAR:
                self.wasted[row[9]] += row[8]
            if row[15] == self.n:
                self.touched[where] = row[16]  # type: ignore[assignment]
                self.alive -= 1
            elif row[15] >= 0:
                moved.append((row[15], b"/".join(where), row[16]))
            self._count(row, -1)
        self._chg(moved)
        if not own and self.on_gone is not None:
            self.on_gone(gone)
        top = b"/".join(path)
        if not own and not self.con.execute("SELECT 1 FROM removed WHERE top = ?1 AND path = ?1", (top,)).fetchone():
            self.con.executemany("INSERT INTO removed VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                                 [(top, b"/".join(where), *row[3:14]) for row, where in gone])

    def _removed(self, path: Path) -> Attrs | None:
        """What this layer removed at `path`, as `merge` finds it: in the deepest of its removals (the first at
        each path, with all below it) at `path` or above it that holds it."""
        whole = b"/".join(path)
        self.con.execute("CREATE INDEX IF NOT EXISTS temp.over_name ON over(name)")
        deepest_first = [(_REPLACED, (path[-1], _dirname(path[:-1]), self.n))] + [
            (f"SELECT {ATTRS} FROM removed WHERE top = ? AND path = ?", (b"/".join(path[:depth]), whole))
            for depth in range(len(path), 0, -1)]
        for query, args in deepest_first:
            found = self.con.execute(query, args).fetchone()
            if found is not None:
                return found  # type: ignore[no-any-return]
        return None

    def _whiteout(self, path: Path) -> None:
        found = self.tree.resolve(path[:-1], create=False)
        if found is None:
            return  # a whiteout of something no lower layer has
        parent, where = found
        if path[-1] == OPAQUE:
            rows = self.tree.children(parent)
        else:
            row = self.tree.row(parent, path[-1][len(WHITEOUT) :])
            rows = [row] if row is not None else []
        for row in rows:
            self._remove(row, (*where, row[1]))
            self.deleted.add((*where, row[1]))

    def _count(self, row: Row, step: int) -> None:
        keys = self.linked.get(row[13])
        if keys is not None:
            (keys.add if step > 0 else keys.discard)(row[:2])
        if row[13] in self.with_xattrs:
            self.with_xattrs[row[13]] += step

    def _chg(self, rows: Iterable[tuple[int, bytes, str | None]]) -> None:
        self.con.executemany("INSERT INTO chg VALUES (?,?,?)", rows)

    # --- the end --------------------------------------------------------------------------

    def finish(self) -> None:
        """Link counts and the inodes' extended attributes set right; where each directory is (`changes`)."""
        subdirs = Counter(d.parent for d in self.tree.dirs.values())
        self.con.executemany("UPDATE node SET nlink = ? WHERE parent = ? AND name = ?",
                             [(2 + subdirs[i], d.parent, d.name) for i, d in self.tree.dirs.items()])
        self.con.executemany("UPDATE node SET nlink = ? WHERE parent = ? AND name = ?",
                             [(len(keys), *key) for keys in self.linked.values() for key in keys])
        self.con.executemany("DELETE FROM xattr WHERE ino = ?", [(i,) for i, n in self.with_xattrs.items() if not n])
        self.con.executemany("INSERT INTO dirpath VALUES (?,?)",
                             [(i, b"".join(name + b"/" for name in d.path)) for i, d in self.tree.dirs.items()])
