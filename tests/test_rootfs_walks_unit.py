"""Kept layer walks (`walks`): a layer two images share is walked once, and a kept walk cut short is never used."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from rootfs_tars import M, compressed, layer, save
from test_rootfs_unit import described, follow_index

from imagefs.rootfs import walker, walks
from imagefs.rootfs.build import ROOTFS, build
from imagefs.rootfs.index import Index
from imagefs.rootfs.members import BadArchive
from imagefs.rootfs.trim import INDEX, trim
from imagefs.rootfs.views import files_tree, removed_tree
from imagefs.rootfs.walks import Walks

BASE = layer(M("d", "dir"), *(M(f"d/f{i:03d}", data=b"%d" % i) for i in range(300)), M("h", "hardlink", b"d/f001"),
             M("s", "symlink", b"d"), M("x", data=b"xattr", xattrs={"user.k": "v"}))
TOP_A = layer(M("d/.wh.f002"), M("a", data=b"a"))
TOP_B = layer(M("d/.wh..wh..opq"), M("d/new", data=b"b"), M("s/g", data=b"via link"), M(".wh.x"))
BASE_ID = "sha256:" + hashlib.sha256(BASE).hexdigest()
B_ID = "sha256:" + hashlib.sha256(TOP_B).hexdigest()
LAYOUTS = [("legacy", False), ("oci", False), ("podman", False), ("oci", "gzip"), ("oci", "zstd")]


def indexed(data: bytes, side: Path, views: bool = False, follow_chunk: int = 0) -> tuple[object, list[str]]:
    """The index of the save `data`, built with `side` as its directory (followed as it arrives, `follow_chunk`
    bytes at a time, if given): its description, and what the build told of its walks."""
    spool, db = side / "save.tar", side / "index.sqlite"
    db.unlink(missing_ok=True)
    told = Walks(side)
    if follow_chunk:
        ix = follow_index(data, side, follow_chunk, kept=told)
    else:
        spool.write_bytes(data)
        fd = os.open(spool, os.O_RDONLY)
        try:
            build(fd, db, side, views, walks=told)
        finally:
            os.close(fd)
        ix = Index(db)
    try:
        trees = [files_tree(n) for n in range(2)] + [removed_tree(n) for n in range(2)] if views else [ROOTFS]
        return [described(ix, t) for t in trees] + [[ix.changes(n) for n in range(2)]], told.told
    finally:
        ix.close()


@pytest.mark.parametrize(("layout", "compress"), LAYOUTS)
def test_a_layer_two_images_share_is_walked_once(layout: str, compress: bool | str, tmp_path: Path) -> None:
    fresh, shared = tmp_path / "fresh", tmp_path / "shared"
    fresh.mkdir()
    shared.mkdir()
    image_a, image_b = (save([BASE, top], layout=layout, compress=compress) for top in (TOP_A, TOP_B))
    _, told = indexed(image_a, shared)
    assert told == [f"layer {BASE_ID}: walked", f"layer sha256:{hashlib.sha256(TOP_A).hexdigest()}: walked"]
    assert (shared / walks.name(BASE_ID)).stat().st_mode & 0o777 == 0o600
    got, told = indexed(image_b, shared)
    assert told == [f"layer {BASE_ID}: merged from its kept walk", f"layer {B_ID}: walked"]
    assert got == indexed(image_b, fresh)[0]
    views, told = indexed(image_b, shared, views=True)  # the layer views: every walk kept
    assert told == [f"layer {BASE_ID}: merged from its kept walk", f"layer {B_ID}: merged from its kept walk"]
    assert views == indexed(image_b, fresh, views=True)[0]


def test_a_walk_from_a_forked_walker_is_kept_as_its_frames_came(monkeypatch: pytest.MonkeyPatch,
                                                                tmp_path: Path) -> None:
    """A big layer is walked in a child (`walker.MIN_FORKED`), and its walk kept from the child's frames."""
    image = save([BASE, TOP_B])
    rootfs, views, forked = tmp_path / "rootfs", tmp_path / "views", tmp_path / "forked"
    for side in (rootfs, views, forked):
        side.mkdir()
    expected = indexed(image, rootfs)[0], indexed(image, views, views=True)[0]  # each walked where it is
    monkeypatch.setattr(walker, "MIN_FORKED", 0)
    assert indexed(image, forked)[0] == expected[0]
    got, told = indexed(image, forked, views=True)  # from the walks kept from frames, whiteouts and all
    assert told == [f"layer {BASE_ID}: merged from its kept walk", f"layer {B_ID}: merged from its kept walk"]
    assert got == expected[1]


