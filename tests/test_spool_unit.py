"""The spool's store and remembered sizes on a real directory: no engine, no FUSE."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import trio

from imagefs.engine.flavor import DOCKER, DOCKER_CONTAINERD, PODMAN, Flavor
from imagefs.spool.export import Content
from imagefs.spool.exports import _content_problem
from imagefs.spool.sizes import MAX_SIZES, Sizes
from imagefs.spool.store import Store, UnsafeCache, spool_name

DEAD_PID = 2**22 + 7  # above pid_max's default: no process has it


def opened(path: Path) -> Store:
    store = Store(path)
    store.open()
    return store


def test_a_new_store_is_private(tmp_path: Path) -> None:
    store = opened(tmp_path / "a/b/cache")
    try:
        assert (tmp_path / "a/b/cache").stat().st_mode & 0o777 == 0o700
        assert (tmp_path / "a/b/cache/spool").stat().st_mode & 0o777 == 0o700
    finally:
        store.close()


def test_parts_of_dead_daemons_go_and_complete_spools_are_indexed(tmp_path: Path) -> None:
    store = opened(tmp_path / "cache")
    name = spool_name("engine id ref")
    part, fd = store.create_part(name)
    os.write(fd, b"x" * 1000)
    os.close(fd)
    store.publish(part, name)
    store.index(name, 1000, 1.0)
    dead = tmp_path / "cache/spool" / f".{name}.1.{DEAD_PID}.part"
    dead.write_bytes(b"half")
    alive = tmp_path / "cache/spool" / f".{name}.1.{os.getpid()}.part"
    alive.write_bytes(b"being written")
    store.close()
    again = opened(tmp_path / "cache")
    try:
        assert again.stored[name].size == 1000
        assert not dead.exists() and alive.exists()
        fd = again.open_stored(name, 1000)
        assert os.read(fd, 2000) == b"x" * 1000
        os.close(fd)
    finally:
        again.close()


def test_an_old_layout_spool_dir_is_removed_without_following_links(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir(mode=0o700)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "f").write_text("mine")
    old = cache / f"spool-{DEAD_PID}"
    old.mkdir()
    (old / "link").symlink_to(outside / "f")
    (old / "spool").write_bytes(b"old")
    (cache / f"spool-{DEAD_PID + 1}").symlink_to(outside)
    (cache / f"spool-{os.getpid()}").mkdir()  # a live daemon's: kept
    opened(cache).close()
    assert sorted(p.name for p in cache.iterdir()) == ["spool", f"spool-{os.getpid()}"]
    assert (outside / "f").read_text() == "mine"


@pytest.mark.parametrize("make", ["link-dir", "link-spool", "link-file", "fifo", "others-can-write"])
def test_what_could_redirect_the_daemon_is_refused(tmp_path: Path, make: str) -> None:
    cache = tmp_path / "cache"
    target = tmp_path / "target"
    target.mkdir()
    if make == "link-dir":
        cache.symlink_to(target)
    else:
        (cache / "spool").mkdir(parents=True, mode=0o700)
        cache.chmod(0o700)
    if make == "link-spool":
        (cache / "spool").rmdir()
        (cache / "spool").symlink_to(target)
    elif make == "link-file":
        (cache / "spool" / spool_name("k")).symlink_to(target / "x")
    elif make == "fifo":
        os.mkfifo(cache / "spool" / "fifo")
    elif make == "others-can-write":
        cache.chmod(0o777)
    with pytest.raises(UnsafeCache):
        opened(cache)
    assert list(target.iterdir()) == []


def test_sizes_merge_with_another_daemons_and_forget_wrong_ones(tmp_path: Path) -> None:
    store = opened(tmp_path / "cache")
    try:
        ours, theirs = Sizes(store), Sizes(store)
        ours.load()
        theirs.load()

        async def main() -> None:
            ours.remember("a", 1)
            ours.remember("wrong", 5)
            await ours.save()
            theirs.remember("b", 2)
            await theirs.save()  # merged under what the file holds
            ours.forget("wrong")
            await ours.save()  # a forgotten size is not merged back from the file

        trio.run(main)
        assert json.loads((tmp_path / "cache/sizes.json").read_text()) == {"a": 1, "b": 2}
        assert ours.get("b") == 2 and ours.get("wrong") is None
    finally:
        store.close()


@pytest.mark.parametrize("content", [b"", b"not json", b"[1, 2]", b'{"a": -1, "b": true, "c": "3", "d": 4}'])
def test_malformed_sizes_are_ignored(tmp_path: Path, content: bytes) -> None:
    store = opened(tmp_path / "cache")
    try:
        (tmp_path / "cache/sizes.json").write_bytes(content)
        sizes = Sizes(store)
        sizes.load()
        assert [sizes.get(k) for k in "abcd"] == [None, None, None, 4 if b'"d"' in content else None]
    finally:
        store.close()


def test_sizes_are_bounded_newest_last(tmp_path: Path) -> None:
    store = opened(tmp_path / "cache")
    try:
        sizes = Sizes(store)
        for i in range(MAX_SIZES + 5):
            sizes.remember(f"k{i}", i)
        trio.run(sizes.save)
        kept = json.loads((tmp_path / "cache/sizes.json").read_text())
        assert len(kept) == MAX_SIZES and "k0" not in kept and f"k{MAX_SIZES + 4}" in kept
    finally:
        store.close()


A, B = "a" * 64, "b" * 64


def manifest(*entries: tuple[str, list[str] | None]) -> dict[str, bytes]:
    return {"manifest.json": json.dumps([{"Config": c, "RepoTags": t} for c, t in entries]).encode()}


def index(*entries: tuple[str, str | None], config: str = "c" * 64) -> dict[str, bytes]:
    """A containerd-store save: index.json names the IDs; manifest.json names configs that are not."""
    listed = [{"digest": f"sha256:{d}", "annotations": {"io.containerd.image.name": n} if n else {}}
              for d, n in entries]
    return {"index.json": json.dumps({"manifests": listed}).encode(),
            **manifest(*((f"blobs/sha256/{config}", [n] if n else None) for _, n in entries))}


@pytest.mark.parametrize(("flavor", "members", "images", "right"), [
    (DOCKER, manifest((f"{A}.json", ["x:1"])), (("x:1", A),), True),
    (DOCKER, manifest((f"blobs/sha256/{A}", ["x:1"])), (("x:1", A),), True),  # Docker 25+'s OCI layout
    (DOCKER, manifest((f"{A}.json", None)), ((A, A),), True),  # by ID: no tags
    (DOCKER, manifest((f"{B}.json", ["x:1"])), (("x:1", A),), False),  # the tag moved meanwhile
    (DOCKER, manifest((f"{A}.json", ["x:1"]), (f"{B}.json", ["y:1"])), (("x:1", A), ("y:1", B)), True),
    (DOCKER, manifest((f"{A}.json", ["x:1", "y:1"])), (("x:1", A), ("y:1", B)), False),
    (DOCKER, {"manifest.json": b'"not a list"'}, (("x:1", A),), False),
    (DOCKER, {}, (("x:1", A),), False),
    (PODMAN, manifest((f"{A}.json", ["docker.io/library/x:1"])), (("docker.io/library/x:1", A),), True),
    (PODMAN, manifest((f"{A}.json", ["localhost/x:1"])), (("localhost/x:1", A),), True),
    (PODMAN, manifest((f"{A}.json", ["localhost/x:1"])), (("localhost/x:1", B),), False),
    (DOCKER_CONTAINERD, index((A, "docker.io/library/x:1")), (("x:1", A),), True),
    (DOCKER_CONTAINERD, index((A, "docker.io/library/x:1")), (("docker.io/library/x:1", A),), True),
    (DOCKER_CONTAINERD, index((A, None)), ((A, A),), True),
    (DOCKER_CONTAINERD, index((A, "docker.io/library/x:1"), (B, "docker.io/me/y:1")), (("x:1", A), ("me/y:1", B)),
     True),
    (DOCKER_CONTAINERD, index((B, "docker.io/library/x:1")), (("x:1", A),), False),  # the tag moved
    (DOCKER_CONTAINERD, manifest((f"blobs/sha256/{A}", ["x:1"])), (("x:1", A),), False),  # no index.json
    (DOCKER, index((A, "docker.io/library/x:1"), config=B), (("x:1", A),), False),  # the config is no ID
])
def test_an_export_must_hold_the_images_it_was_asked_for(flavor: Flavor, members: dict[str, bytes],
                                                          images: tuple, right: bool) -> None:
    content = Content("k", "/images/get", (), images)
    problem = _content_problem(flavor, members, content)
    assert (problem is None) == right, problem
