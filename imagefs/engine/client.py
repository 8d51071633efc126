"""The async client of the Docker Engine API: API version, calls, streams, errors.

It knows the engine's endpoints and nothing of FUSE or of paths. Every call has a timeout;
every failure leaves as an `imagefs.errors` class carrying the engine's own message, and an
answer that is not what HTTP or JSON promise is a `BrokenAnswer`.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import AsyncIterable, AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import httpx

from ..errors import BrokenAnswer, EngineTimeout, EngineUnreachable, engine_error
from . import bulkget, messages
from .address import Endpoint, EngineConfig
from .flavor import DOCKER, Flavor, identify
from .transport import Transport

log = logging.getLogger(__name__)

MAX_ERROR_BODY = 64 * 1024
PREFERRED_API = "1.41"  # the version the seed (dockerctl) was generated for
Params = Mapping[str, str] | Sequence[tuple[str, str]]


def quote_name(name: str) -> str:
    """An image name or ID as a URL path segment (the engine routes `{name:.*}`)."""
    return quote(name, safe="/:@")


@contextlib.contextmanager
def _mapped(request: str, endpoint: Endpoint) -> Iterator[None]:
    """httpx's exceptions become imagefs's: timeouts apart from every other transport failure, which
    the endpoint explains where it can (a certificate refused, what ssh said)."""
    try:
        yield
    except httpx.TimeoutException as exc:
        raise EngineTimeout(f"{request}: engine did not answer in time ({type(exc).__name__})") from exc
    except httpx.TransportError as exc:
        raise EngineUnreachable(f"{request}: {endpoint.explain(exc) or f'{type(exc).__name__}: {exc}'}") from exc


def _error_message(body: bytes) -> str:
    try:
        return str(json.loads(body).get("message", "")) or body.decode(errors="replace").strip()
    except (ValueError, AttributeError):
        return body.decode(errors="replace").strip()


def _json(text: bytes | str, request: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as exc:  # UnicodeDecodeError too
        raise BrokenAnswer(f"an answer that is not JSON ({exc})", request) from exc


@dataclass
class Engine:
    """One engine: a client for short calls and one per long stream (a stream must not starve the pool)."""

    config: EngineConfig
    api_path: str = ""
    # Every client's transport instead of the endpoint's (tests answer with httpx.MockTransport);
    # the clients close it when they close, so it must bear that.
    transport: httpx.AsyncBaseTransport | None = field(default=None, repr=False)
    # The /version answer `negotiate` read (None when the path was pinned): the mount needs it too.
    version_info: dict[str, Any] | None = field(default=None, init=False, repr=False)
    # Which engine answers (`identify`): what the mount does differently for it.
    flavor: Flavor = field(default=DOCKER, init=False)
    endpoint: Endpoint = field(init=False, repr=False)
    _client: httpx.AsyncClient | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.endpoint = self.config.endpoint()

    def _new_client(self, timeout: httpx.Timeout) -> httpx.AsyncClient:
        transport = self.transport or Transport(self.endpoint)
        return httpx.AsyncClient(transport=transport, base_url=self.endpoint.base_url, timeout=timeout)

    @property
    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = self._new_client(httpx.Timeout(self.config.timeout))
        return self._client

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def negotiate(self) -> str:
        """Pick the API path: the pinned one, else 1.41 when the engine's range allows it."""
        if self.config.base_path is not None:
            self.api_path = self.config.base_path
            return self.api_path
        info = self.version_info = await self._call("GET", "/version", versioned=False)
        newest = str(info.get("ApiVersion", PREFERRED_API))
        oldest = str(info.get("MinAPIVersion", newest))

        def key(v: str) -> tuple[int, ...]:
            return tuple(int(p) for p in v.split("."))

        chosen = min(max(key(PREFERRED_API), key(oldest)), key(newest))
        self.api_path = "/v" + ".".join(map(str, chosen))
        log.info("engine %s speaks API %s..%s; using %s", self.config.host, oldest, newest, self.api_path)
        return self.api_path

    async def identify(self, version: dict[str, Any]) -> Flavor:
        """Tell the engine's flavor from its /version (given) and /info."""
        self.flavor = identify(version, await self._call("GET", "/info"))
        log.info("engine %s is %s %s", self.config.host, self.flavor.name, version.get("Version", "?"))
        return self.flavor

    def _request(self, method: str, path: str, params: Params | None = None,
                 versioned: bool = True) -> tuple[str, httpx.QueryParams, str]:
        """The URL and query of a call, and the call as logs and error messages name it."""
        url = (self.api_path if versioned else "") + path
        query = httpx.QueryParams(params if isinstance(params, Mapping) else tuple(params or ()))
        return url, query, f"{method} {url}" + (f"?{query}" if query else "")

    async def _call(
        self, method: str, path: str, params: Params | None = None, versioned: bool = True,
        mutation: bool = False, headers: Mapping[str, str] | None = None, json_body: Any = None,
    ) -> Any:
        """One request and its JSON answer (None for an empty body, or in dry-run for a mutation)."""
        url, query, request = self._request(method, path, params, versioned)
        if mutation and self.config.dry_run:
            log.warning("dry-run: would send %s%s", request, _shown(headers))
            return None
        if self.config.debug:
            log.debug("engine request %s", request)  # headers never: they carry credentials
        with _mapped(request, self.endpoint):
            resp = await self.client.request(method, url, params=query, headers=headers, json=json_body)
        if resp.status_code >= 400:
            raise engine_error(resp.status_code, _error_message(resp.content), request)
        return _json(resp.content, request) if resp.content.strip() else None

    @contextlib.asynccontextmanager
    async def stream(self, path: str, params: list[tuple[str, str]] | None = None) -> AsyncIterator[httpx.Response]:
        """A GET whose body is streamed, on a client of its own that is always closed.

        No read timeout: the event stream is silent for as long as nothing happens.
        """
        url, query, request = self._request("GET", path, params)
        if self.config.debug:
            log.debug("engine request %s (stream)", request)
        timeout = httpx.Timeout(self.config.timeout, read=None)
        async with self._new_client(timeout) as client:
            with _mapped(request, self.endpoint):
                async with client.stream("GET", url, params=query) as resp:
                    if resp.status_code >= 400:
                        raise engine_error(resp.status_code, _error_message(await resp.aread()), request)
                    yield resp

    @contextlib.asynccontextmanager
    async def post_stream(
        self, path: str, params: Params, headers: Mapping[str, str] | None = None,
        body: AsyncIterable[bytes] | None = None,
    ) -> AsyncIterator[AsyncIterator[dict[str, Any]]]:
        """A POST answered by a message stream (pull, push, load, import, build), on a client of its own.

        Entered once the engine has answered (for an upload: once the whole body is sent, or
        when the engine refused it early); then the messages, until one reports a failure,
        which is raised as the class its words say. A stream may be silent for at most
        `stream_timeout`, and so may the engine while it takes the body. The body (an upload)
        commits when its iterator ends and aborts the request when it raises.
        """
        url, query, request = self._request("POST", path, params)
        if self.config.dry_run:
            sent = sum([len(part) async for part in body]) if body is not None else 0  # an upload's writer ends
            log.warning("dry-run: would send %s%s%s", request, _shown(headers), f" ({sent} bytes)" if body else "")
            yield _nothing()
            return
        if self.config.debug:
            log.debug("engine request %s (message stream)", request)  # headers never: they carry credentials
        silence = self.config.stream_timeout
        timeout = httpx.Timeout(self.config.timeout, read=silence, write=silence)
        async with self._new_client(timeout) as client:
            with _mapped(request, self.endpoint):
                async with client.stream("POST", url, params=query, headers=headers, content=body) as resp:
                    if resp.status_code >= 400:
                        answer = _error_message(await resp.aread())
                        raise messages.refined(engine_error(resp.status_code, answer, request))
                    yield _messages(resp, request, self.endpoint)

    @contextlib.asynccontextmanager
    async def bulk_get(self, path: str, params: list[tuple[str, str]]) -> AsyncIterator[bulkget.Body]:
        """A GET (HTTP/1.0) whose long body the caller writes into a file (an export: see bulkget);
        the body ends when the engine closes the connection."""
        url, query, request = self._request("GET", path, params)
        if self.config.debug:
            log.debug("engine request %s (bulk)", request)
        target = url + (f"?{query}" if query else "")
        timeouts = bulkget.Timeouts(connect=self.config.timeout, read=self.config.stream_timeout)
        async with bulkget.get(self.endpoint, target, timeouts) as body:
            if body.status >= 400:
                raise engine_error(body.status, _error_message(await body.read_all(MAX_ERROR_BODY)), request)
            yield body

    # --- the image operations of the seed -------------------------------------------------

    async def version(self) -> dict[str, Any]:
        return await self._call("GET", "/version")

    async def list_images(self) -> list[dict[str, Any]]:
        return await self._call("GET", "/images/json", {"all": "1"})

    async def inspect(self, name: str) -> dict[str, Any]:
        return await self._call("GET", f"/images/{quote_name(name)}/json")

    async def history(self, name: str) -> list[dict[str, Any]]:
        return await self._call("GET", f"/images/{quote_name(name)}/history")

    async def tag(self, name: str, repo: str, tag: str) -> None:
        await self._call("POST", f"/images/{quote_name(name)}/tag", {"repo": repo, "tag": tag}, mutation=True)

    async def delete(self, name: str, force: bool = False, noprune: bool = False) -> list[dict[str, str]] | None:
        params = {"force": str(force).lower(), "noprune": str(noprune).lower()}
        return await self._call("DELETE", f"/images/{quote_name(name)}", params, mutation=True)

    async def prune(self, filters: dict[str, list[str]]) -> dict[str, Any] | None:
        params = {"filters": json.dumps(filters)} if filters else None
        return await self._call("POST", "/images/prune", params, mutation=True)

    @contextlib.asynccontextmanager
    async def events(self, filters: dict[str, list[str]]) -> AsyncIterator[AsyncIterator[dict[str, Any]]]:
        """The engine's event stream: entered once the engine has answered; decoded events until it breaks."""
        async with self.stream("/events", [("filters", json.dumps(filters))]) as resp:

            async def decoded() -> AsyncIterator[dict[str, Any]]:
                with _mapped("GET /events", self.endpoint):
                    async for line in resp.aiter_lines():
                        if line.strip():
                            yield _event(line)

            yield decoded()


async def _messages(resp: httpx.Response, request: str, endpoint: Endpoint) -> AsyncIterator[dict[str, Any]]:
    decoder = messages.Decoder(request)
    with _mapped(request, endpoint):
        async for data in resp.aiter_raw():
            for message in decoder.feed(data):
                yield _checked(message, request)
    for message in decoder.end():
        yield _checked(message, request)


async def _nothing() -> AsyncIterator[dict[str, Any]]:
    """The messages of a stream that was not sent (dry-run)."""
    for message in list[dict[str, Any]]():
        yield message


def _shown(headers: Mapping[str, str] | None) -> str:
    """Headers as a log names them: never their values, which carry credentials."""
    return f" (headers {', '.join(f'{name}: <redacted>' for name in headers)})" if headers else ""


def _checked(message: dict[str, Any], request: str) -> dict[str, Any]:
    failed = messages.failure(message)
    if failed is not None:
        raise messages.classed(failed, request)
    return message


def _event(line: str) -> dict[str, Any]:
    event = _json(line, "GET /events")
    if not isinstance(event, dict):
        raise BrokenAnswer(f"an event that is not a JSON object: {line[:80]!r}", "GET /events")
    return event
