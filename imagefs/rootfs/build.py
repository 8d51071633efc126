"""Index one image's save into SQLite: the merged rootfs, each layer's own files, what each layer removed.

Blocking, run once per image ID (the index of an image never changes). Rows are
kept WITHOUT ROWID under (parent, name): a lookup is one B-tree probe and a
listing one range scan, and no second index repeats the names. A file's row
holds where its bytes are: the layer, and the offset in that layer's
uncompressed tar, so any save of the image (another reference, another engine)
serves it once that layer's place in the save is known. Compressed layers are
inflated once into a side file beside the index; each layer's member walk is
kept there too, by diff ID (`walks`), so a layer shared between images, or
indexed again for its views, is walked once.

The rootfs is merged row by row onto the table (`rootmerge`: tens of bytes of
memory per entry, at a few hundred thousand entries per second, big layers
walked in a child: `walker`); the layer views, wanted less often, the same way
in a build of their own (`views`). With `follow=FD` the save is still arriving
(`follow`).

The daemon runs it as `python -m imagefs.rootfs.build FD DB SIDE_DIR [views] [follow=FD]`,
a process of its own: the memory a big image's merge takes goes back when it
ends, and the mount's event loop never waits for the GIL meanwhile.
"""

from __future__ import annotations

import contextlib
import gc
import os
import resource
import sqlite3
import sys
from collections.abc import Callable
from pathlib import Path
from typing import IO

from .arriving import Growing
from .follow import Stage, Staged
from .inflating import INFLATERS, regular, side_name
from .members import SPAN, BadArchive, Window
from .rootmerge import RootMerge
from .save import LayerRef, read_save
from .views import Views
from .walker import Walk
from .walks import Walks, part_file

FORMAT = 4  # 4: rows of a hardlink under a path whited out and rebuilt, merged right (3 could lose them)
ROOTFS = b"rootfs"

SCHEMA = """
CREATE TABLE meta(key TEXT PRIMARY KEY, value);
CREATE TABLE layer(n INTEGER PRIMARY KEY, diff_id TEXT, member TEXT, compression TEXT, source TEXT,
                   size INTEGER, created_by TEXT, wasted INTEGER, changed INTEGER);
CREATE TABLE node(parent INTEGER, name BLOB, id INTEGER, kind INTEGER, mode INTEGER, uid INTEGER, gid INTEGER,
                  mtime INTEGER, size INTEGER, layer INTEGER, offset INTEGER, link BLOB, rdev INTEGER, ino INTEGER,
                  nlink INTEGER, wrote INTEGER, letter TEXT, PRIMARY KEY(parent, name)) WITHOUT ROWID;
CREATE TABLE xattr(ino INTEGER, key BLOB, value BLOB, PRIMARY KEY(ino, key)) WITHOUT ROWID;
CREATE TABLE chg(layer INTEGER, path BLOB, letter TEXT);
CREATE TABLE dirpath(id INTEGER PRIMARY KEY, path BLOB);
"""


def build(save_fd: int, db: Path, side_dir: Path, views: bool = False, lengths: IO[bytes] | None = None,
          walks: Walks | None = None) -> int:
    """Index the save in `save_fd` into a new database at `db`: the merged rootfs, or with `views` each
    layer's own and removed files instead (half the rows, wanted less often: built when first asked for).
    With `lengths`, the save is still being written and the rootfs is indexed as it arrives (`follow`).
    Each layer's walk is kept in `side_dir`, or taken from there (`walks`: told which). The number of rows
    written."""
    with contextlib.closing(walks or Walks(side_dir)) as kept:
        if lengths is not None:
            return _build_following(Growing(save_fd, lengths), db, kept)
        area = Window(save_fd, SPAN)
        save = read_save(area)
        con = _create(db)
        try:
            with contextlib.closing(Ahead(area, save.layers, kept)) as ahead:
                if views:
                    merged = Views(con, SCHEMA)
                    sources = [_walk_layer(area, ref, merged, kept, ahead.walk(ref)) for ref in save.layers]
                    return _write_layers(con, save.layers, sources, merged.root, kept)
                return _rootfs(con, save.layers, kept,
                               lambda ref, root: _walk_layer(area, ref, root, kept, ahead.walk(ref)))
        finally:
            con.close()


def _build_following(area: Growing, db: Path, walks: Walks) -> int:
    stage = Stage(area, walks)
    try:
        stage.run()
        save = read_save(area)
        con = _create(db)
        try:
            return _rootfs(con, save.layers, walks, lambda ref, root: _apply_staged(
                area, ref, root, walks, stage.staged.get(ref.offset)))
        finally:
            con.close()
    finally:
        stage.close()


def _rootfs(con: sqlite3.Connection, layers: list[LayerRef], walks: Walks,
            merge_layer: Callable[[LayerRef, RootMerge], str]) -> int:
    """The merged rootfs of `layers`, each merged by `merge_layer` (which gives the side file it is in); the
    rows written."""
    root = RootMerge(con, ROOTFS)
    sources = [merge_layer(ref, root) for ref in layers]
    root.finish()
    return _write_layers(con, layers, sources, root, walks)


def _apply_staged(area: Window, ref: LayerRef, root: RootMerge, walks: Walks, staged: Staged | None) -> str:
    """A layer merged from its staged members (its walk then kept, its inflated tar named); one that was not
    staged (a compressed one too small to tell, one known by its name) or whose kept walk its name gave is not
    the manifest's layer, as when not following. The side file it is in, if any."""
    if staged is None or (ref.compression and staged.side is None) or staged.diff_id not in ("", ref.diff_id):
        return _walk_layer(area, ref, root, walks)
    if staged.keeper is not None:
        staged.keeper.keep(ref.diff_id)
        walks.told.append(f"layer {ref.diff_id}: walked as it arrived")
    root.apply(staged.walk, lambda: staged.whiteouts)
    return staged.name_side(walks.directory, ref.diff_id) if staged.side is not None else ""


