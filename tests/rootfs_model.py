"""The object-tree writer of an index: `merge.Merge`'s trees as rows, the model the row merges are held to.

What the index builder wrote before the row merges (`rootmerge`, `views`); the
tests compare those against it, tree for tree.
"""

from __future__ import annotations

import os
from collections import Counter, deque
from collections.abc import Iterator
from pathlib import Path

from imagefs.rootfs.build import FORMAT, ROOTFS, _create
from imagefs.rootfs.merge import Entry, Layer, Merge, implicit_dir, new_entry
from imagefs.rootfs.save import LayerRef
from imagefs.rootfs.views import files_tree, removed_tree

BATCH = 4096


def write(db: Path, refs: list[LayerRef], sources: list[str], merge: Merge, views: bool) -> int:
    con = _create(db)
    try:
        ids = Ids()
        trees = [] if views else [(ROOTFS, merge.root)]
        for n, layer in enumerate(merge.layers):
            trees += [(files_tree(n), layer.own), (removed_tree(n), removed_root(layer))] if views else []
        rows = 0
        for name, root in trees:
            for batch in batches(rows_of(name, root, ids)):
                con.executemany("INSERT INTO node VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)", batch)
                rows += len(batch)
        con.executemany("INSERT INTO xattr VALUES (?,?,?)", ids.xattrs)
        con.executemany("INSERT INTO layer VALUES (?,?,?,?,?,?,?,?,?)", [
            (n, ref.diff_id, ref.member, ref.compression, source, ref.size, ref.created_by, layer.wasted,
             len(layer.changes))
            for n, (ref, source, layer) in enumerate(zip(refs, sources, merge.layers, strict=True))])
        con.executemany("INSERT INTO meta VALUES (?,?)", [("format", FORMAT), ("rows", rows)])
        con.commit()
        return rows
    finally:
        con.close()


class Ids:
    """Row ids, and inode numbers: one per content, shared by the paths of a hardlink set."""

    def __init__(self) -> None:
        self.next_id = 1
        self.inos: dict[int, int] = {}
        self.xattrs: list[tuple[int, bytes, bytes]] = []

    def row(self) -> int:
        self.next_id += 1
        return self.next_id - 1

    def ino(self, entry: Entry) -> int:
        key = id(entry.inode)
        ino = self.inos.get(key)
        if ino is None:
            ino = self.inos[key] = len(self.inos) + 1
            self.xattrs += [(ino, k, v) for k, v in (entry.inode.xattrs or {}).items()]
        return ino


def rows_of(tree: bytes, root: Entry, ids: Ids) -> Iterator[tuple[object, ...]]:
    """A tree's rows, breadth first and by name, so rows arrive in the table's key order (appends, not
    inserts all over the B-tree); its root is the row (0, tree)."""
    links = Counter(id(e.inode) for _, e in root.walk() if e.children is None)
    pending = deque([(0, tree, root)])
    while pending:
        parent, name, entry = pending.popleft()
        row, i = ids.row(), entry.inode
        children = entry.children
        if children is None:
            nlink = links[id(i)]
        else:
            nlink = 2 + sum(c.children is not None for c in children.values())
            pending.extend((row, child_name, children[child_name]) for child_name in sorted(children))
        yield (parent, name, row, i.kind, i.mode, i.uid, i.gid, i.mtime, i.size, i.layer, i.offset, i.link,
               os.makedev(*i.rdev), ids.ino(entry), nlink, -1, None)


def removed_root(layer: Layer) -> Entry:
    """What a layer removed or replaced, as it was, at the paths it had; nothing below a file it removed (a
    path under it was removed from a directory the layer made there since)."""
    root = new_entry(implicit_dir(), -1)
    for path, old in sorted(layer.removed.items()):
        here: Entry | None = root
        for name in path[:-1]:
            if here is not None and here.children is not None:
                here = here.children.setdefault(name, new_entry(implicit_dir(), -1))
            else:
                here = None
        if here is not None and here.children is not None:
            here.children[path[-1]] = old
    return root


def batches(rows: Iterator[tuple[object, ...]]) -> Iterator[list[tuple[object, ...]]]:
    batch = []
    for row in rows:
        batch.append(row)
        if len(batch) == BATCH:
            yield batch
            batch = []
    if batch:
        yield batch
