"""The layer views, row by row: each layer's own files (`files/<n>`) and what it removed (`removed/<n>`).

The rules are `merge`'s (`Merge(views=True)` is the model the tests hold this
to). A layer's own files need nothing of the layers below but for a hardlink,
whose inode is its target's as the merged tree holds it then; what a layer
removed is the merged tree's, as it was. So the image is merged as for
`rootfs/` (`rootmerge`), onto TEMP tables that shadow the index's own (SQLite
reads an unqualified name from the temp schema first) and spill to a temporary
file, never to the index; the merge tells each hardlink's inode and each
removal's rows (`RootMerge.on_link`, `on_gone`), and the views are written
into the index's `main` tables beside it. Only directories are in memory.

Inode numbers keep a view's hardlinks together and apart from every other
view's: a layer's regular file is numbered by where its data is in the layer's
tar (a hardlink to it finds that number from the merged inode's offset), what
a layer removed by the merged tree's number, anything else from the row ids.
"""

from __future__ import annotations

import itertools
import os
import sqlite3
from collections import Counter
from collections.abc import Callable, Iterator

from .live import Insert, Path, Row, dir_row
from .members import BLOCK, DIRECTORY, HARDLINK, REGULAR, SYMLINK, Raw, components
from .merge import WHITEOUT
from .rootmerge import ATTRS, BATCH, ODD_NAMES, SET_ATTRS, Attrs, RootMerge

OWN_INOS = 1 << 40  # layer n's regular files: (n + 1) * OWN_INOS + their data's block in the layer's tar
REMOVED_INOS = 1 << 62  # what a layer removed: this + the merged tree's number
_SHADOWED = ("node", "xattr", "chg")  # the tables `rootmerge` writes
_INSERT = "INSERT OR REPLACE INTO main.node VALUES "
_ROW = "(?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,-1,NULL)"
Inode = tuple[int, int, int, int, int, int, int, int, bytes, int]  # kind … rdev
ViewRow = tuple[int, bytes, int, int, int, int, int, int, int, int, int, bytes, int, int, int]  # parent … nlink


def files_tree(n: int) -> bytes:
    return b"files/%d" % n


def removed_tree(n: int) -> bytes:
    return b"removed/%d" % n


