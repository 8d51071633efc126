"""Control commands of SPEC §4 without an engine: one write is one command, and what its outcome says."""

from __future__ import annotations

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from imagefs import controls
from imagefs.controls import COMMANDS, MAX_COMMAND, Delete, Prune, Tag, decode, human_size
from imagefs.engine import Engine, EngineConfig
from imagefs.errors import BadCommand

FAST = settings(max_examples=200, deadline=None)

# --- decode ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "text"),
    [
        (b"", ""),
        (b"\n", ""),
        (b"\r\n", ""),
        (b"force", "force"),
        (b"force\n", "force"),
        (b"force\r\n", "force"),
        (b"force\r", "force"),
        (b"myrepo/x:v2\n", "myrepo/x:v2"),
        (b"  force  noprune \n", "force  noprune"),
        ("caf\u00e9\n".encode(), "caf\u00e9"),
    ],
)
def test_decode(data: bytes, text: str) -> None:
    assert decode(data) == text


@pytest.mark.parametrize(
    "data",
    [
        b"a\nb",
        b"a\nb\n",
        b"\n\n",
        b"force\n\n",
        b"a\rb",
        b"a\r\r",
        b"a\n\r",
        b"a\0b",
        b"\0",
        b"\xff",
        b"caf\xe9",  # Latin-1, not UTF-8
        b"\xc3",  # truncated sequence
        b"\xed\xa0\x80",  # an encoded surrogate
    ],
)
def test_decode_rejects(data: bytes) -> None:
    with pytest.raises(BadCommand):
        decode(data)


def test_decode_length_limit() -> None:
    assert decode(b"x" * MAX_COMMAND) == "x" * MAX_COMMAND
    with pytest.raises(BadCommand, match=str(MAX_COMMAND)):
        decode(b"x" * (MAX_COMMAND + 1))
    with pytest.raises(BadCommand):
        decode(b" " * MAX_COMMAND + b"\n")  # the limit is on the write, newline included


@FAST
@given(st.binary(max_size=64) | st.binary(min_size=MAX_COMMAND - 2, max_size=MAX_COMMAND + 2))
def test_decode_random_bytes(data: bytes) -> None:
    try:
        text = decode(data)
    except BadCommand:
        return
    assert isinstance(text, str)
    assert "\n" not in text and "\r" not in text and text.isprintable()
    assert text == text.strip()
    assert len(data) <= MAX_COMMAND
    assert text in data.decode()  # nothing invented, only the line's ends trimmed


@FAST
@given(st.text(max_size=100), st.sampled_from(["", "\n", "\r\n", "\r"]))
def test_decode_oracle(line: str, end: str) -> None:
    data = (line + end).encode()
    body = (line + end).removesuffix("\n").removesuffix("\r")  # one line end: LF, CRLF or CR
    expect_ok = len(data) <= MAX_COMMAND and not any(c in body for c in "\n\r") and body.isprintable()
    if expect_ok:
        assert decode(data) == body.strip()
        if not any(c in line for c in "\n\r"):
            assert decode(data) == line.strip()
    else:
        with pytest.raises(BadCommand):
            decode(data)


# --- tag -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "params"),
    [
        ("myrepo/x:v2", ("myrepo/x", "v2")),
        ("myrepo/x", ("myrepo/x", "latest")),
        ("localhost:5000/team/app:2", ("localhost:5000/team/app", "2")),
        ("localhost:5000", ("localhost", "5000")),
    ],
)
def test_tag_parse(text: str, params: tuple[str, str]) -> None:
    assert Tag().parse(text) == params


@pytest.mark.parametrize("text", ["", "Bad Name!", "x@sha256:" + "0" * 64, "x:", "UPPER", "a b", "<none>:<none>"])
def test_tag_parse_rejects(text: str) -> None:
    with pytest.raises(BadCommand, match="invalid reference format"):
        Tag().parse(text)


# --- delete ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "params"),
    [
        ("", {"force": False, "noprune": False}),
        ("force", {"force": True, "noprune": False}),
        ("noprune", {"force": False, "noprune": True}),
        ("force noprune", {"force": True, "noprune": True}),
        ("noprune  force", {"force": True, "noprune": True}),
        ("force force", {"force": True, "noprune": False}),
    ],
)
def test_delete_parse(text: str, params: dict[str, bool]) -> None:
    assert Delete().parse(text) == params


