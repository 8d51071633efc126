"""A GET whose long body goes straight from the socket into a file, or into the caller's reused buffers.

The export streams are the one place where the HTTP client's own cost shows: httpx
(httpcore + h11) hands the body over in fresh 64 KiB `bytes` and parses it in
Python, and trio wakes once per ~32 KiB chunk the engine writes. On a 2-core
machine where the engine needs most of both cores, a 512 MiB stream read that way
into a file took 3.7 s where curl took 2.2 s. Here the request is HTTP/1.0, so the
engine sends the body as it is (no chunk framing) and ends it by closing the
connection, and one worker thread splices it socket → pipe → file: no byte passes
through Python, and the daemon's export of 512 MiB keeps pace with curl writing
nothing (2.07–2.20 s against 2.08–2.22 s). The price is that a crash mid-stream looks
like an end: the caller must check the body itself (exports: tarcheck). Over TLS,
which cannot splice, or for a chunked answer, one thread reads the body into reused
buffers (`pump`) that a second one writes (`write_into` picks).
Everything else, the event stream included, stays on httpx.

Only what a Docker engine sends is understood: HTTP/1.x, a chunked, sized or
closed-delimited body, no compression (the request asks for none).
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import math
import os
import queue
import re
import select
import socket
import ssl
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import TYPE_CHECKING
from urllib.parse import urlencode

import trio

from .errors import BrokenAnswer, EngineTimeout, EngineUnreachable

if TYPE_CHECKING:
    from .engine import Endpoint

MAX_HEAD = 64 * 1024  # status line and headers
MAX_LINE = 1024  # a chunk-size line or a trailer line
MIN_RECV = 64 * 1024  # a buffer with less room than this goes back to the caller
PIPE_BYTES = 1 << 20  # what one splice moves at most (the pipe is made this large where the kernel allows)
BUFFER_BYTES = 1 << 20  # a body that cannot be spliced (TLS, chunks) is received into buffers of this size
FILE_BUFFERS = 6  # per body written to a file that way: the memory for it, how far the socket may run ahead
_HEX = re.compile(rb"[0-9A-Fa-f]{1,16}")
_DIGITS = re.compile(r"[0-9]{1,19}")
Deliver = Callable[[bytearray, memoryview], None]


class Body:
    """The body of one response: written to a file by `write_into` (a long one), or read by
    `read_all` (a short one)."""

    def __init__(self, conn: _Connection, limiter: trio.CapacityLimiter, request: str, status: int,
                 headers: dict[str, str], rest: bytes) -> None:
        self.status = status
        self._conn = conn
        self._limiter = limiter
        self._request = request
        self._carry = rest  # received bytes not yet looked at: the start of the body, then a partial frame line
        self._done = False
        self._received = 0  # payload bytes handed out
        encoding = headers.get("transfer-encoding", "").lower()
        if encoding and encoding != "chunked":
            raise BrokenAnswer(f"unsupported transfer-encoding {encoding!r}", request)
        length = headers.get("content-length")
        if encoding:
            self._left: int | None = 0  # in the current chunk
            self._state = "size"
        elif length is not None:
            if not _DIGITS.fullmatch(length.strip()):
                raise BrokenAnswer(f"bad Content-Length {length[:40]!r}", request)
            self._left = int(length)
            self._state = "sized"
            self._done = self._left == 0
        else:
            self._left = None
            self._state = "close"  # the body ends when the peer closes

    async def pump(self, buffers: queue.SimpleQueue[bytearray | None], deliver: Deliver) -> None:
        """Fill buffers taken from `buffers` with the body, handing each to `deliver` in the event loop.

        One worker thread reads the whole body, so the socket is drained while the loop works; it
        waits only for a free buffer (the caller's backpressure), never for the loop. The last
        delivery has an empty payload. `deliver` must not raise; it may be called after a
        cancellation, until the connection is closed.
        """
        token = trio.lowlevel.current_trio_token()

        def run() -> None:
            with self._conn.use(self._request):
                while (buffer := buffers.get()) is not None:
                    payload = self._read_into(buffer)
                    token.run_sync_soon(deliver, buffer, payload)
                    if not payload:
                        return

        try:
            await trio.to_thread.run_sync(run, abandon_on_cancel=True, limiter=self._limiter)
        finally:
            buffers.put(None)  # a thread left behind stops at its next buffer

    async def write_into(self, fd: int, progress: Callable[[int], None]) -> None:
        """Write the whole body to file `fd` at its offset, spliced where it can be; each step's byte
        count goes to `progress` in the event loop, the last one before this returns."""
        if self.spliceable:
            await self.splice_into(fd, progress)
        else:
            await self._pump_into(fd, progress)

    async def _pump_into(self, fd: int, progress: Callable[[int], None]) -> None:
        """`pump` into buffers while a second thread writes each one to `fd` (TLS, chunked bodies)."""
        # Unbounded, but never holds more than the buffers there are: those are the backpressure.
        full, filled = trio.open_memory_channel[tuple[bytearray, memoryview]](math.inf)
        buffers: queue.SimpleQueue[bytearray | None] = queue.SimpleQueue()
        for _ in range(FILE_BUFFERS):
            buffers.put(bytearray(BUFFER_BYTES))

        def deliver(buffer: bytearray, payload: memoryview) -> None:
            with contextlib.suppress(trio.ClosedResourceError, trio.BrokenResourceError):  # ended meanwhile
                full.send_nowait((buffer, payload))

        async def writer() -> None:
            async for buffer, payload in filled:
                if not payload:
                    return
                await trio.to_thread.run_sync(_write_all, fd, payload)
                progress(payload.nbytes)
                buffers.put(buffer)

        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(writer)
                await self.pump(buffers, deliver)
        except BaseExceptionGroup as group:
            # One failure is the story; the other task was only cancelled because of it.
            failure, _ = group.split(Exception)
            while isinstance(failure, BaseExceptionGroup):
                failure = failure.exceptions[0]
            if failure is None:
                raise
            raise failure from None
        finally:
            full.close()

    @property
    def spliceable(self) -> bool:
        """The body can go to a file by `splice_into`: plain bytes (not chunked) on a socket that is not TLS."""
        return self._state in ("sized", "close") and not isinstance(self._conn.sock, ssl.SSLSocket)

    async def splice_into(self, fd: int, progress: Callable[[int], None]) -> None:
        """Move the whole body into file `fd` at its offset with splice(2); each step's byte count
        goes to `progress` in the event loop, the last one before this returns.

        The thread writes through a descriptor of its own, which it closes: one left behind by a
        cancellation must not write into a number the loop has since given to another file.
        """
        if not self.spliceable:
            raise ValueError("a chunked or TLS body cannot be spliced")
        token = trio.lowlevel.current_trio_token()
        own = os.dup(fd)
        claim = threading.Lock()  # who holds it closes `own`: the thread, or (if it never began) the loop

        def run() -> None:
            if not claim.acquire(blocking=False):
                return
            try:
                with self._conn.use(self._request):
                    self._splice(own, lambda n: token.run_sync_soon(progress, n))
            finally:
                os.close(own)

        try:
            await trio.to_thread.run_sync(run, abandon_on_cancel=True, limiter=self._limiter)
        except BaseException:
            if claim.acquire(blocking=False):  # cancelled before the thread began
                os.close(own)
            raise

    def _splice(self, fd: int, progress: Callable[[int], None]) -> None:
        sock = self._conn.sock
        assert sock is not None, "a body without a connected socket"
        if self._carry:
            # Past a Content-Length's end nothing is body (as `_parse` leaves it too).
            first = self._carry if self._left is None else self._carry[: self._left]
            self._account(len(first))
            _write_all(fd, first)
            progress(len(first))
            self._carry = b""
        timeout = sock.gettimeout()  # with a timeout, Python keeps the socket non-blocking
        waiting = select.poll()
        waiting.register(sock, select.POLLIN)
        r, w = os.pipe()
        try:
            with contextlib.suppress(OSError):  # a smaller pipe only means more steps
                fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, PIPE_BYTES)
            while not self._done:
                want = PIPE_BYTES if self._left is None else min(PIPE_BYTES, self._left)
                with _mapped(self._request):  # the file's own failures stay OSErrors: the spool's, not the engine's
                    try:
                        got = os.splice(sock.fileno(), w, want)
                    except BlockingIOError:
                        if not waiting.poll(None if timeout is None else timeout * 1000):
                            raise TimeoutError from None
                        continue
                if got == 0:
                    if self._state != "close":
                        raise EngineUnreachable(f"{self._request}: the engine closed the connection "
                                                f"{self._received} bytes into the body")
                    self._done = True
                    break
                self._account(got)
                left = got
                while left:
                    left -= os.splice(r, fd, left)
                progress(got)
        finally:
            os.close(r)
            os.close(w)

    def _account(self, n: int) -> None:
        """`n` more bytes of a sized or closed-delimited body were taken."""
        self._received += n
        if self._left is not None:
            self._left -= n
            self._done = self._left == 0

    async def read_all(self, limit: int) -> bytes:
        """The whole (short) body, e.g. an error message."""

        def run() -> bytes:
            with self._conn.use(self._request):
                return self._read_all(limit)

        return await trio.to_thread.run_sync(run, abandon_on_cancel=True, limiter=self._limiter)

    def _read_into(self, buffer: bytearray) -> memoryview:
        """The next payload bytes, gathered at the start of `buffer` (chunk framing squeezed out
        in place); empty once the body has ended."""
        if len(buffer) < MIN_RECV + MAX_HEAD:
            raise ValueError("buffer too small")
        sock = self._conn.sock
        assert sock is not None, "a body without a connected socket"
        view = memoryview(buffer)
        filled = len(self._carry)
        view[:filled] = self._carry
        parsed = out = 0  # bytes looked at; payload bytes gathered at the start
        while not self._done:
            parsed, out = self._parse(view, parsed, filled, out)
            if self._done:
                break
            if len(buffer) - filled < MIN_RECV:
                if out:
                    break
                # Only framing so far: keep its unfinished line and reuse the room.
                tail = bytes(view[parsed:filled])
                view[: len(tail)] = tail
                filled, parsed = len(tail), 0
            with _mapped(self._request):
                got = sock.recv_into(view[filled:])
            if got == 0:
                if self._state != "close":
                    raise EngineUnreachable(f"{self._request}: the engine closed the connection "
                                            f"{self._received} bytes into the body")
                self._done = True
            filled += got
        self._carry = bytes(view[parsed:filled])
        return view[:out]

    def _read_all(self, limit: int) -> bytes:
        out = bytearray()
        buffer = bytearray(MIN_RECV + MAX_HEAD)
        while (payload := self._read_into(buffer)) and len(out) <= limit:
            out += payload
        return bytes(out[:limit])

    def _parse(self, view: memoryview, pos: int, end: int, out: int) -> tuple[int, int]:
        """Consume view[pos:end], moving payload down to view[out:]; return the new (pos, out).

        What is left at pos is the start of a framing line that has not fully arrived.
        """
        while pos < end and not self._done:
            if self._state in ("sized", "data", "close"):
                take = end - pos if self._left is None else min(self._left, end - pos)
                if out != pos:
                    view[out : out + take] = view[pos : pos + take]  # memmove: the regions may overlap
                out += take
                pos += take
                self._received += take
                if self._left is not None:
                    self._left -= take
                    if self._left == 0:
                        self._done = self._state == "sized"
                        self._state = "crlf"
                continue
            line_end = bytes(view[pos : min(end, pos + MAX_LINE + 2)]).find(b"\r\n")
            if line_end < 0:
                if end - pos >= MAX_LINE:
                    raise BrokenAnswer("a chunk framing line longer than 1 KiB", self._request)
                return pos, out
            line = bytes(view[pos : pos + line_end])
            pos += line_end + 2
            if self._state == "crlf":
                if line:
                    raise BrokenAnswer("chunk data longer than its size", self._request)
                self._state = "size"
            elif self._state == "size":
                digits = line.split(b";", 1)[0].strip()
                if not _HEX.fullmatch(digits):
                    raise BrokenAnswer(f"bad chunk size line {line[:40]!r}", self._request)
                self._left = int(digits, 16)
                self._state = "data" if self._left else "trailer"
            elif not line:  # the empty line after the trailers ends the body
                self._done = True
        return pos, out


class _Connection:
    """A socket that worker threads use and the event loop closes.

    A thread may still be inside a call on it when the loop gives up on that thread (a
    cancellation): the loop then only shuts the socket down, which wakes the thread, and the
    last thread out closes it, so its descriptor's number cannot pass to another socket while
    a thread might still read from it.
    """

    def __init__(self) -> None:
        self.sock: socket.socket | None = None
        self._lock = threading.Lock()
        self._users = 0
        self._closing = False

    @contextmanager
    def use(self, request: str) -> Iterator[None]:
        with self._lock:
            if self._closing:
                raise EngineUnreachable(f"{request}: the connection was closed")
            self._users += 1
        try:
            yield
        finally:
            with self._lock:
                self._users -= 1
                last = self._closing and self._users == 0
            if last and self.sock is not None:
                self.sock.close()

    def close(self) -> None:
        with self._lock:
            self._closing = True
            idle = self._users == 0
        if self.sock is not None:
            with contextlib.suppress(OSError):
                self.sock.shutdown(socket.SHUT_RDWR)
            if idle:
                self.sock.close()


@asynccontextmanager
async def get(where: Endpoint, path: str, params: list[tuple[str, str]], connect_timeout: float,
              read_timeout: float | None, socket_options: list[tuple[int, int, int]]) -> AsyncIterator[Body]:
    """One GET on a connection of its own, closed on the way out; the body is for the caller to read."""
    target = where.prefix + path + (f"?{urlencode(params)}" if params else "")
    conn = _Connection()
    # The connection's threads have a limiter of their own: waiting for the engine's first byte
    # (minutes for a big image) or reading a whole export must not take the default limiter's
    # tokens, which the spool writes and every other worker call share.
    limiter = trio.CapacityLimiter(1)
    start = functools.partial(_start, conn, limiter, where, target, connect_timeout, read_timeout, socket_options)
    try:
        yield await trio.to_thread.run_sync(start, abandon_on_cancel=True, limiter=limiter)
    finally:
        conn.close()


def _start(conn: _Connection, limiter: trio.CapacityLimiter, where: Endpoint, target: str, connect_timeout: float,
           read_timeout: float | None, socket_options: list[tuple[int, int, int]]) -> Body:
    request = f"GET {target}"
    with conn.use(request), _mapped(request):
        if where.uds is not None:
            conn.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            conn.sock.settimeout(connect_timeout)
            conn.sock.connect(where.uds)
        else:
            conn.sock = socket.create_connection((where.host, where.port), timeout=connect_timeout)
            for level, option, value in socket_options:
                conn.sock.setsockopt(level, option, value)
        if where.tls is not None:
            conn.sock = where.tls.wrap_socket(conn.sock, server_hostname=where.host)
        # HTTP/1.0: the body comes as it is, ended by the engine closing the connection (module docstring).
        conn.sock.sendall(f"GET {target} HTTP/1.0\r\nHost: {where.authority}\r\nUser-Agent: imagefs\r\n"
                          "Accept-Encoding: identity\r\n\r\n".encode())
        conn.sock.settimeout(read_timeout)
        return Body(conn, limiter, request, *_read_head(conn.sock, request))


def _read_head(sock: socket.socket, request: str) -> tuple[int, dict[str, str], bytes]:
    buffer = bytearray(MAX_HEAD)
    view = memoryview(buffer)
    filled = 0
    while (end := buffer.find(b"\r\n\r\n", 0, filled)) < 0:
        if filled == MAX_HEAD:
            raise BrokenAnswer("response headers longer than 64 KiB", request)
        with _mapped(request):
            got = sock.recv_into(view[filled:])
        if got == 0:
            raise EngineUnreachable(f"{request}: the engine closed the connection before answering")
        filled += got
    status_line, *lines = bytes(buffer[:end]).decode("latin-1").split("\r\n")
    parts = status_line.split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not re.fullmatch(r"[2-5][0-9][0-9]", parts[1]):
        raise BrokenAnswer(f"not an HTTP/1 status line: {status_line[:80]!r}", request)
    headers: dict[str, str] = {}
    for line in lines:
        name, sep, value = line.partition(":")
        if not sep:
            raise BrokenAnswer(f"bad header line {line[:80]!r}", request)
        headers[name.strip().lower()] = value.strip()
    return int(parts[1]), headers, bytes(buffer[end + 4 : filled])


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:  # a short write is rare on a regular file, but not an error
        view = view[os.write(fd, view) :]


@contextmanager
def _mapped(request: str) -> Iterator[None]:
    """The socket's failures as imagefs's errors (a timeout is the socket's own)."""
    try:
        yield
    except TimeoutError:
        raise EngineTimeout(f"{request}: the engine did not answer in time") from None
    except OSError as exc:  # ssl.SSLError is an OSError too
        raise EngineUnreachable(f"{request}: {type(exc).__name__}: {exc}") from exc
