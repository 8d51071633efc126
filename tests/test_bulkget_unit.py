"""The export streams' I/O: bodies received into buffers or spliced, heads, timeouts, cancellations.

The bytes come through a real socket pair from a thread that sends them in arbitrary
fragments; the framing alone is tested in test_framing_unit.py, the engine's own streams in
test_exports.py.
"""

from __future__ import annotations

import errno
import itertools
import json
import os
import queue
import random
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import trio
from conftest import wait_for
from hypothesis import given, settings
from hypothesis import strategies as stg
from test_framing_unit import chunked

from imagefs.engine import Engine, EngineConfig, bulkget
from imagefs.engine.bulkget import MIN_RECV, Body, _Connection, _read_head
from imagefs.engine.framing import MAX_HEAD, Decoder
from imagefs.errors import BrokenAnswer, Closing, EngineTimeout, EngineUnreachable, ImagefsError, NoSuchImage

SMALLEST = MIN_RECV + MAX_HEAD


@contextmanager
def peer(fragments: list[bytes], close: bool = True) -> Iterator[socket.socket]:
    """Our end of a socket pair whose other end sends `fragments`, then closes (or stays open)."""
    ours, theirs = socket.socketpair()
    stay = threading.Event()

    def send() -> None:
        for fragment in fragments:
            theirs.sendall(fragment)
        if not close:
            stay.wait(10)
        theirs.close()

    sender = threading.Thread(target=send)
    sender.start()
    try:
        yield ours
    finally:
        stay.set()
        ours.close()
        sender.join()


def make_body(sock: socket.socket, headers: dict[str, str], rest: bytes = b"") -> Body:
    conn = _Connection()
    conn.sock = sock
    return Body(conn, trio.CapacityLimiter(1), 200, Decoder(headers, "GET /test"), rest)


def read_body(sock: socket.socket, headers: dict[str, str], rest: bytes = b"", size: int = SMALLEST) -> bytes:
    body = make_body(sock, headers, rest)
    buffer = bytearray(size)
    out = bytearray()
    while payload := body._read_into(buffer):
        out += payload
    return bytes(out)


def split(wire: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(wire) + 1) for c in cuts} | {0, len(wire)})
    return [wire[a:b] for a, b in itertools.pairwise(points) if b > a]


# Sizes up to several buffers, with bytes that show any misplaced piece.
payloads = stg.builds(lambda n, seed: random.Random(seed).randbytes(n), stg.integers(0, 300_000), stg.integers())


@settings(max_examples=150, deadline=None)
@given(
    payload=payloads,
    sizes=stg.lists(stg.integers(1, 70_000), min_size=1, max_size=8),
    cuts=stg.lists(stg.integers(0, 400_000), max_size=30),
    extension=stg.sampled_from([b"", b";name=value", b" ; x"]),
    trailer=stg.sampled_from([b"", b"X-Trailer: 1\r\n"]),
    extra=stg.integers(0, 3 * MIN_RECV),
    head=stg.integers(0, MAX_HEAD),
)
def test_chunked_bodies_arrive_whole(payload: bytes, sizes: list[int], cuts: list[int], extension: bytes,
                                     trailer: bytes, extra: int, head: int) -> None:
    wire = chunked(payload, sizes, extension, trailer)
    rest, wire = wire[:head], wire[head:]  # what arrived with the headers
    # The connection stays open after the body: its end is the terminal chunk, not EOF.
    with peer(split(wire, cuts), close=False) as sock:
        assert read_body(sock, {"transfer-encoding": "chunked"}, rest, SMALLEST + extra) == payload


@settings(max_examples=50, deadline=None)
@given(payload=payloads, cuts=stg.lists(stg.integers(0, 300_000), max_size=10))
def test_sized_and_closed_bodies(payload: bytes, cuts: list[int]) -> None:
    with peer(split(payload, cuts), close=False) as sock:
        assert read_body(sock, {"content-length": str(len(payload))}) == payload
    with peer(split(payload, cuts)) as sock:
        assert read_body(sock, {}) == payload


@pytest.mark.parametrize(
    ("wire", "error"),
    [
        (b"10\r\n0123456789abcdef\r\n", EngineUnreachable),  # closed before the terminal chunk
        (b"2\r\nabc\r\n0\r\n\r\n", BrokenAnswer),  # more data than the chunk size said
    ],
)
def test_broken_chunked_streams_fail(wire: bytes, error: type[Exception]) -> None:
    with peer([wire]) as sock, pytest.raises(error):
        read_body(sock, {"transfer-encoding": "chunked"})