@pytest.mark.parametrize("views", [False, True])
def test_a_build_that_fails_leaves_no_walker_nor_descriptor(views: bool, monkeypatch: pytest.MonkeyPatch,
                                                            tmp_path: Path) -> None:
    """A layer whose walk breaks fails the build; its walker, and the next layer's begun ahead, are reaped."""
    broken = bytearray(TOP_B)
    broken[148:156] = bytes(8)  # the first header's checksum
    pids: list[int] = []
    fork = os.fork

    def forked() -> int:
        pid = fork()
        if pid:
            pids.append(pid)
        return pid

    monkeypatch.setattr(walker, "MIN_FORKED", 0)
    monkeypatch.setattr(os, "fork", forked)
    before = set(os.listdir("/proc/self/fd"))
    with pytest.raises(BadArchive, match="checksum"):
        indexed(save([BASE, bytes(broken), TOP_A]), tmp_path, views=views)
    assert len(pids) == 3  # each layer's walk: the broken one and the one after it begun ahead
    for pid in pids:
        with pytest.raises(ChildProcessError):  # reaped
            os.waitpid(pid, os.WNOHANG)
    assert set(os.listdir("/proc/self/fd")) == before


@pytest.mark.parametrize("layout", ["legacy", "oci", "podman"])
def test_a_save_followed_skips_the_walks_its_names_say_are_kept(layout: str, tmp_path: Path) -> None:
    """A member's name gives its diff ID in the OCI and podman layouts; a legacy one's v1 ID, once recorded."""
    fresh, shared = tmp_path / "fresh", tmp_path / "shared"
    fresh.mkdir()
    shared.mkdir()
    image_a, image_b = (save([BASE, top], layout=layout) for top in (TOP_A, TOP_B))
    indexed(image_a, shared, follow_chunk=4096)
    assert walks.open_kept(shared, BASE_ID) is not None  # kept once the manifest named the layer
    got, told = indexed(image_b, shared, follow_chunk=4096)
    assert sorted(told) == sorted([f"layer {BASE_ID}: merged from its kept walk",
                                   f"layer {B_ID}: walked as it arrived"])
    assert got == indexed(image_b, fresh)[0]


def test_a_recorded_diff_id_the_manifest_disagrees_with_is_not_used(tmp_path: Path) -> None:
    fresh, shared = tmp_path / "fresh", tmp_path / "shared"
    fresh.mkdir()
    shared.mkdir()
    image_a, image_b = (save([BASE, top]) for top in (TOP_A, TOP_B))
    indexed(image_a, shared)
    top_a = "sha256:" + hashlib.sha256(TOP_A).hexdigest()
    for record in shared.glob(f"*{walks.BLOB}"):  # every v1 ID now says it is the top layer of image A
        record.write_text(top_a)
    got, told = indexed(image_b, shared, follow_chunk=4096)
    assert got == indexed(image_b, fresh)[0]
    assert f"layer {BASE_ID}: merged from its kept walk" in told


