"""The rootfs index from tar bytes made here: save layouts, whiteout rules, hardlinks, xattrs, layer views."""

from __future__ import annotations

import contextlib
import gzip
import io
import os
import tarfile
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as stg
from rootfs_tars import M, compressed, layer, save

from imagefs.rootfs import live, rootmerge, walks
from imagefs.rootfs import views as views_module
from imagefs.rootfs.build import ROOTFS, build
from imagefs.rootfs.index import Index, Row
from imagefs.rootfs.members import BadArchive, members
from imagefs.rootfs.save import ZSTD
from imagefs.rootfs.trim import INDEX, trim
from imagefs.rootfs.views import files_tree, removed_tree

Tree = dict[str, Row]


def index_of(data: bytes, where: Path, views: bool = False) -> Index:
    spool = where / "save.tar"
    spool.write_bytes(data)
    db = where / "index.sqlite"
    db.unlink(missing_ok=True)
    fd = os.open(spool, os.O_RDONLY)
    try:
        build(fd, db, where, views)
    finally:
        os.close(fd)
    return Index(db)


def walk(ix: Index, row: Row, path: str = "") -> Iterator[tuple[str, Row]]:
    for child in ix.children(row.id):
        sub = f"{path}/{os.fsdecode(child.name)}"
        yield sub, child
        if child.kind == ord("5"):
            yield from walk(ix, child, sub)


def rootfs(layers: list[bytes], tmp_path: Path, **kw: object) -> tuple[Tree, Index, bytes]:
    data = save(layers, **kw)  # type: ignore[arg-type]
    ix = index_of(data, tmp_path)
    return dict(walk(ix, ix.tree(ROOTFS))), ix, data


def views(layers: list[bytes], tmp_path: Path) -> tuple[Index, bytes]:
    data = save(layers)
    return index_of(data, tmp_path, views=True), data


def content(ix: Index, data: bytes, row: Row, where: Path | None = None) -> bytes:
    """A file's bytes where its row says they are: the layer's member in the save, or its side file."""
    info = ix.layers[row.layer]
    if info.source:
        assert where is not None
        return (where / info.source).read_bytes()[row.offset : row.offset + row.size]
    start = _member_offset(data, info.member)
    return data[start + row.offset : start + row.offset + row.size]


def _member_offset(data: bytes, name: str) -> int:
    from imagefs.rootfs.save import read_save

    return next(ref.offset for ref in read_save(data).layers if ref.member == name)


@pytest.mark.parametrize(("layout", "compress"), [("legacy", ""), ("oci", ""), ("podman", ""), ("oci", "gzip"),
                                                  ("oci", "zstd")])
def test_every_layout_reads_the_same_tree(layout: str, compress: str, tmp_path: Path) -> None:
    layers = [layer(M("etc", "dir", mode=0o755), M("etc/passwd", data=b"root:x:0:0\n")),
              layer(M("etc", "dir", mode=0o750), M("etc/group", data=b"root:x:0:\n", uid=5, gid=6))]
    tree, ix, data = rootfs(layers, tmp_path, layout=layout, compress=compress)
    assert sorted(tree) == ["/etc", "/etc/group", "/etc/passwd"]
    assert tree["/etc"].mode == 0o750
    assert (tree["/etc/group"].uid, tree["/etc/group"].gid) == (5, 6)
    assert content(ix, data, tree["/etc/passwd"], tmp_path) == b"root:x:0:0\n"
    assert [info.created_by for info in ix.layers] == ["RUN step 0", "RUN step 1"]
    assert [info.compression for info in ix.layers] == [compress] * 2


def test_whiteouts_hide_lower_layers_only(tmp_path: Path) -> None:
    tree, ix, _ = rootfs([
        layer(M("d", "dir"), M("d/old", data=b"1"), M("c", data=b"lower"), M("gone", data=b"g")),
        # the opaque marker listed after the dir's new child; a whiteout after the re-add of its name
        layer(M("d", "dir"), M("d/new", data=b"2"), M("d/.wh..wh..opq"), M("c", data=b"upper"), M(".wh.c"),
              M(".wh.gone"), M(".wh.never-there")),
    ], tmp_path)
    assert sorted(tree) == ["/c", "/d", "/d/new"]
    assert tree["/c"].size == 5
    assert ix.changes(1).decode().splitlines() == ["C /c", "C /d", "A /d/new", "D /d/old", "D /gone"]