class Views:
    def __init__(self, con: sqlite3.Connection, schema: str) -> None:
        """`schema`: the index's, whose tables the merge gets as TEMP copies."""
        self.con = con
        con.execute("PRAGMA temp.cache_size = -16384")  # 16 MiB of the merge's pages; the rest in its file
        for statement in schema.split(";"):
            if any(statement.strip().startswith(f"CREATE TABLE {name}(") for name in _SHADOWED):
                con.execute(statement.replace("CREATE TABLE", "CREATE TEMP TABLE", 1))
        self.root = RootMerge(con, b"merged")
        self.ids = itertools.count(2)
        self.links: dict[int, Attrs | None] = {}  # each hardlink of the layer (by its offset): its inode, or none
        self.made: dict[int, int] = {}
        self.root.made = self.made
        self.root.on_link = lambda m, attrs: self.links.__setitem__(m[7], attrs)
        self.root.on_gone = self._record
        self.removals = itertools.count()
        self.rows = Insert(_INSERT, _ROW)  # a view's rows of any kind
        con.execute(f"CREATE TEMP TABLE gone(key BLOB, seq INTEGER, top INTEGER, {ATTRS}, PRIMARY KEY(key, seq)) "
                    "WITHOUT ROWID")

    def apply(self, walk: Callable[[], Iterator[list[Raw]]], whiteouts: Callable[[], bool]) -> None:
        n = self.root.n + 1
        own = Own(self, n)
        self.links.clear()
        self.made.clear()
        self.con.execute("DELETE FROM gone")
        self.root.apply(walk, whiteouts, own.take)
        own.finish()
        Removed(self, n).write()

    def _record(self, gone: list[tuple[Row, Path]]) -> None:
        """One removal's rows (its top first), keyed so that a sort by key is a sort by path."""
        seq = next(self.removals)
        self.con.executemany("INSERT INTO gone VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                             [(b"\0".join(path), seq, i == 0, *row[3:14]) for i, (row, path) in enumerate(gone)])

    def row_id(self) -> int:
        return next(self.ids)

    def copy_xattrs(self, merged_ino: int, ino: int) -> None:
        if merged_ino in self.root.with_xattrs:
            self.con.execute("INSERT OR IGNORE INTO main.xattr SELECT ?, key, value FROM temp.xattr WHERE ino = ?",
                             (ino, merged_ino))

    def set_nlinks(self, lo: int, hi: int, dirs: dict[int, tuple[int, bytes]], linked: set[int]) -> None:
        """A tree's link counts: its directories' (`dirs`: id -> parent, name), and its hardlinked inodes'
        rows (its rows are those under the ids from `lo` to `hi`: one range of the key)."""
        subdirs = Counter(parent for parent, _ in dirs.values())
        self.con.executemany("UPDATE main.node SET nlink = ? WHERE parent = ? AND name = ?",
                             [(2 + subdirs[i], *key) for i, key in dirs.items()])
        if not linked:
            return
        rows = [(p, name, ino) for p, name, ino in self.con.execute(
            "SELECT parent, name, ino FROM main.node WHERE parent BETWEEN ? AND ?", (lo, hi)) if ino in linked]
        count = Counter(ino for _, _, ino in rows)
        self.con.executemany("UPDATE main.node SET nlink = ? WHERE parent = ? AND name = ?",
                             [(count[ino], p, name) for p, name, ino in rows])


class Own:
    """One layer's own tree: its members at their paths as written (no link followed), the last one of a path
    winning; a regular file under a directory already made is a row in a batch (the fast path)."""

    def __init__(self, views: Views, n: int) -> None:
        self.views, self.n, self.con = views, n, views.con
        self.top = views.row_id()
        self.dirs: dict[int, tuple[int, bytes]] = {self.top: (0, files_tree(n))}
        self.subdirs: dict[tuple[int, bytes], int] = {}
        self.by_raw: dict[bytes, int] = {}  # a member's parent as written -> its directory
        self.pending: list[tuple[int, bytes, int, int, int, int, int, int, int, int]] = []  # regular files
        self.files = Insert(_INSERT, f"(?,?,?,{REGULAR},?,?,?,?,?,{n},?,x'',0,?,1,-1,NULL)")
        self.linked: set[int] = set()
        self.lower: dict[int, int] = {}  # a lower layer's inode (the merged tree's number) -> this tree's
        self.views.rows(self.con, [dir_row(0, files_tree(n), self.top)])

    def take(self, batch: list[Raw]) -> None:
        base, pending, by_raw, subdirs = (self.n + 1) * OWN_INOS, self.pending, self.by_raw, self.subdirs
        ids = self.views.ids
        for m in batch:
            if m[1] == REGULAR and m[10] is None:
                parent, _, name = m[0].rpartition(b"/")
                found = by_raw.get(parent)
                if (found is not None and name not in ODD_NAMES and not name.startswith(WHITEOUT)
                        and (found, name) not in subdirs):
                    pending.append((found, name, next(ids), m[2], m[3], m[4], m[5], m[6], m[7], base + m[7] // BLOCK))
                    continue
            self._flush()
            self._add(m)
        if len(pending) >= BATCH:
            self._flush()

    def _flush(self) -> None:
        """The regular files waiting, in (their constant fields are the statement's)."""
        if self.pending:
            self.files(self.con, self.pending)
            self.pending.clear()

    def _add(self, m: Raw) -> None:
        path = components(m[0])
        if path is None or (path and path[-1].startswith(WHITEOUT)):
            return
        found = self._inode(m)
        if found is None:
            return
        attrs, ino = found
        if not path:  # the root itself: only its attributes
            self.con.execute(f"UPDATE main.node SET {SET_ATTRS} WHERE parent = 0 AND name = ?",
                             (*attrs, ino, files_tree(self.n)))
            return
        parent = self._dir(path[:-1])
        raw_parent, _, raw_name = m[0].rpartition(b"/")
        if raw_name == path[-1]:
            self.by_raw[raw_parent] = parent
        key = (parent, path[-1])
        old = self.subdirs.get(key)
        if old is not None and attrs[0] == DIRECTORY:
            self.con.execute(f"UPDATE main.node SET {SET_ATTRS} WHERE parent = ? AND name = ?", (*attrs, ino, *key))
            return
        if old is not None:
            self._drop(old)
        row_id = ino if attrs[0] == DIRECTORY else self.views.row_id()
        self.views.rows(self.con, [(*key, row_id, *attrs, ino, 1)])  # type: ignore[list-item]
        if attrs[0] == DIRECTORY:
            self.dirs[row_id] = key
            self.subdirs[key] = row_id

    def _inode(self, m: Raw) -> tuple[Inode, int] | None:
        """A member's attributes (kind … rdev) and inode number in this tree: for a hardlink, its target's."""
        base = (self.n + 1) * OWN_INOS
        if m[1] != HARDLINK:
            data = m[1] == REGULAR
            ino = self.views.row_id() if m[1] == DIRECTORY else base + m[7] // BLOCK
            if m[10]:
                self.con.executemany("INSERT OR IGNORE INTO main.xattr VALUES (?,?,?)",
                                     [(ino, k, v) for k, v in m[10].items()])
            return (m[1], m[2], m[3], m[4], m[5], m[6], self.n if data else -1, m[7] if data else 0,
                    m[8] if m[1] == SYMLINK else b"", os.makedev(*m[9])), ino
        attrs = self.views.links.get(m[7])
        if attrs is None:
            return None
        made = self.views.made.get(attrs[10])  # a link, a fifo … of this layer: where its member is
        if attrs[0] == REGULAR and attrs[6] == self.n:  # a file of this layer: its number is its data's place
            ino = base + attrs[7] // BLOCK
        elif made is not None:
            ino = base + made // BLOCK
        else:
            ino = self.lower.get(attrs[10], 0)
            if not ino:
                ino = self.lower[attrs[10]] = self.views.row_id()
                self.views.copy_xattrs(attrs[10], ino)
        self.linked.add(ino)
        return attrs[:10], ino  # type: ignore[return-value]

    def _dir(self, path: Path) -> int:
        """The directory at `path`, made (0755, root's) where missing or where something else is."""
        here = self.top
        for name in path:
            child = self.subdirs.get((here, name))
            if child is None:
                child = self.views.row_id()
                self.views.rows(self.con, [dir_row(here, name, child)])
                self.subdirs[(here, name)] = child
                self.dirs[child] = (here, name)
            here = child
        return here

    def _drop(self, top: int) -> None:
        """A directory's rows below it gone (its own row is replaced)."""
        below, pending = [top], [top]
        children: dict[int, list[int]] = {}
        for d, (parent, _) in self.dirs.items():
            children.setdefault(parent, []).append(d)
        while pending:
            found = children.get(pending.pop(), [])
            below += found
            pending += found
        self.con.executemany("DELETE FROM main.node WHERE parent = ?", [(d,) for d in below])
        for d in below:
            del self.subdirs[self.dirs.pop(d)]
        self.by_raw.clear()

    def finish(self) -> None:
        self._flush()
        self.views.set_nlinks(self.top, self.views.row_id(), self.dirs, self.linked)


class Removed:
    """What layer n removed or replaced, as it was, at the paths it had: each removal's rows, a later one
    placed over an earlier at the same path or below it, as the rules' model places them (`removed_root`
    in tests/rootfs_model.py)."""

    def __init__(self, views: Views, n: int) -> None:
        self.views, self.n, self.con = views, n, views.con

    def write(self) -> None:
        views = self.views
        top = lo = views.row_id()
        dirs = {top: (0, removed_tree(self.n))}
        rows: list[ViewRow] = [dir_row(0, removed_tree(self.n), top)]
        linked: set[int] = set()
        # the chain of entries above the path at hand: its names, row id, the removal its children are of (None:
        # none, a directory made; -1: a file, which has none)
        stack: list[tuple[Path, int, int | None]] = [((), top, None)]
        found = self.con.execute(f"SELECT key, seq, top, {ATTRS} FROM gone ORDER BY key, seq")
        for key, group in itertools.groupby(found, key=lambda r: r[0]):
            path, group_rows = tuple(key.split(b"\0")), list(group)
            while len(stack[-1][0]) >= len(path) or stack[-1][0] != path[: len(stack[-1][0])]:
                stack.pop()
            if stack[-1][2] == -1:
                continue  # under a file: `merge` places nothing there
            row = next((r for r in group_rows if r[2]), None)
            if row is not None:
                while len(stack[-1][0]) < len(path) - 1:  # the parents of a removal: made where missing
                    names, parent, _ = stack[-1]
                    made = views.row_id()
                    rows.append(dir_row(parent, path[len(names)], made))
                    dirs[made] = (parent, path[len(names)])
                    stack.append((path[: len(names) + 1], made, None))
            elif len(stack[-1][0]) == len(path) - 1 and stack[-1][2] is not None:
                row = next((r for r in group_rows if r[1] == stack[-1][2]), None)
            if row is None:
                continue
            row_id, ino = views.row_id(), REMOVED_INOS + row[13]
            rows.append((stack[-1][1], path[-1], row_id, *row[3:13], ino, 1))
            views.copy_xattrs(row[13], ino)
            if row[3] == DIRECTORY:
                dirs[row_id] = (stack[-1][1], path[-1])
            elif row[13] in views.root.linked:
                linked.add(ino)
            stack.append((path, row_id, row[1] if row[3] == DIRECTORY else -1))
            if len(rows) >= BATCH:
                views.rows(self.con, rows)
                rows = []
        views.rows(self.con, rows)
        views.set_nlinks(lo, views.row_id(), dirs, linked)
