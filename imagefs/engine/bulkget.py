"""A GET whose long body goes straight from the socket into a file, or into the caller's reused buffers.

The export streams are the one place where the HTTP client's own cost shows: httpx
(httpcore + h11) hands the body over in fresh `bytes`, parses it in Python, and trio wakes
for every chunk the engine writes. Here the request is HTTP/1.0, so the engine sends the body
as it is (no chunk framing) and ends it by closing the connection, and one worker thread
splices it socket → pipe → file: no byte passes through Python. The price is that a crash
mid-stream looks like an end: the caller must check the body itself (exports: tarcheck).
Over TLS, which cannot splice, or for a chunked answer, one thread reads the body into reused
buffers (`_pump`) that a second one writes; `write_into` picks the way.
Everything else, the event stream included, stays on httpx.

This module is the I/O only: which received bytes are payload is `framing`'s business, and
how the socket is made is the endpoint's (`address`).
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import math
import os
import queue
import select
import socket
import ssl
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import trio

from ..errors import BrokenAnswer, Closing, EngineTimeout, EngineUnreachable
from .framing import MAX_HEAD, Decoder, parse_head

if TYPE_CHECKING:
    from .address import Endpoint

MIN_RECV = 64 * 1024  # a buffer with less room than this goes back to the caller
PIPE_BYTES = 1 << 20  # what one splice moves at most (the pipe is made this large where the kernel allows)
BUFFER_BYTES = 1 << 20  # a body that cannot be spliced (TLS, chunks) is received into buffers of this size
FILE_BUFFERS = 6  # per body written to a file that way: the memory for it, how far the socket may run ahead
Deliver = Callable[[bytearray, memoryview], None]


@dataclass(frozen=True)
class Timeouts:
    connect: float  # seconds, for connecting (and the TLS handshake)
    read: float | None  # the longest silence once asked (the head may take minutes); None waits for ever


class Body:
    """The body of one response: written to a file by `write_into` (a long one), or read by
    `read_all` (a short one)."""

    def __init__(self, conn: _Connection, limiter: trio.CapacityLimiter, status: int, decoder: Decoder,
                 rest: bytes) -> None:
        self.status = status
        self._conn = conn
        self._limiter = limiter
        self._decoder = decoder
        self._request = decoder.request
        self._carry = rest  # received bytes not yet looked at: the start of the body, then a partial frame line

    async def write_into(self, fd: int, progress: Callable[[int], None]) -> None:
        """Write the whole body to file `fd` at its offset, spliced where it can be; each step's byte
        count goes to `progress` in the event loop, the last one before this returns."""
        if self._spliceable:
            await self._splice_into(fd, progress)
        else:
            await self._pump_into(fd, progress)

    async def read_all(self, limit: int) -> bytes:
        """The whole (short) body, e.g. an error message."""

        def run() -> bytes:
            with self._conn.use(self._request):
                return self._read_all(limit)

        return await trio.to_thread.run_sync(run, abandon_on_cancel=True, limiter=self._limiter)

    @property
    def _spliceable(self) -> bool:
        """Plain bytes (not chunked) on a socket that is not TLS."""
        return not self._decoder.chunked and not isinstance(self._conn.sock, ssl.SSLSocket)

    # --- spliced: socket → pipe → file in one thread ---------------------------------------

    async def _splice_into(self, fd: int, progress: Callable[[int], None]) -> None:
        """Move the whole body into file `fd` at its offset with splice(2).

        The thread writes through a descriptor of its own, which it closes: one left behind by a
        cancellation must not write into a number the loop has since given to another file.
        """
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
        if self._carry:
            first = self._carry[: self._decoder.want(len(self._carry))]  # past a Content-Length nothing is body
            self._decoder.take(len(first))
            _write_all(fd, first)
            progress(len(first))
            self._carry = b""
        r, w = os.pipe()
        try:
            with contextlib.suppress(OSError):  # a smaller pipe only means more steps
                fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, PIPE_BYTES)
            self._splice_through(r, w, fd, progress)
        finally:
            os.close(r)
            os.close(w)

    def _splice_through(self, r: int, w: int, fd: int, progress: Callable[[int], None]) -> None:
        sock = self._conn.sock
        assert sock is not None, "a body without a connected socket"
        timeout = sock.gettimeout()  # with a timeout, Python keeps the socket non-blocking
        waiting = select.poll()
        waiting.register(sock, select.POLLIN)
        while not self._decoder.done:
            with _mapped(self._request):  # the file's own failures stay OSErrors: the spool's, not the engine's
                got = _splice_from(sock, w, self._decoder.want(PIPE_BYTES), waiting, timeout)
            if got == 0:
                self._decoder.closed()
                continue
            self._decoder.take(got)
            left = got
            while left:
                left -= os.splice(r, fd, left)
            progress(got)

    # --- buffered: one thread receives, another writes (TLS, chunked) ----------------------

    async def _pump_into(self, fd: int, progress: Callable[[int], None]) -> None:
        """`_pump` into buffers while a second thread writes each one to `fd`."""
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
            with _one_failure():
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(writer)
                    await self._pump(buffers, deliver)
        finally:
            full.close()

    async def _pump(self, buffers: queue.SimpleQueue[bytearray | None], deliver: Deliver) -> None:
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

    def _read_into(self, buffer: bytearray) -> memoryview:
        """The next payload bytes, gathered at the start of `buffer` (chunk framing squeezed out
        in place); empty once the body has ended."""
        assert len(buffer) >= MIN_RECV + MAX_HEAD, "a buffer with room for the head's rest and a receive"
        sock = self._conn.sock
        assert sock is not None, "a body without a connected socket"
        view = memoryview(buffer)
        filled = len(self._carry)
        view[:filled] = self._carry
        parsed = out = 0  # bytes looked at; payload bytes gathered at the start
        while not self._decoder.done:
            parsed, out = self._decoder.feed(view, parsed, filled, out)
            if self._decoder.done:
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
                self._decoder.closed()
            filled += got
        self._carry = bytes(view[parsed:filled])
        return view[:out]

    def _read_all(self, limit: int) -> bytes:
        out = bytearray()
        buffer = bytearray(MIN_RECV + MAX_HEAD)
        while (payload := self._read_into(buffer)) and len(out) <= limit:
            out += payload
        return bytes(out[:limit])


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

    def attach(self, sock: socket.socket) -> None:
        """The connected socket; one that comes after `close` is shut down at once."""
        with self._lock:
            self.sock = sock
            closing = self._closing
        if closing:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    @contextmanager
    def use(self, request: str) -> Iterator[None]:
        with self._lock:
            if self._closing:
                raise Closing(f"{request}: imagefs closed the connection")  # ours, not the engine's doing
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
async def get(where: Endpoint, target: str, timeouts: Timeouts) -> AsyncIterator[Body]:
    """One GET of `target` (a path and query under the API prefix) on a connection of its own,
    closed on the way out; the body is for the caller to read."""
    conn = _Connection()
    # The connection's threads have a limiter of their own: waiting for the engine's first byte
    # (minutes for a big image) or reading a whole export must not take the default limiter's
    # tokens, which the spool writes and every other worker call share.
    limiter = trio.CapacityLimiter(1)
    start = functools.partial(_start, conn, limiter, where, where.prefix + target, timeouts)
    try:
        yield await trio.to_thread.run_sync(start, abandon_on_cancel=True, limiter=limiter)
    finally:
        conn.close()


def _start(conn: _Connection, limiter: trio.CapacityLimiter, where: Endpoint, target: str,
           timeouts: Timeouts) -> Body:
    request = f"GET {target}"
    with conn.use(request), _mapped(request), _explained(where, request):
        sock = where.connect(timeouts.connect)
        conn.attach(sock)
        # HTTP/1.0: the body comes as it is, ended by the engine closing the connection (module docstring).
        sock.sendall(f"GET {target} HTTP/1.0\r\nHost: {where.authority}\r\nUser-Agent: imagefs\r\n"
                     "Accept-Encoding: identity\r\n\r\n".encode())
        sock.settimeout(timeouts.read)
        head, rest = _read_head(sock, request)
        status, headers = parse_head(head, request)
        return Body(conn, limiter, status, Decoder(headers, request), rest)


@contextmanager
def _explained(where: Endpoint, request: str) -> Iterator[None]:
    """A connection that failed, in the words the endpoint has for it (a certificate, ssh's)."""
    try:
        yield
    except EngineUnreachable as exc:
        reason = where.explain(exc)
        if reason is None:
            raise
        raise EngineUnreachable(f"{request}: {reason}") from exc


def _read_head(sock: socket.socket, request: str) -> tuple[bytes, bytes]:
    """The response head (without its blank line), and the bytes received after it."""
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
    return bytes(buffer[:end]), bytes(buffer[end + 4 : filled])


def _splice_from(sock: socket.socket, pipe: int, n: int, waiting: select.poll, timeout: float | None) -> int:
    """Up to `n` bytes from `sock` into `pipe`, 0 at the end of the stream; TimeoutError after
    `timeout` seconds of silence on a non-blocking socket."""
    while True:
        try:
            return os.splice(sock.fileno(), pipe, n)
        except BlockingIOError:
            if not waiting.poll(None if timeout is None else timeout * 1000):
                raise TimeoutError from None


@contextmanager
def _one_failure() -> Iterator[None]:
    """A nursery's failures as the one that tells the story: the other task was only cancelled
    because of it (a group of nothing but cancellations stays as it is)."""
    try:
        yield
    except BaseExceptionGroup as group:
        failures, _ = group.split(Exception)
        if failures is None:
            raise
        raise failures.exceptions[0] from None


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