def test_a_short_sized_body_fails() -> None:
    with peer([b"abc"]) as sock, pytest.raises(EngineUnreachable, match="3 bytes into the body"):
        read_body(sock, {"content-length": "10"})


def serve_once(path: Path, answer: bytes, then_wait: threading.Event | None = None,
               requests: list[bytes] | None = None) -> threading.Thread:
    """A unix socket that answers one request (kept in `requests`) with `answer` and closes (once
    `then_wait` is set)."""
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    server.listen(1)

    def run() -> None:
        conn, _ = server.accept()
        with conn, server:
            request = b""
            while b"\r\n\r\n" not in request:
                request += conn.recv(4096)
            if requests is not None:
                requests.append(request)
            conn.sendall(answer)
            if then_wait is not None:
                then_wait.wait(10)

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_an_error_status_carries_the_engines_message(tmp_path: Path) -> None:
    message = json.dumps({"message": "No such image: nope:1"}).encode()
    answer = b"HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (
        len(message), message)
    thread = serve_once(tmp_path / "d.sock", answer)
    engine = Engine(EngineConfig(host=f"unix://{tmp_path / 'd.sock'}"), api_path="/v1.41")

    async def export() -> None:
        async with engine.bulk_get("/images/nope:1/get", []):
            pass

    with pytest.raises(NoSuchImage, match="No such image: nope:1"):
        trio.run(export)
    thread.join()


def test_pump_hands_over_every_buffer_in_order(tmp_path: Path) -> None:
    payload = os.urandom(3 * SMALLEST + 12345)
    wire = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked(payload, [32768])
    thread = serve_once(tmp_path / "d.sock", wire)
    engine = Engine(EngineConfig(host=f"unix://{tmp_path / 'd.sock'}"), api_path="/v1.41")
    got = bytearray()

    async def export() -> None:
        buffers: queue.SimpleQueue[bytearray | None] = queue.SimpleQueue()
        for _ in range(2):
            buffers.put(bytearray(SMALLEST))
        ended = trio.Event()

        def deliver(buffer: bytearray, data: memoryview) -> None:
            got.extend(data)
            buffers.put(buffer)
            if not data:
                ended.set()

        async with engine.bulk_get("/images/x/get", []) as body:
            await body._pump(buffers, deliver)
        assert ended.is_set()

    trio.run(export)
    thread.join()
    assert bytes(got) == payload


def test_a_silent_engine_times_out(tmp_path: Path) -> None:
    release = threading.Event()
    thread = serve_once(tmp_path / "d.sock", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nabcd\r\n",
                        release)
    engine = Engine(EngineConfig(host=f"unix://{tmp_path / 'd.sock'}", stream_timeout=0.3), api_path="/v1.41")
    buffers: queue.SimpleQueue[bytearray | None] = queue.SimpleQueue()
    buffers.put(bytearray(SMALLEST))

    async def export() -> None:
        async with engine.bulk_get("/images/x/get", []) as body:
            await body._pump(buffers, lambda buffer, data: None)

    try:
        with pytest.raises(EngineTimeout):
            trio.run(export)
    finally:
        release.set()
        thread.join()


def test_a_buffer_of_nothing_but_framing() -> None:
    # Trailers fill whole buffers without a payload byte: the unfinished line moves to the front.
    trailers = b"".join(b"X-T%d: %s\r\n" % (i, b"a" * 990) for i in range(300))
    with peer([b"3\r\nabc\r\n0\r\n" + trailers + b"\r\n"], close=False) as sock:
        assert read_body(sock, {"transfer-encoding": "chunked"}) == b"abc"


def test_headers_arrive_in_pieces() -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/x-tar\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhe"
    with peer([head[i : i + 7] for i in range(0, len(head), 7)]) as sock:
        got, rest = _read_head(sock, "GET /x")
    # The head ends inside a piece; how much of the body has arrived with it is up to the scheduler.
    assert got == head[: head.index(b"\r\n\r\n")] and b"5\r\nhe".startswith(rest)


def test_a_head_too_long_is_refused() -> None:
    with peer([b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * MAX_HEAD + b"\r\n\r\n"]) as sock, pytest.raises(BrokenAnswer):
        _read_head(sock, "GET /x")


def test_a_head_cut_short_is_unreachable() -> None:
    with peer([b"HTTP/1.1 200 OK\r\n"]) as sock, pytest.raises(EngineUnreachable, match="before answering"):
        _read_head(sock, "GET /x")


