"""Snapshot, Change and nodes.tree.affected on hand-written engine answers: no engine, no FUSE."""

from __future__ import annotations

from typing import Any

import pytest

from imagefs.catalog import Change, Image, Snapshot
from imagefs.nodes.images import IDS, RESERVED
from imagefs.nodes.tree import affected

A = "a" * 64
B = "b" * 64
C = "c" * 64
D = "d" * 64
E = "e" * 64
DIGEST = "sha256:" + "f" * 64


def summary(image_id: str, created: int, tags: Any = None, digests: Any = None, prefix: str = "sha256:") -> dict:
    """One entry of GET /images/json, as the engine spells it."""
    return {
        "Id": prefix + image_id,
        "ParentId": "",
        "RepoTags": tags,
        "RepoDigests": digests,
        "Created": created,
        "Size": 1234,
        "SharedSize": -1,
        "VirtualSize": 1234,
        "Labels": None,
        "Containers": -1,
    }


LIST = [
    summary(A, 100, ["alpine:latest", "alpine:3.19", "myorg/app:1.0"], [f"alpine@{DIGEST}"]),
    summary(B, 300, ["localhost:5000/team/app:2", "localhost:5000"]),
    summary(C, 200, None, None),  # untagged, docker before 1.44
    summary(D, 50, ["<none>:<none>"], ["<none>@<none>"]),  # untagged, older docker
    summary(E, 400, ["docker.io/library/x:1", "localhost/x:1"], [], prefix=""),  # podman: bare hex IDs
]


@pytest.fixture
def snap() -> Snapshot:
    return Snapshot.from_list(LIST)


# --- Snapshot --------------------------------------------------------------------------------


def test_images_by_id(snap: Snapshot) -> None:
    assert set(snap.images) == {A, B, C, D, E}
    assert snap.images[A] == Image(A, 100, ("alpine:latest", "alpine:3.19", "myorg/app:1.0"), (f"alpine@{DIGEST}",))
    assert snap.images[C] == Image(C, 200, (), ())
    assert snap.images[D] == Image(D, 50, (), ())  # <none>:<none> is no name
    assert snap.images[E].id == E  # podman's bare hex kept as is
    assert snap.images[E].tags == ("docker.io/library/x:1", "localhost/x:1")


def test_by_ref(snap: Snapshot) -> None:
    assert set(snap.by_ref) == {
        "alpine:latest",
        "alpine:3.19",
        "myorg/app:1.0",
        f"alpine@{DIGEST}",
        "localhost:5000/team/app:2",
        "localhost:5000",
        "docker.io/library/x:1",
        "localhost/x:1",
    }
    assert snap.by_ref["myorg/app:1.0"].id == A
    assert snap.by_ref[f"alpine@{DIGEST}"].id == A
    assert snap.by_ref["localhost:5000"].id == B
    assert not any("<none>" in r for r in snap.by_ref)


def test_children(snap: Snapshot) -> None:
    assert snap.children == {
        (): {"alpine:latest", "alpine:3.19", "myorg", "localhost:5000", "docker.io", "localhost"},
        ("myorg",): {"app:1.0"},
        ("localhost:5000",): {"team"},
        ("localhost:5000", "team"): {"app:2"},
        ("docker.io",): {"library"},
        ("docker.io", "library"): {"x:1"},
        ("localhost",): {"x:1"},
    }
    # Digest references resolve but are never listed.
    assert not any("@" in name for names in snap.children.values() for name in names)


def test_newest(snap: Snapshot) -> None:
    assert snap.newest == {
        (): 400,  # untagged C (200) does not count, tagged E (400) does
        ("myorg",): 100,
        ("localhost:5000",): 300,
        ("localhost:5000", "team"): 300,
        ("docker.io",): 400,
        ("docker.io", "library"): 400,
        ("localhost",): 400,
    }


def test_newest_takes_the_maximum() -> None:
    snap = Snapshot.from_list([summary(A, 10, ["org/a:1"]), summary(B, 30, ["org/b:1"]), summary(C, 20, ["org/c:1"])])
    assert snap.newest[("org",)] == 30
    assert snap.newest[()] == 30


