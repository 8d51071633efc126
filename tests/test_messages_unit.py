"""The engine's message streams: decoding, failures by their words, what a person reads."""

from __future__ import annotations

import errno

import pytest
from hypothesis import given
from hypothesis import strategies as hs

from imagefs.engine import messages
from imagefs.errors import BadParameter, BrokenAnswer, EngineFailed, errno_for

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(("text", "code"), [
    ("manifest for 127.0.0.1:5000/team/nope:1 not found: manifest unknown: manifest unknown", errno.ENOENT),
    ("An image does not exist locally with the tag: 127.0.0.1:5000/x", errno.ENOENT),
    ("pull access denied for x, repository does not exist or may require 'docker login'", errno.ENOENT),
    ('Head "http://127.0.0.1:5001/v2/x/manifests/1": no basic auth credentials', errno.EACCES),
    ("unauthorized: authentication required", errno.EACCES),
    ("Error processing tar file(exit status 1): archive/tar: invalid tar header", errno.EINVAL),
    ("dockerfile parse error line 2: unknown instruction: BOGUS", errno.EINVAL),
    ("open /var/lib/docker/tmp/docker-import-1/etc/json: no such file or directory", errno.EINVAL),
    ("No such container: nope", errno.ENOENT),
    ('Get "https://x/v2/": dial tcp: i/o timeout', errno.ETIMEDOUT),
    ("The command '/bin/sh -c false' returned a non-zero code: 1", errno.EIO),
])
def test_a_failure_is_classed_by_its_words(text: str, code: int) -> None:
    assert errno_for(messages.classed(text, "POST /x")) == code


def test_only_a_500_is_reclassed() -> None:
    assert errno_for(messages.refined(EngineFailed(500, "no basic auth credentials"))) == errno.EACCES
    bad = BadParameter(400, "no basic auth credentials")  # a status that says more than the words
    assert messages.refined(bad) is bad


def test_failure_reads_either_field() -> None:
    assert messages.failure({"errorDetail": {"message": "boom"}, "error": "boom"}) == "boom"
    assert messages.failure({"error": "old style"}) == "old style"
    assert messages.failure({"status": "fine"}) is None


@given(hs.lists(hs.dictionaries(hs.sampled_from(["status", "id", "stream"]), hs.text(max_size=5)), max_size=8),
       hs.integers(1, 7))
def test_lines_decode_whatever_the_pieces(objs: list[dict[str, str]], piece: int) -> None:
    import json
    raw = b"".join(json.dumps(o).encode() + b"\r\n" for o in objs)
    decoder = messages.Decoder("POST /x")
    got = [m for i in range(0, len(raw), piece) for m in decoder.feed(raw[i:i + piece])] + decoder.end()
    assert got == objs


def test_a_line_that_is_not_json_is_a_broken_answer() -> None:
    with pytest.raises(BrokenAnswer):
        messages.Decoder("POST /x").feed(b"<html>\n")
    assert messages.Decoder("POST /x").end() == []


def test_a_transcript_keeps_one_line_per_layer() -> None:
    t = messages.Transcript()
    for m in [{"status": "Pulling from team/app", "id": "1"},
              {"status": "Pulling fs layer", "progressDetail": {}, "id": "abc"},
              {"status": "Downloading", "progressDetail": {"current": 5, "total": 10}, "id": "abc"},
              {"status": "Pull complete", "progressDetail": {}, "id": "abc"},
              {"stream": "Step 1/2 : FROM x"}, {"stream": "\n ---> 123\n"},
              {"aux": {"ID": "sha256:1"}}]:
        t.add(m)
    assert t.text() == "1: Pulling from team/app\nabc: Pull complete\nStep 1/2 : FROM x\n ---> 123\n"
    assert t.aux == [{"ID": "sha256:1"}]


def test_a_last_line_without_its_newline_counts() -> None:
    transcript = messages.Transcript()  # podman's load says its one line so
    transcript.add({"stream": "Loaded image: docker.io/myorg/app:1.0"})
    assert transcript.lines == ["Loaded image: docker.io/myorg/app:1.0"]
    assert transcript.text() == "Loaded image: docker.io/myorg/app:1.0\n"


def test_a_transcripts_progress_counts_layers_and_bytes() -> None:
    t = messages.Transcript()
    for m in [{"status": "Pulling from team/app", "id": "1"},
              {"status": "Already exists", "id": "aaa"},  # sent without progressDetail
              {"status": "Downloading", "progressDetail": {"current": 5, "total": 10}, "id": "bbb"},
              {"status": "Pushing", "progressDetail": {"current": 30, "total": 20}, "id": "ccc"}]:
        t.add(m)
    assert t.facts() == {"layers": "1/3", "bytes": "25/30"}  # a push's current past its total counts as total
    t.add({"status": "Extracting", "progressDetail": {"current": 1, "total": 10}, "id": "bbb"})
    t.add({"status": "Pull complete", "progressDetail": {}, "id": "bbb"})
    assert t.facts() == {"layers": "2/3", "bytes": "30/30"}
    assert messages.Transcript().facts() == {}


def test_an_index_without_search_is_enotsup() -> None:
    assert errno_for(messages.search_refined(EngineFailed(500, "Unexpected status code 404"))) == errno.ENOTSUP
    dead = EngineFailed(500, 'invalid registry endpoint "http://127.0.0.1:5999/v1/"')
    assert messages.search_refined(dead) is dead