def test_a_file_replaces_a_directory_and_a_directory_a_file(tmp_path: Path) -> None:
    tree, _, _ = rootfs([
        layer(M("x", "dir"), M("x/inner", data=b"1"), M("y", data=b"file")),
        layer(M("x", data=b"now a file"), M("y", "dir"), M("y/inner", data=b"2")),
    ], tmp_path)
    assert sorted(tree) == ["/x", "/y", "/y/inner"]
    assert tree["/x"].kind == ord("0") and tree["/y"].kind == ord("5")


def test_parents_through_symlinks_and_implicit_parents(tmp_path: Path) -> None:
    deep = "p/" + "q" * 100 + "/" + "r" * 100 + "/leaf"
    tree, _, _ = rootfs([
        layer(M("usr", "dir"), M("usr/lib", "dir"), M("lib", "symlink", b"usr/lib"), M("abs", "symlink", b"/usr")),
        layer(M("lib/two", data=b"2"), M("abs/three", data=b"3"), M(deep, data=b"d"), M("../escape", data=b"e")),
    ], tmp_path)
    assert {"/usr/lib/two", "/usr/three", "/" + deep, "/p"} <= set(tree)
    assert "/lib/two" not in tree and not any("escape" in p for p in tree)
    assert tree["/p"].mode == 0o755 and tree["/lib"].link == b"usr/lib"


def test_hardlinks_share_an_inode_and_keep_old_bytes(tmp_path: Path) -> None:
    tree, ix, data = rootfs([
        layer(M("a", data=b"first"), M("b", "hardlink", b"a"), M("c", "hardlink", b"a")),
        layer(M("link-to-lower", "hardlink", b"a"), M(".wh.a"), M("b", data=b"new b")),
    ], tmp_path)
    assert tree["/c"].ino == tree["/link-to-lower"].ino != tree["/b"].ino
    assert tree["/c"].nlink == 2 and tree["/b"].nlink == 1
    assert content(ix, data, tree["/link-to-lower"]) == b"first"
    assert content(ix, data, tree["/b"]) == b"new b"


def test_attributes_devices_fifos_and_xattrs(tmp_path: Path) -> None:
    tree, ix, _ = rootfs([layer(
        M("ping", data=b"x", mode=0o4755, uid=1000, gid=1001, mtime=981173106,
          xattrs={"security.capability": "\x01\x00\x00\x02", "user.demo": "ü"}),
        M("fifo", "fifo"), M("null", "char"), M("s", "symlink", b"/etc/passwd", mode=0o644),
    )], tmp_path)
    ping = tree["/ping"]
    assert (ping.mode, ping.uid, ping.gid, ping.mtime) == (0o4755, 1000, 1001, 981173106)
    assert ix.xattrs(ping.ino) == {b"security.capability": b"\x01\x00\x00\x02", b"user.demo": "ü".encode()}
    assert tree["/fifo"].kind == ord("6") and tree["/null"].rdev == os.makedev(1, 3)
    assert tree["/s"].link == b"/etc/passwd"


def test_layer_views_hold_own_files_and_what_was_removed(tmp_path: Path) -> None:
    ix, data = views([
        layer(M("d", "dir"), M("d/f", data=b"old bytes"), M("keep", data=b"k")),
        layer(M(".wh.d"), M("new", data=b"n")),
    ], tmp_path)
    own = dict(walk(ix, ix.tree(files_tree(1))))
    removed = dict(walk(ix, ix.tree(removed_tree(1))))
    assert sorted(own) == ["/new"] and sorted(removed) == ["/d", "/d/f"]
    assert content(ix, data, removed["/d/f"]) == b"old bytes"
    assert ix.layers[0].wasted == len(b"old bytes") and ix.layers[1].wasted == 0


def test_a_cut_or_odd_save_is_an_error(tmp_path: Path) -> None:
    data = save([layer(M("a", data=b"1"))])
    with pytest.raises(BadArchive):
        index_of(data[:1024], tmp_path)
    with pytest.raises(BadArchive):
        index_of(save([gzip.compress(layer(M("a")))[:-20]]), tmp_path)  # a gzip layer cut short
    with pytest.raises(BadArchive):
        index_of(save([b"\x1f\x8b" + b"not really gzip" * 40]), tmp_path)
    with pytest.raises(BadArchive, match="zstd stream"):
        index_of(save([compressed(layer(M("a", data=os.urandom(5000))), "zstd")[:-20]]), tmp_path)
    with pytest.raises(BadArchive, match="zstd stream"):
        index_of(save([ZSTD + b"not really zstd" * 40]), tmp_path)
    assert not list(tmp_path.glob(".*.part"))  # no half-inflated layer left behind