def _walk_layer(area: Window, ref: LayerRef, merge: RootMerge | Views, walks: Walks, begun: Walk | None = None) -> str:
    """Merge the layer's tar walked as `begun`, or from its kept walk, or walked where it is and its walk kept;
    the side file it is in, if any."""
    source = _inflate(area, ref, walks.directory) if ref.compression else ""
    kept = walks.kept(ref.diff_id) if begun is None else None
    if kept is not None:
        merge.apply(kept.walk, lambda: kept.whiteouts)
    elif not source:
        _walk_into(merge, walks, ref.diff_id, begun or Walk(area, ref.offset, ref.offset + ref.size))
    else:
        # never through a link: the cache directory is the mounting user's, the daemon may be root
        with os.fdopen(os.open(walks.directory / source, os.O_RDONLY | os.O_NOFOLLOW), "rb") as side:
            side_area = Window(side.fileno(), SPAN)
            _walk_into(merge, walks, ref.diff_id, Walk(side_area, 0, len(side_area)))
    return source


def _walk_into(merge: RootMerge | Views, walks: Walks, diff_id: str, walk: Walk) -> None:
    """Merge the layer `walk` walks, its walk kept under `diff_id`."""
    try:
        merge.apply(walks.keeping(diff_id, walk.batches), walk.whiteouts)
    finally:
        walk.close()


class Ahead:
    """The walk of each layer a whole save's build will walk where it is (a plain tar with no kept walk) begun as
    the layer below it is merged: while that merge writes, the next layer is looked through for whiteouts and
    its first batches walked on the other core."""

    def __init__(self, area: Window, layers: list[LayerRef], walks: Walks) -> None:
        self.area, self.layers, self.walks = area, layers, walks
        self.at = 0  # the layer merged next
        self.begun: Walk | None = None  # its walk, begun
        self.made: list[Walk] = []  # every walk begun, closed at the end whatever became of it

    def walk(self, ref: LayerRef) -> Walk | None:
        """The walk begun for `ref`, the next layer merged, if one was; the walk of the one after it begun."""
        assert ref is self.layers[self.at], "layers merged in their order"
        mine, self.begun = self.begun, None
        self.at += 1
        after = self.layers[self.at] if self.at < len(self.layers) else None
        if after is not None and not after.compression and not self.walks.has(after.diff_id):
            self.begun = Walk(self.area, after.offset, after.offset + after.size, ahead=True)
            self.made.append(self.begun)
        return mine

    def close(self) -> None:
        """The walks no merge took (the build failed); closing one a merge took again does nothing."""
        for walk in self.made:
            walk.close()


def _inflate(area: Window, ref: LayerRef, side_dir: Path) -> str:
    """A compressed layer's tar, inflated once into a file named by its diff ID (shared by every image)."""
    name = side_name(ref.diff_id)
    if regular(side_dir / name):
        return name
    out = part_file(side_dir, f".{name}.")
    try:
        inflater = INFLATERS[ref.compression](area, ref.offset, ref.offset + ref.size, ref.member, out)
        try:
            inflater.finish()
        finally:
            inflater.close()
        os.rename(out.name, side_dir / name)
    finally:
        out.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(out.name)
    return name


def _create(db: Path) -> sqlite3.Connection:
    con = sqlite3.connect(db)
    con.executescript("PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF;" + SCHEMA)
    return con


def _write_layers(con: sqlite3.Connection, refs: list[LayerRef], sources: list[str], root: RootMerge,
                  walks: Walks) -> int:
    """The layer table, and beside it the blob records a later save followed names its layers by; the rows."""
    walks.remember_blobs(refs)
    con.executemany("INSERT INTO main.layer VALUES (?,?,?,?,?,?,?,?,?)", [
        (n, ref.diff_id, ref.member, ref.compression, source, ref.size, ref.created_by, root.wasted[n], root.changed[n])
        for n, (ref, source) in enumerate(zip(refs, sources, strict=True))])
    rows = con.execute("SELECT count(*) FROM main.node").fetchone()[0]
    con.executemany("INSERT INTO main.meta VALUES (?,?)", [("format", FORMAT), ("rows", rows)])
    con.commit()
    return int(rows)


def main(argv: list[str]) -> int:
    """`FD DB SIDE_DIR [views] [follow=FD]` (follow: the save's lengths come on that pipe, as in `follow`).
    Exit status 0 (the row count on stdout), 2 for a save that is not what it must be (why, on stderr)."""
    gc.disable()  # a few million small objects and no cycles: collections would only cost time
    follow = [int(arg.removeprefix("follow=")) for arg in argv[3:] if arg.startswith("follow=")]
    if follow:  # beside a running export: the engine and the daemon sending it come first, the index takes the rest
        os.nice(10)
    walks = Walks(Path(argv[2]))
    try:
        with os.fdopen(follow[0], "rb") if follow else contextlib.nullcontext() as lengths:
            print(build(int(argv[0]), Path(argv[1]), Path(argv[2]), views="views" in argv[3:], lengths=lengths,
                        walks=walks))
        print(*walks.told, f"peak RSS {_peak_kib()} KiB", sep="\n", file=sys.stderr)
    except BadArchive as exc:
        print(exc, file=sys.stderr)
        return 2
    return 0


def _peak_kib() -> int:
    """This process's peak RSS and its walkers': `ru_maxrss` of its own would count, after a vfork, the peak of
    the process that started it."""
    with open("/proc/self/status") as status:
        own = next((int(line.split()[1]) for line in status if line.startswith("VmHWM:")), 0)
    return max(own, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
