"""The engine matrix: the same checks against every engine of `matrix_engine` (dockerd 20.10,
dockerd 26 on graph drivers and on the containerd image store, podman's Docker API service).

Nothing here knows which engine answers: what to expect comes from the engine's own API, so an
engine that spells references (`docker.io/library/hello:latest`) or saves (OCI layouts) its own
way is held to its own answers.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
from conftest import Engine, Mount, mounted, pretty, settled, wait_for

SAMPLES = ("hello:latest", "busybox:latest")
SAVE_INDEXES = {"manifest.json", "index.json", "repositories"}  # what says which images a save holds


@pytest.fixture
def matrix_mount(matrix_engine: Engine, tmp: Path) -> Iterator[Mount]:
    # No TTL refresh within a test: what changes while it runs shows through events or control writes.
    with mounted(matrix_engine, tmp, "--debug", "--list-ttl", "600") as m:
        yield m


def namespaces(tags: set[str]) -> dict[str, set[str]]:
    """Each directory of the tree (by its path, "" for the root) and the names listed in it."""
    listed: dict[str, set[str]] = {}
    for tag in tags:
        parts = tag.split("/")
        for depth in range(len(parts)):
            listed.setdefault("/".join(parts[:depth]), set()).add(parts[depth])
    return listed


def test_tree_lists_every_reference_and_namespace(matrix_engine: Engine, matrix_mount: Mount) -> None:
    tags = matrix_engine.tags()
    assert len(tags) >= 4
    files = set(os.listdir(matrix_mount / matrix_engine.sample("hello:latest")))
    assert {"inspect", "history", "export.tar", "tag", "delete"} <= files
    for tag in tags:
        assert set(os.listdir(matrix_mount / tag)) == files, tag
    for directory, names in namespaces(tags).items():
        assert set(os.listdir(matrix_mount.path / directory)) - files == names, directory


def test_the_api_version_is_the_one_the_engine_takes(matrix_engine: Engine, matrix_mount: Mount) -> None:
    # 1.41 where the engine's range holds it, else its floor (Docker 29.0's 1.44).
    assert json.loads((matrix_mount / ".imagefs/version").read_bytes())["ImagefsApiPath"] == matrix_engine.api_path


def test_inspect_and_history_are_the_engines_answers(matrix_engine: Engine, matrix_mount: Mount) -> None:
    for tag in matrix_engine.tags():
        for doc, endpoint in (("inspect", "json"), ("history", "history")):
            status, body = matrix_engine.raw("GET", f"/images/{quote(tag, safe='/:@')}/{endpoint}")
            assert status == 200
            assert (matrix_mount / tag / doc).read_bytes() == pretty(json.loads(body)), (tag, doc)
    for image in matrix_engine.api("/images/json?all=1"):
        engine_doc = pretty(matrix_engine.api(f"/images/{image['Id']}/json"))
        by_id = matrix_mount / ".imagefs/ids" / image["Id"].removeprefix("sha256:") / "inspect"
        assert by_id.read_bytes() == engine_doc
        # podman and the containerd store give built images digests; dockerd's untagged ones "<none>@<none>"
        for digest in set(image.get("RepoDigests") or ()) - {"<none>@<none>"}:
            assert (matrix_mount / digest / "inspect").read_bytes() == engine_doc, digest


def saved(engine: Engine, path: str) -> bytes:
    status, body = engine.raw("GET", path, timeout=300)
    assert status == 200, (path, status, body[:200])
    return body


@pytest.mark.parametrize(("sample", "by_id"), [(sample, False) for sample in SAMPLES] + [("hello:latest", True)])
def test_export_is_the_engines_save(matrix_engine: Engine, matrix_mount: Mount, sample: str, by_id: bool) -> None:
    name = matrix_engine.sample(sample)
    file = matrix_mount / name / "export.tar"
    if by_id:  # .imagefs/ids/<id>/export.tar: a save that names no reference
        name = matrix_engine.api(f"/images/{quote(name, safe='/:@')}/json")["Id"].removeprefix("sha256:")
        file = matrix_mount / ".imagefs/ids" / name / "export.tar"
    path = f"/images/{quote(('sha256:' if by_id else '') + name, safe='/:@')}/get"
    # dockerd 26 dates a directory of its OCI layout at the second of the save: one of the two
    # saves made around imagefs's is in the same second as it.
    before = saved(matrix_engine, path)
    exported = file.read_bytes()
    after = saved(matrix_engine, path)
    assert exported in (before, after), (len(exported), len(before), len(after))
    assert os.stat(file).st_size == len(exported)


def test_all_tar_is_a_save_of_every_tag(matrix_engine: Engine, matrix_mount: Mount) -> None:
    # Not byte for byte: dockerd 20.10 orders a save of several images differently from one save to
    # the next (seen in 2 of 4 runs here), so each is compared by its members.
    tags = sorted(matrix_engine.tags())
    engines = members(saved(matrix_engine, "/images/get?" + "&".join(f"names={quote(t, safe='')}" for t in tags)))
    assert members((matrix_mount / ".imagefs/all.tar").read_bytes()) == engines


def members(archive: bytes) -> dict[str, tuple[str, object]]:
    """Each member by name: file, directory or link, and its content, as a save of several images
    may differ from the next one: its mtimes left out, a layer two images share stored under either
    one's name with a link from the other, the save's indexes read as JSON in any order."""
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        entries = {m.name: m for m in tar.getmembers()}
        files = {n: tar.extractfile(m).read() for n, m in entries.items() if m.isfile()}  # type: ignore[union-attr]
    found: dict[str, tuple[str, object]] = {}
    for name, m in entries.items():
        if m.issym():
            target = os.path.normpath(os.path.join(os.path.dirname(name), m.linkname))
            found[name] = ("file", files[target]) if target in files else ("link", m.linkname)
        elif m.isfile():
            found[name] = ("file", unordered(files[name]) if name in SAVE_INDEXES else files[name])
        else:
            found[name] = (m.type.decode(), m.linkname)
    return found


def unordered(document: bytes) -> object:
    doc = json.loads(document)
    if isinstance(doc, dict) and "manifests" in doc:  # index.json
        doc = dict(doc, manifests=unordered(json.dumps(doc["manifests"]).encode()))
    return sorted(map(json.dumps, doc)) if isinstance(doc, list) else doc


def test_tag_and_delete_through_control_files(matrix_engine: Engine, matrix_mount: Mount) -> None:
    ref = matrix_engine.sample("hello:latest")
    before = matrix_engine.tags()
    (matrix_mount / ref / "tag").write_text("matrix/ctl:1\n")
    try:
        (new,) = matrix_engine.tags() - before  # as the engine spells it (podman: docker.io/matrix/ctl:1)
        assert (matrix_mount / ref / "tag").read_text().endswith(f"last: tagged {ref} as {new}\n")
        assert (matrix_mount / new / "inspect").read_bytes() == (matrix_mount / ref / "inspect").read_bytes()
        (matrix_mount / new / "delete").write_text("\n")
        assert matrix_engine.tags() == before
        assert not (matrix_mount / new).exists()
        assert (matrix_mount / ref).is_dir()
    finally:
        for tag in matrix_engine.tags() - before:
            matrix_engine.docker("rmi", tag, check=False)


def test_changes_by_others_show_through_events(matrix_engine: Engine, matrix_mount: Mount) -> None:
    settled(matrix_mount)
    ref = matrix_engine.sample("hello:latest")
    before = matrix_engine.tags()
    matrix_engine.cli("tag", ref, "matrix/evt:1")  # `podman tag`: no API call, an event all the same
    try:
        (new,) = matrix_engine.tags() - before  # podman: localhost/matrix/evt:1
        assert wait_for(lambda: (matrix_mount / new).is_dir(), timeout=1) < 1
        matrix_engine.cli("rmi", new)
        assert wait_for(lambda: not (matrix_mount / new).exists(), timeout=1) < 1
    finally:
        for tag in matrix_engine.tags() - before:
            matrix_engine.docker("rmi", tag, check=False)