def test_zstd_frames_and_skippable_frames_make_one_layer(tmp_path: Path) -> None:
    raw = layer(M("a", data=b"first"), M("b", data=b"second" * 1000))
    tree, ix, data = rootfs([raw], tmp_path, layout="oci", compress="zstd:chunked")
    assert content(ix, data, tree["/b"], tmp_path) == b"second" * 1000
    assert ix.layers[0].compression == "zstd"


def test_no_zstd_command_is_an_error_saying_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = save([layer(M("a"))], compress="zstd")
    monkeypatch.setenv("PATH", str(tmp_path / "nothing-here"))
    with pytest.raises(BadArchive, match="no zstd command"):
        index_of(data, tmp_path)


# --- the merge against a model: paths of a few names, files, directories, whiteouts --------------

NAMES = ["a", "b", "c"]
paths = stg.lists(stg.sampled_from(NAMES), min_size=1, max_size=3).map("/".join)
layer_members = stg.lists(stg.tuples(stg.sampled_from(["file", "dir", "wh", "opq"]), paths), max_size=8)


def model(layers: list[list[tuple[str, str]]]) -> dict[str, str]:
    """OCI layer rules, plainly: whiteouts first (lower layers only), then members in order."""
    tree: dict[str, str] = {}

    def drop(path: str) -> None:
        for p in [p for p in tree if p == path or p.startswith(path + "/")]:
            del tree[p]

    for members_ in layers:
        for kind, path in members_:
            parent, _, name = path.rpartition("/")
            if kind == "wh":
                drop(f"{parent}/{name}".lstrip("/"))
            elif kind == "opq" and tree.get(path) == "dir":
                for p in [p for p in tree if p.startswith(path + "/")]:
                    del tree[p]
        for kind, path in members_:
            parts = path.split("/")
            if kind in ("wh", "opq") or any(tree.get("/".join(parts[:i])) == "file" for i in range(1, len(parts))):
                continue
            for i in range(1, len(parts)):
                tree.setdefault("/".join(parts[:i]), "dir")
            if not (kind == "dir" and tree.get(path) == "dir"):
                drop(path)
                tree[path] = kind
    return tree


def as_member(kind: str, path: str) -> M:
    parent, _, name = path.rpartition("/")
    if kind == "wh":
        return M(f"{parent}/.wh.{name}".lstrip("/"))
    if kind == "opq":
        return M(f"{path}/.wh..wh..opq")
    return M(path, kind, b"x" if kind == "file" else b"")


@settings(max_examples=150, deadline=None)
@given(stg.lists(layer_members, min_size=1, max_size=4))
def test_merge_matches_the_model(layers: list[list[tuple[str, str]]]) -> None:
    with tempfile.TemporaryDirectory() as where:
        ix = index_of(save([layer(*(as_member(k, p) for k, p in ms)) for ms in layers]), Path(where))
        got = {p.lstrip("/"): "dir" if r.kind == ord("5") else "file" for p, r in walk(ix, ix.tree(ROOTFS))}
        ix.close()
    assert got == model(layers)


def test_trim_removes_least_recent_indexes_and_the_layers_only_they_read(tmp_path: Path) -> None:
    made = []
    for i, compress in enumerate([True, True, False]):
        data = save([layer(M(f"f{i}", data=b"x" * 3000))], compress=compress, created_by=["same"] if i < 2 else None)
        ix = index_of(data, tmp_path)
        ix.close()
        name = f"image{i}{INDEX}"
        (tmp_path / "index.sqlite").rename(tmp_path / name)
        os.utime(tmp_path / name, (1000 + i, 1000 + i))
        made.append(name)
    (tmp_path / "save.tar").unlink()
    side = {p.name for p in tmp_path.glob("*.tar")}
    assert len(side) == 2  # the two gzip layers, inflated (their bytes differ by file name)
    total = sum(p.stat().st_size for p in tmp_path.iterdir())
    assert trim(tmp_path, total, set()) == []
    kept = {p.name for p in tmp_path.glob(f"*{walks.SUFFIX}")}
    records = {p.name for p in tmp_path.glob(f"*{walks.BLOB}")}
    assert len(kept) == len(records) == 3  # each layer's walk, and the diff ID its v1 ID names
    removed = trim(tmp_path, total - 1, {made[0]})  # image0 is open here: image1 goes, its layer, walk and record
    gone = set(removed[1:])
    assert removed[0] == made[1] and len(removed) == 4 and len(gone & side) == len(gone & kept) == len(gone & records)
    assert (gone & side).pop().removesuffix(".tar") == (gone & kept).pop().removesuffix(walks.SUFFIX)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted({made[0], made[2]} | (side | kept | records) - gone)