def test_image_at(snap: Snapshot) -> None:
    assert snap.image_at(("alpine:latest",)).id == A  # type: ignore[union-attr]
    assert snap.image_at(("myorg", "app:1.0")).id == A  # type: ignore[union-attr]
    assert snap.image_at((f"alpine@{DIGEST}",)).id == A  # type: ignore[union-attr]
    assert snap.image_at(("localhost:5000",)).id == B  # type: ignore[union-attr]
    assert snap.image_at(("localhost:5000", "team", "app:2")).id == B  # type: ignore[union-attr]
    assert snap.image_at(("localhost", "x:1")).id == E  # type: ignore[union-attr]
    assert snap.image_at(("myorg",)) is None  # a namespace
    assert snap.image_at(("alpine:edge",)) is None
    assert snap.image_at(("<none>:<none>",)) is None
    assert snap.image_at(()) is None
    assert snap.image_at(("myorg/app:1.0",)) is None  # one component holding "/" is no path of it


def test_is_namespace(snap: Snapshot) -> None:
    for path in [(), ("myorg",), ("localhost:5000",), ("localhost:5000", "team"), ("docker.io", "library")]:
        assert snap.is_namespace(path), path
    for path in [("alpine:latest",), ("myorg", "app:1.0"), ("alpine",), ("nothing",), ("localhost:5000", "x")]:
        assert not snap.is_namespace(path), path
    # localhost:5000 is an image and a namespace at once.
    assert snap.is_namespace(("localhost:5000",)) and snap.image_at(("localhost:5000",)) is not None


def test_empty_and_minimal_answers() -> None:
    empty = Snapshot.from_list([])
    assert empty.images == {} and empty.by_ref == {} and empty.children == {}
    assert not empty.is_namespace(())
    minimal = Snapshot.from_list([{"Id": "sha256:" + A}])  # fields missing altogether
    assert minimal.images == {A: Image(A, 0, (), ())}


# --- Change ----------------------------------------------------------------------------------


def test_unchanged_is_falsy(snap: Snapshot) -> None:
    change = Change.between(snap, Snapshot.from_list(LIST))
    assert not change
    assert change.refs == frozenset() and change.ids == frozenset()


def test_added_tag(snap: Snapshot) -> None:
    listing = [dict(s) for s in LIST]
    listing[1]["RepoTags"] = [*listing[1]["RepoTags"], "neworg/new:1"]
    change = Change.between(snap, Snapshot.from_list(listing))
    assert change
    assert "neworg/new:1" in change.refs
    assert change.ids == {B}  # B's inspect (RepoTags) changed; nobody else's
    assert not change.refs & {"alpine:latest", "myorg/app:1.0", "localhost/x:1"}  # other images untouched


def test_removed_image(snap: Snapshot) -> None:
    new = Snapshot.from_list([s for s in LIST if s["Id"] != "sha256:" + A])
    change = Change.between(snap, new)
    assert change.ids == {A}
    assert change.refs == {"alpine:latest", "alpine:3.19", "myorg/app:1.0", f"alpine@{DIGEST}"}


def test_moved_tag(snap: Snapshot) -> None:
    listing = [dict(s) for s in LIST]
    listing[0]["RepoTags"] = ["alpine:3.19", "myorg/app:1.0"]
    listing[2]["RepoTags"] = ["alpine:latest"]
    new = Snapshot.from_list(listing)
    change = Change.between(snap, new)
    assert new.by_ref["alpine:latest"].id == C
    assert "alpine:latest" in change.refs
    assert change.ids == {A, C}
    assert not change.refs & {"localhost:5000", "localhost/x:1"}


def test_new_untagged_image() -> None:
    old = Snapshot.from_list([summary(A, 1, ["a:1"])])
    new = Snapshot.from_list([summary(A, 1, ["a:1"]), summary(B, 2, ["<none>:<none>"])])
    change = Change.between(old, new)
    assert change
    assert change.refs == frozenset()
    assert change.ids == {B}


# --- Tree.affected ---------------------------------------------------------------------------

ALWAYS = {(), (RESERVED,), (RESERVED, IDS)}