@pytest.mark.parametrize("text", ["yes", "Force", "force=1", "-f", "force prune", "noprune all", "--force"])
def test_delete_parse_rejects(text: str) -> None:
    with pytest.raises(BadCommand, match="unknown word"):
        Delete().parse(text)


@FAST
@given(st.lists(st.sampled_from(["force", "noprune"]), max_size=4))
def test_delete_parse_words(words: list[str]) -> None:
    assert Delete().parse(" ".join(words)) == {"force": "force" in words, "noprune": "noprune" in words}


# --- prune -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "filters"),
    [
        ("", {}),
        ("all", {"dangling": ["false"]}),
        ("until=24h", {"until": ["24h"]}),
        ("label=k", {"label": ["k"]}),
        ("label=k=v", {"label": ["k=v"]}),
        ("label!=k", {"label!": ["k"]}),
        ("label!=k=v", {"label!": ["k=v"]}),
        ("all until=24h label=a label=b=c", {"dangling": ["false"], "until": ["24h"], "label": ["a", "b=c"]}),
    ],
)
def test_prune_parse(text: str, filters: dict[str, list[str]]) -> None:
    assert Prune().parse(text) == filters


@pytest.mark.parametrize(
    "text",
    ["junk", "dangling=true", "until=", "label=", "label!=", "label", "until", "ALL", "all=1", "labels=k", "untilx=1"],
)
def test_prune_parse_rejects(text: str) -> None:
    with pytest.raises(BadCommand, match="unknown prune filter"):
        Prune().parse(text)


# --- human_size ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (0, "0 B"),
        (1, "1 B"),
        (999, "999 B"),
        (1000, "1.0 kB"),
        (1500, "1.5 kB"),
        (7_340_032, "7.3 MB"),
        (1_000_000_000, "1.0 GB"),
        (999_999, "1.0 MB"),
        (5_600_000_000_000, "5.6 TB"),
    ],
)
def test_human_size(n: int, text: str) -> None:
    assert human_size(n) == text


# --- outcomes --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "target", "text", "outcome"),
    [
        ("tag", "hello:latest", "dry/run:1", "dry-run: would tag hello:latest as dry/run:1; nothing sent"),
        ("tag", "hello:latest", "dry/run", "dry-run: would tag hello:latest as dry/run:latest; nothing sent"),
        ("delete", "hello:latest", "", "dry-run: would delete hello:latest; nothing sent"),
        ("delete", "x:1", "noprune force", "dry-run: would delete x:1 (force, noprune); nothing sent"),
        ("prune", "", "", "dry-run: would prune images (dangling only); nothing sent"),
        ("prune", "", "all label=k=v", "dry-run: would prune images (filters dangling=false label=k=v); nothing sent"),
    ],
)
def test_a_dry_run_outcome_says_nothing_was_sent(name: str, target: str, text: str, outcome: str) -> None:
    # A real engine client, in dry-run: it logs the request and sends none (there is no engine at that address).
    engine = Engine(EngineConfig(host="unix:///nonexistent/docker.sock", dry_run=True))
    command = COMMANDS[name]
    assert trio.run(command.run, engine, target, command.parse(text)) == outcome


def test_reports_of_the_engines_answers() -> None:
    assert Tag().report("a:1", ("b", "2"), "b:2") == "tagged a:1 as b:2"
    assert Delete().report("a:1", {}, None) == "deleted a:1"  # an empty answer is no dry-run
    untagged = [{"Untagged": "a:1"}, {"Deleted": "sha256:0"}]
    assert Delete().report("a:1", {}, untagged) == "untagged a:1\ndeleted sha256:0"
    answer = {"ImagesDeleted": [{"Deleted": "sha256:0"}], "SpaceReclaimed": 1500}
    assert Prune().report("", {}, answer) == "deleted sha256:0\n1 entries removed, 1.5 kB reclaimed (1500 bytes)"
    assert Prune().report("", {}, {"ImagesDeleted": None}) == "0 entries removed, 0 B reclaimed (0 bytes)"


def test_command_table() -> None:
    assert set(COMMANDS) == {"tag", "delete", "prune", "pull", "push", "commit", "build-prune"}
    assert isinstance(COMMANDS["tag"], Tag)
    assert isinstance(COMMANDS["delete"], Delete)
    assert isinstance(COMMANDS["prune"], Prune)
    assert all(isinstance(c, controls.Command) and c.usage for c in COMMANDS.values())
