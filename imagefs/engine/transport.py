"""httpx over the connections `Endpoint.open_stream` makes: an httpcore network backend, and
the httpx transport that uses it.

httpx takes no network backend of its own, so `Transport` is its `AsyncHTTPTransport` cut
down to what imagefs needs, on public httpcore API only: httpcore's connection pool with
requests and answers translated, and httpcore's errors raised as httpx's (which the client
maps to imagefs's). Nothing here knows where the engine is.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import AsyncIterator, Iterable, Iterator
from typing import TYPE_CHECKING, Any

import httpcore
import httpx
import trio

if TYPE_CHECKING:
    from .address import Endpoint

# httpcore's errors as httpx's, the most specific first.
_HTTPX_ERRORS: dict[type[Exception], type[httpx.TransportError]] = {
    httpcore.ConnectTimeout: httpx.ConnectTimeout,
    httpcore.ReadTimeout: httpx.ReadTimeout,
    httpcore.WriteTimeout: httpx.WriteTimeout,
    httpcore.PoolTimeout: httpx.PoolTimeout,
    httpcore.TimeoutException: httpx.TimeoutException,
    httpcore.ConnectError: httpx.ConnectError,
    httpcore.ReadError: httpx.ReadError,
    httpcore.WriteError: httpx.WriteError,
    httpcore.NetworkError: httpx.NetworkError,
    httpcore.RemoteProtocolError: httpx.RemoteProtocolError,
    httpcore.LocalProtocolError: httpx.LocalProtocolError,
    httpcore.UnsupportedProtocol: httpx.UnsupportedProtocol,
    httpcore.ProtocolError: httpx.ProtocolError,
}


class Transport(httpx.AsyncBaseTransport):
    """httpx's requests on pooled connections to one endpoint."""

    def __init__(self, endpoint: Endpoint) -> None:
        # httpx's own limits: httpcore's defaults are 10 connections, and idle ones kept for ever.
        self._pool = httpcore.AsyncConnectionPool(network_backend=_Backend(endpoint), max_connections=100,
                                                  max_keepalive_connections=20, keepalive_expiry=5.0)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        assert isinstance(request.stream, httpx.AsyncByteStream), "an async client sends async bodies"
        url = httpcore.URL(scheme=request.url.raw_scheme, host=request.url.raw_host, port=request.url.port,
                           target=request.url.raw_path)
        ask = httpcore.Request(request.method, url, headers=request.headers.raw, content=request.stream,
                               extensions=request.extensions)
        with _as_httpx():
            answer = await self._pool.handle_async_request(ask)
        return httpx.Response(answer.status, headers=answer.headers, stream=_Body(answer),
                              extensions=answer.extensions)

    async def aclose(self) -> None:
        await self._pool.aclose()


class _Body(httpx.AsyncByteStream):
    """The body of an httpcore answer as httpx reads it; closing it gives the connection back."""

    def __init__(self, answer: httpcore.Response) -> None:
        self._answer = answer

    async def __aiter__(self) -> AsyncIterator[bytes]:
        with _as_httpx():
            async for part in self._answer.aiter_stream():
                yield part

    async def aclose(self) -> None:
        with _as_httpx():
            await self._answer.aclose()


@contextlib.contextmanager
def _as_httpx() -> Iterator[None]:
    """httpcore's errors as the most specific httpx ones, which the client knows."""
    try:
        yield
    except tuple(_HTTPX_ERRORS) as exc:
        raise next(theirs for ours, theirs in _HTTPX_ERRORS.items() if isinstance(exc, ours))(str(exc)) from exc


class _Backend(httpcore.AsyncNetworkBackend):
    """Every connection httpcore asks for is the endpoint's, whatever host and port the URL names
    (httpcore asks for nothing else: the pool has no unix path and no retries)."""

    def __init__(self, endpoint: Endpoint) -> None:
        self._endpoint = endpoint

    async def connect_tcp(
        self, host: str, port: int, timeout: float | None = None, local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        with _failures(httpcore.ConnectTimeout, httpcore.ConnectError):
            stream = await self._endpoint.open_stream(timeout)
        return _Stream(stream)


class _Stream(httpcore.AsyncNetworkStream):
    """A trio stream as httpcore reads and writes it."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self._stream = stream
        below = stream
        while isinstance(below, trio.SSLStream):
            below = below.transport_stream
        assert isinstance(below, trio.SocketStream), "endpoints make socket streams"
        self._socket = below.socket
        self._broken: Exception | None = None  # how the stream first broke

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        with self._failures(httpcore.ReadTimeout, httpcore.ReadError), _deadline(timeout):
            data = await self._stream.receive_some(max_bytes)
        return bytes(data)

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        if buffer:
            with self._failures(httpcore.WriteTimeout, httpcore.WriteError), _deadline(timeout):
                await self._stream.send_all(buffer)

    @contextlib.contextmanager
    def _failures(self, timed_out: type[Exception], broken: type[Exception]) -> Iterator[None]:
        """`_failures`, and a stream that broke before told with that first reason: httpcore sets a
        failed write aside to read the answer, and trio's TLS stream then says only "broken"."""
        try:
            with _failures(timed_out, broken):
                yield
        except broken as exc:
            if self._broken is None:
                self._broken = exc
            elif not str(exc):
                raise broken(str(self._broken)) from self._broken
            raise

    async def aclose(self) -> None:
        await self._stream.aclose()

    def get_extra_info(self, info: str) -> Any:
        # httpcore asks before it reuses an idle connection: readable then means the engine closed it.
        return self._socket.is_readable() if info == "is_readable" else None


def _deadline(timeout: float | None) -> contextlib.AbstractContextManager[trio.CancelScope]:
    return trio.fail_after(math.inf if timeout is None else timeout)


@contextlib.contextmanager
def _failures(timed_out: type[Exception], broken: type[Exception]) -> Iterator[None]:
    """trio's and the socket's failures as httpcore's (a timeout apart from every other)."""
    try:
        yield
    except (trio.TooSlowError, TimeoutError) as exc:
        raise timed_out(str(exc) or "timed out") from exc
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
        raise broken(str(exc.__cause__ or exc)) from exc