def test_affected_new_tag() -> None:
    old = Snapshot.from_list([summary(A, 1, ["alpine:latest"]), summary(B, 2, ["org/b:1"])])
    new = Snapshot.from_list([summary(A, 1, ["alpine:latest", "myorg/app:1.0"]), summary(B, 2, ["org/b:1"])])
    found = affected(Change.between(old, new))
    trees, nodes = found.trees, found.nodes
    assert ("myorg", "app:1.0") in trees
    assert (RESERVED, IDS, A) in trees
    assert ("myorg",) in nodes  # the new namespace exists: its attributes changed, not gone
    assert ("myorg",) not in trees
    assert nodes >= ALWAYS
    assert (RESERVED, "all.tar") in trees  # a new tag makes the all-images archive another content
    assert ("org", "b:1") not in trees and ("org",) not in trees | nodes
    assert (RESERVED, IDS, B) not in trees


def test_affected_removed_tag_empties_namespace() -> None:
    old = Snapshot.from_list([summary(A, 1, ["alpine:latest", "a/b/c:1"]), summary(B, 2, ["a/x:1"])])
    new = Snapshot.from_list([summary(A, 1, ["alpine:latest"]), summary(B, 2, ["a/x:1"])])
    found = affected(Change.between(old, new))
    trees, nodes = found.trees, found.nodes
    assert ("a", "b", "c:1") in trees
    assert ("a", "b") in trees  # emptied: gone with its subtree
    assert ("a",) in nodes  # still holds a/x:1
    assert ("a",) not in trees
    assert (RESERVED, IDS, A) in trees
    assert ("a", "x:1") not in trees


def test_affected_removed_last_tag_under_registry_image() -> None:
    # localhost:5000 stays as an image when its namespace side empties.
    old = Snapshot.from_list([summary(A, 1, ["localhost:5000", "localhost:5000/app:1"])])
    new = Snapshot.from_list([summary(A, 1, ["localhost:5000"])])
    found = affected(Change.between(old, new))
    trees, nodes = found.trees, found.nodes
    assert ("localhost:5000", "app:1") in trees
    assert ("localhost:5000",) in trees  # A changed, so its directory is dropped too
    assert ("localhost:5000",) in nodes  # and, as the emptied namespace that still exists as an image, touched
    assert not new.is_namespace(("localhost:5000",))
    assert new.image_at(("localhost:5000",)) is not None


def test_affected_moved_tag() -> None:
    old = Snapshot.from_list([summary(A, 1, ["app:1", "org/app:1"]), summary(B, 2, ["app:2"]), summary(C, 3, ["c:1"])])
    new = Snapshot.from_list([summary(A, 1, ["app:1"]), summary(B, 2, ["app:2", "org/app:1"]), summary(C, 3, ["c:1"])])
    found = affected(Change.between(old, new))
    trees, nodes = found.trees, found.nodes
    assert ("org", "app:1") in trees
    assert {(RESERVED, IDS, A), (RESERVED, IDS, B)} <= trees
    assert ("app:1",) in trees and ("app:2",) in trees  # both images' inspect changed
    assert ("org",) in nodes and ("org",) not in trees
    assert (RESERVED, IDS, C) not in trees and ("c:1",) not in trees
    assert nodes >= ALWAYS


def test_affected_removed_image() -> None:
    old = Snapshot.from_list(
        [summary(A, 1, ["alpine:latest", "org/a:1"], [f"alpine@{DIGEST}"]), summary(B, 2, ["b:1"])]
    )
    new = Snapshot.from_list([summary(B, 2, ["b:1"])])
    found = affected(Change.between(old, new))
    trees, nodes = found.trees, found.nodes
    assert (RESERVED, IDS, A) in trees
    assert {("alpine:latest",), ("org", "a:1"), ("org",), (f"alpine@{DIGEST}",)} <= trees
    assert ("b:1",) not in trees and (RESERVED, IDS, B) not in trees
    assert nodes == ALWAYS and (RESERVED, "all.tar") in trees


def test_affected_removed_untagged_image() -> None:
    old = Snapshot.from_list([summary(A, 1, None), summary(B, 2, ["b:1"])])
    new = Snapshot.from_list([summary(B, 2, ["b:1"])])
    found = affected(Change.between(old, new))
    trees, nodes = found.trees, found.nodes
    assert trees == {(RESERVED, IDS, A)}
    assert nodes == ALWAYS


def test_affected_nothing() -> None:
    snap = Snapshot.from_list(LIST)
    found = affected(Change.between(snap, Snapshot.from_list(LIST)))
    trees, nodes = found.trees, found.nodes
    assert trees == set()
    assert nodes == ALWAYS