def record_connections(monkeypatch: pytest.MonkeyPatch) -> list[_Connection]:
    """The connections bulkget makes from now on, in order."""
    made: list[_Connection] = []

    class Recorded(_Connection):
        def __init__(self) -> None:
            super().__init__()
            made.append(self)

    monkeypatch.setattr(bulkget, "_Connection", Recorded)
    return made


@pytest.mark.parametrize("waiting_for", ["the engine", "a free buffer"])
def test_a_cancelled_pump_leaves_no_thread_on_the_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         waiting_for: str) -> None:
    made = record_connections(monkeypatch)
    release = threading.Event()
    thread = serve_once(tmp_path / "d.sock", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nabcd\r\n",
                        release)
    engine = Engine(EngineConfig(host=f"unix://{tmp_path / 'd.sock'}"), api_path="/v1.41")
    buffers: queue.SimpleQueue[bytearray | None] = queue.SimpleQueue()
    if waiting_for == "the engine":
        buffers.put(bytearray(SMALLEST))

    async def export() -> None:
        with trio.move_on_after(0.3):
            async with engine.bulk_get("/images/x/get", []) as body:
                await body._pump(buffers, lambda buffer, data: None)

    try:
        trio.run(export)
        # The thread was left behind blocked; it must wake, leave, and close the socket as the last user.
        wait_for(lambda: made[0].sock is not None and made[0].sock.fileno() == -1)
    finally:
        release.set()
        thread.join()


def test_the_socket_closes_only_when_its_last_thread_leaves() -> None:
    ours, theirs = socket.socketpair()
    conn = _Connection()
    conn.sock = ours
    inside, leave = threading.Event(), threading.Event()

    def reader() -> None:
        with conn.use("GET /x"):
            inside.set()
            leave.wait(5)

    t = threading.Thread(target=reader)
    t.start()
    inside.wait(5)
    conn.close()
    assert ours.fileno() != -1 and theirs.recv(1) == b""  # shut down (the peer sees the end), not closed
    leave.set()
    t.join()
    assert ours.fileno() == -1
    with pytest.raises(Closing), conn.use("GET /x"):
        pass
    theirs.close()


# --- spliced bodies (HTTP/1.0: sized or ended by the close) ------------------------------------


def splice_body(sock: socket.socket, headers: dict[str, str], rest: bytes = b"") -> tuple[bytes, int]:
    """The file a body was spliced into, and the byte count its progress reports add up to."""
    body = make_body(sock, headers, rest)
    fd = os.memfd_create("spool")
    reported: list[int] = []
    try:
        trio.run(body._splice_into, fd, reported.append)
        return os.pread(fd, 1 << 30, 0), sum(reported)
    finally:
        os.close(fd)


@settings(max_examples=60, deadline=None)
@given(payload=payloads, cuts=stg.lists(stg.integers(0, 300_000), max_size=10), head=stg.integers(0, 5000),
       timeout=stg.sampled_from([None, 5.0]))
def test_spliced_bodies_arrive_whole(payload: bytes, cuts: list[int], head: int, timeout: float | None) -> None:
    rest, wire = payload[:head], payload[head:]  # what arrived with the headers
    with peer(split(wire, cuts), close=False) as sock:
        sock.settimeout(timeout)  # with a timeout the socket is non-blocking: splice waits in select
        assert splice_body(sock, {"content-length": str(len(payload))}, rest) == (payload, len(payload))
    with peer(split(wire, cuts)) as sock:
        sock.settimeout(timeout)
        assert splice_body(sock, {}, rest) == (payload, len(payload))


def test_bytes_past_the_content_length_are_not_spliced() -> None:
    with peer([b"fgh"]) as sock:
        assert splice_body(sock, {"content-length": "5"}, b"abcde-junk") == (b"abcde", 5)


def test_a_short_sized_body_fails_when_spliced() -> None:
    with peer([b"abc"]) as sock, pytest.raises(EngineUnreachable, match="3 bytes into the body"):
        splice_body(sock, {"content-length": "10"})


def test_only_a_plain_body_is_spliced() -> None:
    with peer([]) as sock:
        assert make_body(sock, {"content-length": "1"})._spliceable
        assert not make_body(sock, {"transfer-encoding": "chunked"})._spliceable