# --- the member walk against tarfile: long and non-ASCII names, every format ---------------------

names = stg.lists(stg.text(stg.characters(codec="utf-8", exclude_characters="/\0"), min_size=1, max_size=40)
                  .filter(lambda n: n not in (".", "..")), min_size=1, max_size=6).map("/".join)


@settings(max_examples=100, deadline=None)
@given(stg.lists(stg.tuples(names, stg.binary(max_size=700), stg.sampled_from(["file", "dir", "symlink"])),
                 min_size=1, max_size=6),
       stg.sampled_from([tarfile.PAX_FORMAT, tarfile.GNU_FORMAT]))
def test_the_member_walk_agrees_with_tarfile(entries: list[tuple[str, bytes, str]], fmt: int) -> None:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=fmt) as tar:
        for name, data, kind in entries:
            info = tarfile.TarInfo(name)
            info.type = {"file": tarfile.REGTYPE, "dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE}[kind]
            info.linkname = name[::-1] if kind == "symlink" else ""
            info.size = len(data) if kind == "file" else 0
            tar.addfile(info, io.BytesIO(data if kind == "file" else b""))
    raw = out.getvalue()
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        expected = [(m.name.encode(), m.size, m.offset_data, m.linkname.encode()) for m in tar]
    got = [(m.path.rstrip(b"/"), m.size, m.offset, m.link) for m in members(raw)]
    assert got == expected


# --- the row-by-row merge (the rootfs index) against the object tree (`merge`, the layer views' model) -----

kinds = stg.sampled_from(["file", "dir", "wh", "opq", "symlink", "abs-symlink", "hardlink", "fifo", "xattr"])
rich_layer = stg.lists(stg.tuples(kinds, paths, paths, stg.integers(0, 3)), max_size=10)
# Mostly files, a few names deep: a batch's files over files, over links and through links to directories
dense_kinds = stg.sampled_from(["file"] * 5 + ["dir", "symlink", "hardlink", "wh"])
dense_paths = stg.sampled_from(["a/a", "a/b", "a/c", "a/b/a", "a/b/b", "c", "c/a"])
dense_layer = stg.lists(stg.tuples(dense_kinds, dense_paths, stg.sampled_from(["c", "a/b", "a/a"]),
                                   stg.integers(0, 3)), max_size=12)
any_layers = stg.lists(rich_layer, min_size=1, max_size=4) | stg.lists(dense_layer, min_size=2, max_size=3)


def rich_member(kind: str, path: str, other: str, n: int) -> M:
    if kind in ("wh", "opq"):
        return as_member(kind, path)
    if kind in ("symlink", "abs-symlink"):
        return M(path, "symlink", (b"/" if kind == "abs-symlink" else b"") + other.encode())
    if kind == "hardlink":
        return M(path, "hardlink", other.encode())
    if kind == "xattr":
        return M(path, data=b"x" * n, xattrs={"user.n": str(n)})
    return M(path, kind, b"y" * n if kind == "file" else b"", mode=0o600 + n, uid=n, mtime=n)


def model_index(data: bytes, where: Path, views: bool = False) -> tuple[Index, list[bytes]]:
    """The index as the object-tree merge writes it, and each layer's `changes` as that merge has them."""
    from functools import partial

    from rootfs_model import write

    from imagefs.rootfs.merge import Merge
    from imagefs.rootfs.save import read_save

    saved = read_save(data)
    merge = Merge(views)
    for ref in saved.layers:
        merge.apply(partial(members, data, ref.offset, ref.offset + ref.size))
    db = where / "model.sqlite"
    db.unlink(missing_ok=True)
    write(db, saved.layers, [""] * len(saved.layers), merge, views)
    changes = [b"".join(b"%s /%s\n" % (letter.encode(), b"/".join(path))
                        for path, letter in sorted(layer.changes.items(), key=lambda item: b"/".join(item[0])))
               for layer in merge.layers]
    return Index(db), changes


def described(ix: Index, tree_name: bytes = ROOTFS) -> tuple[object, ...]:
    root = ix.tree(tree_name)
    tree = {"": root, **dict(walk(ix, root))}
    rows = {p: (r.kind, r.mode, r.uid, r.gid, r.mtime, r.size, r.layer, r.offset, r.link, r.rdev, r.nlink,
                ix.xattrs(r.ino)) for p, r in tree.items()}
    links: dict[int, set[str]] = {}
    for p, r in tree.items():
        links.setdefault(r.ino, set()).add(p)
    layers = [(info.wasted, info.changed) for info in ix.layers]
    return rows, sorted(sorted(s) for s in links.values()), layers


@contextlib.contextmanager
def batches_of(size: int) -> Iterator[None]:
    """The merges' batches and statements `size` rows long: 2 or 3 cut a layer's files into many batches."""
    saved = rootmerge.BATCH, live.ROWS_PER_INSERT, views_module.BATCH
    rootmerge.BATCH = live.ROWS_PER_INSERT = views_module.BATCH = size
    try:
        yield
    finally:
        rootmerge.BATCH, live.ROWS_PER_INSERT, views_module.BATCH = saved


def assert_merged_as_the_model(layers: list[list[tuple[str, str, str, int]]], where: Path) -> Index:
    """The rootfs index of these layers (`rich_member`s), checked against the model's; open, for more checks."""
    data = save([layer(*(rich_member(*m) for m in ms)) for ms in layers])
    ix, (expected, changes) = index_of(data, where), model_index(data, where)
    try:
        assert described(ix) == described(expected)
        assert [ix.changes(n) for n in range(len(layers))] == changes
    except BaseException:
        ix.close()
        raise
    finally:
        expected.close()
    return ix


@settings(max_examples=400, deadline=None)
@given(any_layers, stg.sampled_from([2, 3, 4096]))
def test_the_row_merge_matches_the_tree_merge(layers: list[list[tuple[str, str, str, int]]], batch: int) -> None:
    with tempfile.TemporaryDirectory() as where, batches_of(batch):
        assert_merged_as_the_model(layers, Path(where)).close()


@pytest.mark.parametrize("batch", [3, 4096])
def test_files_written_over_files_links_and_directories_in_a_batch(batch: int, tmp_path: Path) -> None:
    """In one batch: a file over a lower layer's file (its letter C, its bytes wasted), over a directory and
    over a link; what was reached through the link, or put under the directory, before the file, not after."""
    base = [("dir", "c", "", 0), ("dir", "a/d", "", 0), ("file", "a/a", "", 1)]
    top = [("file", "a/g", "", 1), ("file", "a/d/a", "", 1), ("file", "a/a", "", 2), ("file", "a/d", "", 2),
           ("file", "a/d/b", "", 1), ("symlink", "a/b", "../c", 0), ("file", "a/b/a", "", 1), ("file", "a/e", "", 1),
           ("file", "a/b", "", 3), ("file", "a/b/b", "", 1)]
    with batches_of(batch):
        ix = assert_merged_as_the_model([base, top], tmp_path)
    try:
        c = ix.lookup(ix.tree(ROOTFS).id, b"c")
        assert c is not None and [row.name for row in ix.children(c.id)] == [b"a"]  # a/b/a, before a/b was a file
        assert b"C /a/a\n" in ix.changes(1) and ix.layers[0].wasted >= 1
    finally:
        ix.close()


@pytest.mark.parametrize("batch", [2, 4096])
def test_a_hardlink_to_a_file_rewritten_then_removed_holds_the_old_file(batch: int, tmp_path: Path) -> None:
    """D/P written over in place, then D replaced by a file: a later link to D/P is to layer 0's D/P."""
    layers = [[("dir", "D", "", 0), ("file", "D/P", "", 1)],
              [("file", "D/Q", "", 1), ("file", "D/P", "", 2), ("file", "D", "", 3), ("hardlink", "L", "D/P", 0)]]
    with batches_of(batch):
        ix = assert_merged_as_the_model(layers, tmp_path)
    try:
        link = ix.lookup(ix.tree(ROOTFS).id, b"L")
        assert link is not None and link.size == 1 and link.layer == 0
    finally:
        ix.close()


@settings(max_examples=400, deadline=None)
@given(any_layers, stg.sampled_from([2, 3, 4096]))
def test_the_row_views_match_the_tree_views(layers: list[list[tuple[str, str, str, int]]], batch: int) -> None:
    """Each layer's own and removed files: tree, attributes, hardlink identity and counts, xattrs, wasted bytes."""
    data = save([layer(*(rich_member(*m) for m in ms)) for ms in layers])
    with tempfile.TemporaryDirectory() as where, batches_of(batch):
        ix, (expected, _) = index_of(data, Path(where), views=True), model_index(data, Path(where), views=True)
        try:
            for n in range(len(layers)):
                for tree in (files_tree(n), removed_tree(n)):
                    assert described(ix, tree) == described(expected, tree), tree
        finally:
            ix.close()
            expected.close()


# --- indexing as the save arrives (`follow`): the same index, and none from a cut or broken export ----------


def follow_index(data: bytes, where: Path, chunk: int, verdict: bytes | None = None,
                 kept: walks.Walks | None = None) -> Index:
    """The index built while a thread writes `data` into the spool `chunk` bytes at a time, telling each
    length, then `verdict` (default: the export verified at its length); `kept`: the build's walks."""
    spool, db = where / "growing.tar", where / "follow.sqlite"
    spool.write_bytes(b"")
    db.unlink(missing_ok=True)
    read, write = os.pipe()

    def feed() -> None:
        with contextlib.suppress(BrokenPipeError), open(spool, "ab") as out, os.fdopen(write, "wb") as lengths:
            for at in range(0, len(data), chunk):
                out.write(data[at : at + chunk])
                out.flush()
                lengths.write(b"%d\n" % min(len(data), at + chunk))
                lengths.flush()
            lengths.write(verdict or b"end %d\n" % len(data))

    fd = os.open(spool, os.O_RDONLY)
    feeder = threading.Thread(target=feed)
    feeder.start()
    try:
        with os.fdopen(read, "rb") as lengths:
            build(fd, db, where, lengths=lengths, walks=kept)
    finally:
        feeder.join()
        os.close(fd)
    return Index(db)


@pytest.mark.parametrize(("layout", "compress"), [("legacy", False), ("oci", False), ("podman", False), ("oci", True)])
def test_an_index_made_as_the_save_arrives_is_the_same(layout: str, compress: bool, tmp_path: Path) -> None:
    layers = [layer(M("d", "dir"), M("d/f", data=b"1" * 3000), M("h", "hardlink", b"d/f"), M("s", "symlink", b"d")),
              layer(M(".wh.h"), M("s/g", data=b"2"), M("d/.wh..wh..opq"), M("d/new", xattrs={"user.x": "y"}))]
    data = save(layers, layout=layout, compress=compress)
    ix = index_of(data, tmp_path)
    followed = follow_index(data, tmp_path, chunk=700)
    try:
        assert described(followed) == described(ix)
        assert [followed.changes(n) for n in range(2)] == [ix.changes(n) for n in range(2)]
    finally:
        ix.close()
        followed.close()


def test_a_cut_or_broken_export_followed_makes_no_index(tmp_path: Path) -> None:
    data = save([layer(M("a", data=b"1" * 5000)), layer(M("b", data=b"2"))])
    with pytest.raises(BadArchive):
        follow_index(data[: len(data) // 2], tmp_path, chunk=1000)  # cut: verified at a length short of the end
    with pytest.raises(BadArchive):
        follow_index(data[: len(data) // 2], tmp_path, chunk=1000, verdict=b"broken\n")


def test_a_walker_frame_cut_short_is_no_frame() -> None:
    """A child that died mid-frame is told apart from one that sent its members (`walker._receive`)."""
    from imagefs.rootfs import walker

    sent = io.BytesIO()
    walker._send(sent, b"D", b"members")
    whole = sent.getvalue()
    assert walker._receive(io.BytesIO(whole)) == (b"D", b"members")
    assert walker._receive(io.BytesIO(whole[:-1])) == (b"?", b"")
    assert walker._receive(io.BytesIO(whole[:3])) == (b"?", b"")
