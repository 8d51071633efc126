"""HTTP/1 body framing without sockets: bytes are fed to the decoder in arbitrary pieces.

The pieces are fed the two ways bulkget does: into one buffer that keeps growing, the payload
moved down in place over the framing, and piece by piece with the unfinished line carried over.
"""

from __future__ import annotations

import itertools
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as stg

from imagefs.engine.framing import MAX_LINE, Decoder, State, parse_head
from imagefs.errors import BrokenAnswer, EngineUnreachable

CHUNKED = {"transfer-encoding": "chunked"}


def chunked(payload: bytes, sizes: list[int], extension: bytes = b"", trailer: bytes = b"") -> bytes:
    wire, pos, i = bytearray(), 0, 0
    while pos < len(payload):
        n = max(1, sizes[i % len(sizes)]) if sizes else len(payload)
        piece = payload[pos : pos + n]
        wire += b"%x%s\r\n%s\r\n" % (len(piece), extension, piece)
        pos, i = pos + n, i + 1
    return bytes(wire + b"0\r\n" + trailer + b"\r\n")


def cut_points(wire: bytes, cuts: list[int]) -> list[int]:
    return sorted({c % (len(wire) + 1) for c in cuts} | {len(wire)})


def in_one_buffer(decoder: Decoder, wire: bytes, cuts: list[int], close: bool = False) -> bytes:
    """The payload, decoded in place as the wire 'arrives' up to each cut."""
    view = memoryview(bytearray(wire))
    pos = out = 0
    for end in cut_points(wire, cuts):
        pos, out = decoder.feed(view, pos, end, out)
    if close:
        decoder.closed()
    return bytes(view[:out])


def piece_by_piece(decoder: Decoder, wire: bytes, cuts: list[int], close: bool = False) -> bytes:
    """The payload, each piece decoded after what was left of the one before."""
    payload, left = bytearray(), b""
    for a, b in itertools.pairwise([0, *cut_points(wire, cuts)]):
        view = memoryview(bytearray(left + wire[a:b]))
        pos, out = decoder.feed(view, 0, len(view), 0)
        payload += view[:out]
        left = bytes(view[pos:])
    if close:
        decoder.closed()
    return bytes(payload)


payloads = stg.builds(lambda n, seed: random.Random(seed).randbytes(n), stg.integers(0, 20_000), stg.integers())
cuts = stg.lists(stg.integers(0, 30_000), max_size=40)


@settings(max_examples=300, deadline=None)
@given(payload=payloads, sizes=stg.lists(stg.integers(1, 5000), min_size=1, max_size=8), cuts=cuts,
       extension=stg.sampled_from([b"", b";name=value", b" ; x"]),
       trailer=stg.sampled_from([b"", b"X-Trailer: 1\r\n"]), whole=stg.booleans())
def test_chunked_bodies_decode_whole(payload: bytes, sizes: list[int], cuts: list[int], extension: bytes,
                                     trailer: bytes, whole: bool) -> None:
    # Bytes after the terminal chunk are not body: the end is the framing's, not the connection's.
    wire = chunked(payload, sizes, extension, trailer) + b"HTTP/1.1 200 next"
    decoder = Decoder(CHUNKED, "GET /x")
    assert (in_one_buffer if whole else piece_by_piece)(decoder, wire, cuts) == payload
    assert decoder.done and decoder.received == len(payload)


@settings(max_examples=150, deadline=None)
@given(payload=payloads, cuts=cuts, whole=stg.booleans())
def test_sized_and_closed_bodies_decode_whole(payload: bytes, cuts: list[int], whole: bool) -> None:
    decode = in_one_buffer if whole else piece_by_piece
    sized = Decoder({"content-length": str(len(payload))}, "GET /x")
    assert decode(sized, payload + b"junk", cuts) == payload and sized.done
    closed = Decoder({}, "GET /x")
    assert decode(closed, payload, cuts, close=True) == payload and closed.done


@pytest.mark.parametrize(
    ("wire", "error"),
    [
        (b"10\r\n0123456789abcdef\r\n", EngineUnreachable),  # closed before the terminal chunk
        (b"10\r\n01234567", EngineUnreachable),  # closed inside a chunk
        (b"zz\r\nxx\r\n0\r\n\r\n", BrokenAnswer),
        (b"-1\r\nx\r\n0\r\n\r\n", BrokenAnswer),
        (b"2\r\nabc\r\n0\r\n\r\n", BrokenAnswer),  # more data than the chunk size said
        (b"1" * 2000 + b"\r\n", BrokenAnswer),  # a size line that never ends
        (b"1" * MAX_LINE, BrokenAnswer),  # ... even before its end arrives
    ],
)
def test_broken_chunked_bodies_fail(wire: bytes, error: type[Exception]) -> None:
    with pytest.raises(error):
        in_one_buffer(Decoder(CHUNKED, "GET /x"), wire, [], close=True)


def test_an_early_close_says_how_far_the_body_got() -> None:
    decoder = Decoder({"content-length": "10"}, "GET /x")
    with pytest.raises(EngineUnreachable, match=r"GET /x: .* 3 bytes into the body"):
        in_one_buffer(decoder, b"abc", [], close=True)


def test_states_are_explicit() -> None:
    decoder = Decoder(CHUNKED, "GET /x")
    view = memoryview(bytearray(b"3\r\nabc\r\n0\r\n"))
    steps = [(3, State.CHUNK_DATA), (6, State.CHUNK_END), (8, State.CHUNK_SIZE), (11, State.TRAILERS)]
    pos = out = 0
    for end, state in steps:
        pos, out = decoder.feed(view, pos, end, out)
        assert decoder.state is state
    assert Decoder({"content-length": "0"}, "GET /x").done
    assert not Decoder({"content-length": "1"}, "GET /x").chunked


def test_splicing_counts_the_same_bytes() -> None:
    # The splice path takes raw bytes by `want`/`take` instead of `feed`.
    decoder = Decoder({"content-length": "5"}, "GET /x")
    assert decoder.want(1 << 20) == 5
    decoder.take(3)
    assert decoder.want(1 << 20) == 2 and not decoder.done
    decoder.take(2)
    assert decoder.done and decoder.received == 5


@pytest.mark.parametrize("length", ["x", "-1", "5, 5", "²"])
def test_a_bad_content_length_is_refused(length: str) -> None:
    with pytest.raises(BrokenAnswer, match="Content-Length"):
        Decoder({"content-length": length}, "GET /x")


def test_unknown_transfer_encodings_are_refused() -> None:
    with pytest.raises(BrokenAnswer, match="gzip"):
        Decoder({"transfer-encoding": "gzip"}, "GET /x")


def test_a_head_is_parsed() -> None:
    status, headers = parse_head(b"HTTP/1.0 404 Not Found\r\nContent-Type: application/json\r\nX-A:b", "GET /x")
    assert status == 404 and headers == {"content-type": "application/json", "x-a": "b"}


@pytest.mark.parametrize(
    "head",
    [
        b"HTTP/2 200 OK",
        b"HTTP/1.1 abc OK",
        b"HTTP/1.1 100 Continue",  # never asked for: not the answer
        b"HTTP/1.1 200 OK\r\nno colon here",
    ],
)
def test_bad_heads_are_refused(head: bytes) -> None:
    with pytest.raises(BrokenAnswer):
        parse_head(head, "GET /x")