def test_a_chunked_body_is_written_through_buffers(tmp_path: Path) -> None:
    payload = os.urandom(2 * SMALLEST + 999)
    thread = serve_once(tmp_path / "d.sock", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                        + chunked(payload, [70_000, 3]))
    engine = Engine(EngineConfig(host=f"unix://{tmp_path / 'd.sock'}"), api_path="/v1.41")
    fd = os.memfd_create("spool")
    reported: list[int] = []

    async def export() -> None:
        async with engine.bulk_get("/images/x/get", []) as body:
            await body.write_into(fd, reported.append)

    try:
        trio.run(export)
        assert os.pread(fd, len(payload) + 1, 0) == payload and sum(reported) == len(payload)
    finally:
        os.close(fd)
        thread.join()


@pytest.mark.parametrize("chunks", [False, True])
def test_the_spools_own_failures_stay_oserrors(chunks: bool) -> None:
    # A full spool disk is the spool's ENOSPC, not an engine failure (spliced, or through buffers).
    wire = chunked(b"abcdef", [2]) if chunks else b"abcdef"
    headers = {"transfer-encoding": "chunked"} if chunks else {"content-length": "6"}
    fd = os.open("/dev/full", os.O_WRONLY)
    try:
        with peer([wire[3:]], close=False) as sock, pytest.raises(OSError) as info:
            trio.run(make_body(sock, headers, wire[:3]).write_into, fd, lambda n: None)
    finally:
        os.close(fd)
    assert info.value.errno == errno.ENOSPC and not isinstance(info.value, ImagefsError)


def test_the_request_is_http_1_0_and_its_body_is_spliced(tmp_path: Path) -> None:
    payload = os.urandom(3 << 20)
    requests: list[bytes] = []
    thread = serve_once(tmp_path / "d.sock", b"HTTP/1.0 200 OK\r\nContent-Type: application/x-tar\r\n\r\n" + payload,
                        requests=requests)
    engine = Engine(EngineConfig(host=f"unix://{tmp_path / 'd.sock'}", stream_timeout=5), api_path="/v1.41")
    fd = os.memfd_create("spool")

    async def export() -> None:
        async with engine.bulk_get("/images/x/get", []) as body:
            assert body._spliceable
            await body.write_into(fd, lambda n: None)

    try:
        trio.run(export)
        assert os.pread(fd, len(payload) + 1, 0) == payload
    finally:
        os.close(fd)
        thread.join()
    # HTTP/1.1 would have the engine frame the body in chunks, which cannot be spliced.
    assert requests[0].startswith(b"GET /v1.41/images/x/get HTTP/1.0\r\n")


def test_a_silent_engine_times_out_when_spliced(tmp_path: Path) -> None:
    release = threading.Event()
    thread = serve_once(tmp_path / "d.sock", b"HTTP/1.0 200 OK\r\nContent-Length: 100\r\n\r\nabcd", release)
    engine = Engine(EngineConfig(host=f"unix://{tmp_path / 'd.sock'}", stream_timeout=0.3), api_path="/v1.41")
    fd = os.memfd_create("spool")

    async def export() -> None:
        async with engine.bulk_get("/images/x/get", []) as body:
            await body._splice_into(fd, lambda n: None)

    try:
        with pytest.raises(EngineTimeout):
            trio.run(export)
    finally:
        os.close(fd)
        release.set()
        thread.join()


def test_a_cancelled_splice_leaves_no_thread_and_no_descriptor(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    made = record_connections(monkeypatch)
    release = threading.Event()
    thread = serve_once(tmp_path / "d.sock", b"HTTP/1.0 200 OK\r\n\r\nabcd", release)
    engine = Engine(EngineConfig(host=f"unix://{tmp_path / 'd.sock'}"), api_path="/v1.41")
    spool = tmp_path / "spool"
    fd = os.open(spool, os.O_RDWR | os.O_CREAT, 0o600)

    def holders() -> list[str]:
        return [n for n in os.listdir("/proc/self/fd") if os.path.realpath(f"/proc/self/fd/{n}") == str(spool)]

    async def export() -> None:
        arrived = trio.Event()
        async with trio.open_nursery() as nursery, engine.bulk_get("/images/x/get", []) as body:
            nursery.start_soon(body._splice_into, fd, lambda n: arrived.set())
            await arrived.wait()  # the thread is splicing: now leave it behind
            nursery.cancel_scope.cancel()

    try:
        trio.run(export)
        # The thread left behind wakes (its socket is shut down), closes the socket as its last
        # user and its own descriptor of the spool: only the caller's is left.
        wait_for(lambda: made[0].sock is not None and made[0].sock.fileno() == -1)
        wait_for(lambda: holders() == [str(fd)])
        assert spool.read_bytes() == b"abcd"
    finally:
        os.close(fd)
        release.set()
        thread.join()
