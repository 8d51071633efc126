"""The commands of pull, push, commit, build-prune, the search names and the status journal: pure parts."""

from __future__ import annotations

import pytest

from imagefs import activity as activity_module
from imagefs.activity import JOURNAL_LINES, Activity
from imagefs.controls import BuildPrune, Commit, Pull, Push
from imagefs.errors import BadCommand
from imagefs.nodes.search import is_registry, parsed

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(("text", "params"), [
    ("alpine", ("alpine", "latest", None)),  # never "": that would pull every tag
    ("alpine:3.19 platform=linux/arm64/v8", ("alpine", "3.19", "linux/arm64/v8")),
    ("127.0.0.1:5055/acme/app:1", ("127.0.0.1:5055/acme/app", "1", None)),
    ("x@sha256:" + "a" * 64, ("x", "sha256:" + "a" * 64, None)),
])
def test_pull_words(text: str, params: tuple[str, str, str | None]) -> None:
    assert Pull().parse(text) == params


def test_pull_names_what_it_pulls() -> None:
    assert Pull().subject("", ("x", "sha256:" + "a" * 64, None)) == "x@sha256:" + "a" * 64
    assert Pull().describe("", ("alpine", "3.19", "linux/amd64")) == "pull alpine:3.19 for linux/amd64"


@pytest.mark.parametrize("bad", ["", "Bad!", "UPPER/x:1", "alpine platform=", "alpine platform=linux",
                                 "alpine all-tags", "a" * 64])
def test_pull_refuses_before_sending(bad: str) -> None:
    with pytest.raises(BadCommand):
        Pull().parse(bad)


def test_push_takes_an_empty_line() -> None:
    assert Push().parse("") is None
    with pytest.raises(BadCommand):
        Push().parse("all-tags")


def test_commit_words() -> None:
    assert Commit().parse("web1 snap/web:1 comment=before upgrade pause=false change=ENV X=1 change=LABEL a=b") == (
        "web1", "snap/web", "1",
        [("comment", "before upgrade"), ("pause", "false"), ("changes", "ENV X=1"), ("changes", "LABEL a=b")])
    assert Commit().parse("web1 'author=A. Person <a@b>'") == ("web1", "", "", [("author", "A. Person <a@b>")])
    assert Commit().parse("web1 snap") == ("web1", "snap", "latest", [])
    for bad in ("", "comment=x", "web1 Bad!", "web1 a:1 b:2", "web1 pause=maybe", "web1 pause=true x",
                "web1 'unclosed", "-x a:1"):
        with pytest.raises(BadCommand):
            Commit().parse(bad)


def test_build_prune_words() -> None:
    assert BuildPrune().parse("") == (False, None, {})
    assert BuildPrune().parse("all keep-storage=2GB until=24h") == (True, 2 << 30, {"until": ["24h"]})
    assert BuildPrune().parse("keep-storage=1000") == (False, 1000, {})
    for bad in ("keep-storage=lots", "everything", "until="):
        with pytest.raises(BadCommand):
            BuildPrune().parse(bad)
    answer = {"CachesDeleted": ["abc"], "SpaceReclaimed": 41054}
    assert BuildPrune().report("", (True, None, {}), answer) == (
        "deleted abc\n1 cache records deleted, 41.1 kB reclaimed (41054 bytes)")


@pytest.mark.parametrize(("name", "registry"), [
    ("nginx", False), ("127.0.0.1:5000", True), ("quay.io", True), ("localhost", True),
    ("quay.io,limit=3", False), ("acme", False)])
def test_the_engines_rule_for_a_registry_component(name: str, registry: bool) -> None:
    assert is_registry(name) is registry


def test_search_names() -> None:
    assert parsed("nginx") == ("nginx", None, {})
    assert parsed("h:1/acme,limit=5,stars=3,official,automated=false") == (
        "h:1/acme", 5, {"stars": ["3"], "is-official": ["true"], "is-automated": ["false"]})
    assert parsed("a%2Cb,limit=%31")[1] == 1  # options are percent-decoded
    for bad in ("", "h:1/", "x,limit=0", "x,limit=101", "x,stars=many", "x,bogus", "x,official=yes"):
        with pytest.raises(BadCommand):
            parsed(bad)


def test_the_status_journal_only_grows_and_notes_news(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [100.0]
    monkeypatch.setattr(activity_module.time, "monotonic", lambda: clock[0])
    activity = Activity()
    op = activity.start("pull", "alpine:3.19")
    op.facts["layers"] = "0/2"
    activity.note(op)
    op.facts["bytes"] = "1/10"
    activity.note(op)  # bytes alone: not within a second of the last line
    activity.note(op)
    assert activity.text().splitlines() == ["1 pull alpine:3.19 state=running",
                                            "1 pull alpine:3.19 state=running layers=0/2"]
    clock[0] += 1.5
    activity.note(op)
    assert activity.text().splitlines()[-1] == "1 pull alpine:3.19 state=running layers=0/2 bytes=1/10"
    activity.finish(op, "done")
    last = activity.text().splitlines()[-1]
    assert last.startswith("1 pull alpine:3.19 state=done layers=0/2 bytes=1/10 seconds=")
    assert activity.running == {}
    for n in range(JOURNAL_LINES):
        activity.finish(activity.start("push", f"x:{n}"), "done")
    assert len(activity.journal) <= JOURNAL_LINES