@pytest.mark.parametrize("cut", [1, 32, 4000])
def test_a_kept_walk_cut_short_is_walked_again(cut: int, tmp_path: Path) -> None:
    image_b = save([BASE, TOP_B])
    expected, _ = indexed(image_b, tmp_path)
    kept = tmp_path / walks.name(BASE_ID)
    size = kept.stat().st_size
    os.truncate(kept, size - cut)
    assert walks.open_kept(tmp_path, BASE_ID) is None  # and gone
    assert not kept.exists()
    os.truncate(tmp_path / walks.name(B_ID), 0)
    got, told = indexed(image_b, tmp_path)
    assert told == [f"layer {BASE_ID}: walked", f"layer {B_ID}: walked"]
    assert got == expected
    assert kept.stat().st_size == size  # kept whole again


def test_a_kept_walk_damaged_inside_fails_one_build_not_the_next(tmp_path: Path) -> None:
    image_b = save([BASE, TOP_B])
    expected, _ = indexed(image_b, tmp_path)
    kept = tmp_path / walks.name(BASE_ID)
    with open(kept, "r+b") as f:
        f.write(b"\xff" * 64)
    with pytest.raises(BadArchive, match="damaged"):
        indexed(image_b, tmp_path)
    assert indexed(image_b, tmp_path) == (expected, [f"layer {BASE_ID}: walked",
                                                     f"layer {B_ID}: merged from its kept walk"])


@pytest.mark.parametrize("compress", ["gzip", "gzip:members", "zstd", "zstd:chunked"])
def test_a_compressed_layer_followed_is_inflated_and_walked_as_it_arrives(compress: str, tmp_path: Path) -> None:
    fresh, side = tmp_path / "fresh", tmp_path / "side"
    fresh.mkdir()
    side.mkdir()
    # more than one read of the save and one step of the inflater
    big = layer(M("big", data=os.urandom(3 << 20)), M("zeros", data=bytes(40 << 20)), M("after", data=b"after"))
    data = save([big, TOP_B], layout="oci", compress=compress)
    got, told = indexed(data, side, follow_chunk=1 << 16)
    big_id = "sha256:" + hashlib.sha256(big).hexdigest()
    assert told == [f"layer {big_id}: walked as it arrived", f"layer {B_ID}: walked as it arrived"]
    assert got == indexed(data, fresh)[0]
    assert (side / f"{big_id[7:]}.tar").read_bytes() == big  # the inflated tar, by diff ID
    assert not list(side.glob(".*.part"))


@pytest.mark.parametrize("compress", ["gzip", "zstd"])
def test_a_compressed_layer_broken_inside_fails_the_followed_build(compress: str, tmp_path: Path) -> None:
    data = bytearray(save([BASE, TOP_B], layout="oci", compress=compress))
    blob = compressed(BASE, compress)
    at = bytes(data).index(blob) + len(blob) // 2
    data[at : at + 16] = bytes(16)
    with pytest.raises(BadArchive, match="is not the"):
        indexed(bytes(data), tmp_path, follow_chunk=4096)
    assert not list(tmp_path.glob(".*.part")) and not list(tmp_path.glob("?" * 64 + ".tar"))


@pytest.mark.parametrize("follow_chunk", [0, 4096])
def test_zeros_after_a_gzip_layer_fail_the_build(follow_chunk: int, tmp_path: Path) -> None:
    """Go's gzip reader, which the engines unpack layers with, takes another member after one, or the end."""
    with pytest.raises(BadArchive, match="is not the gzip stream"):
        indexed(save([BASE, TOP_B], layout="oci", compress="gzip+zeros"), tmp_path, follow_chunk=follow_chunk)


def test_a_kept_walk_no_index_has_goes_only_when_over_the_bound(tmp_path: Path) -> None:
    indexed(save([BASE, TOP_A], layout="oci"), tmp_path)  # whose names are the diff IDs: no records
    (tmp_path / "index.sqlite").rename(tmp_path / f"kept{INDEX}")
    orphan = tmp_path / walks.name(B_ID)
    orphan.write_bytes((tmp_path / walks.name(BASE_ID)).read_bytes())  # as a build that failed leaves one
    (tmp_path / "save.tar").unlink()
    total = sum(p.stat().st_size for p in tmp_path.iterdir())
    assert trim(tmp_path, total, set()) == []
    assert trim(tmp_path, total - 1, {f"kept{INDEX}"}) == [orphan.name]  # the index's own walks stay
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [f"kept{INDEX}", walks.name(BASE_ID), walks.name("sha256:" + hashlib.sha256(TOP_A).hexdigest())])


@pytest.mark.parametrize("compress", ["gzip", "zstd"])
def test_a_compressed_layer_two_saves_share_is_inflated_and_walked_once(compress: str, tmp_path: Path) -> None:
    """A compressed blob's name is no diff ID; the one a build recorded for it is."""
    fresh, shared = tmp_path / "fresh", tmp_path / "shared"
    fresh.mkdir()
    shared.mkdir()
    image_a, image_b = (save([BASE, top], layout="oci", compress=compress) for top in (TOP_A, TOP_B))
    _, told = indexed(image_a, shared, follow_chunk=4096)
    assert told[0] == f"layer {BASE_ID}: walked as it arrived"
    record = shared / (hashlib.sha256(compressed(BASE, compress)).hexdigest() + walks.BLOB)
    assert record.read_text() == BASE_ID and record.stat().st_mode & 0o777 == 0o600
    inflated = shared / f"{BASE_ID[7:]}.tar"
    inode = inflated.stat().st_ino
    got, told = indexed(image_b, shared, follow_chunk=4096)
    assert told == [f"layer {BASE_ID}: merged from its kept walk", f"layer {B_ID}: walked as it arrived"]
    assert inflated.stat().st_ino == inode  # not inflated again
    assert got == indexed(image_b, fresh)[0]
    (shared / "follow.sqlite").rename(shared / f"b{INDEX}")
    trim(shared, 0, set())  # the last index with the layer goes: its inflated tar, walk and blob record too
    assert not inflated.exists() and not record.exists() and not (shared / walks.name(BASE_ID)).exists()


def test_an_inflated_layer_that_is_a_link_is_never_followed(tmp_path: Path) -> None:
    image = save([BASE, TOP_B], layout="oci", compress="gzip")
    expected, _ = indexed(image, tmp_path)
    inflated = tmp_path / f"{BASE_ID[7:]}.tar"
    inflated.rename(tmp_path / "elsewhere")
    inflated.symlink_to(tmp_path / "elsewhere")
    (tmp_path / walks.name(BASE_ID)).unlink()  # so that the layer is walked where it is: in its side file
    assert indexed(image, tmp_path)[0] == expected
    assert not inflated.is_symlink() and inflated.read_bytes() == BASE
    assert (tmp_path / "elsewhere").read_bytes() == BASE


def test_a_kept_walk_that_is_a_link_is_never_followed(tmp_path: Path) -> None:
    indexed(save([BASE, TOP_B]), tmp_path)
    kept = tmp_path / walks.name(BASE_ID)
    kept.rename(tmp_path / "elsewhere")
    kept.symlink_to(tmp_path / "elsewhere")
    assert walks.open_kept(tmp_path, BASE_ID) is None
    assert (tmp_path / "elsewhere").exists()


def test_the_parts_a_killed_builder_left_go_at_the_next_trim(tmp_path: Path) -> None:
    """A `.part` whose builder is gone (killed mid-build: no cleanup ran) is removed; a running one's stays."""
    gone = tmp_path / f".walk.abc.{1 << 23}.part"  # above any pid_max: a builder that is no more
    gone.write_bytes(b"x" * 100)
    with walks.part_file(tmp_path, ".inflated.") as running:
        running.write(b"y" * 100)
        assert trim(tmp_path, 1 << 30, set()) == [gone.name]
        assert not gone.exists() and Path(running.name).exists()
