"""The async client of the Docker Engine API: addresses, TLS, API version, errors.

It knows the engine's endpoints and nothing of FUSE or of paths. Every call has
a timeout; every failure leaves as an `imagefs.errors` class carrying the
engine's own message.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import ssl
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import httpx

from . import bulkget
from .errors import EngineTimeout, EngineUnreachable, engine_error

log = logging.getLogger(__name__)

DEFAULT_HOST = "unix:///var/run/docker.sock"
MAX_ERROR_BODY = 64 * 1024
PREFERRED_API = "1.41"  # the version the seed (dockerctl) was generated for
# The events stream may be silent for hours: without keepalive a peer that vanished (a half-open
# TCP connection) would leave imagefs trusting its snapshot until --live-ttl instead of ~25 s.
TCP_KEEPALIVE = [
    (socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1),
    (socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 10),
    (socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 5),
    (socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 3),
]


@dataclass(frozen=True)
class EngineConfig:
    """Where the engine is and how to talk to it, as the docker CLI understands it."""

    host: str = DEFAULT_HOST
    base_path: str | None = None  # "/v1.41" pins the version; None negotiates
    tls_verify: bool = False
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    timeout: float = 10.0  # seconds, for every call but the streams
    stream_timeout: float = 120.0  # longest silence allowed inside an export stream
    dry_run: bool = False
    debug: bool = False

    @classmethod
    def from_options(
        cls,
        host: str | None = None,
        hostname: str | None = None,
        scheme: str | None = None,
        base_path: str | None = None,
        tlsverify: bool | None = None,
        tlscacert: str | None = None,
        tlscert: str | None = None,
        tlskey: str | None = None,
        env: dict[str, str] | None = None,
        **rest: Any,
    ) -> EngineConfig:
        """-H wins, then the seed's --hostname/--scheme, then DOCKER_HOST, then the default socket."""
        env = dict(os.environ) if env is None else env
        if not host and (hostname or scheme):
            host = f"{scheme or 'http'}://{hostname or 'localhost'}"
        host = host or env.get("DOCKER_HOST") or DEFAULT_HOST
        cert_path = Path(env.get("DOCKER_CERT_PATH") or Path.home() / ".docker")
        verify = bool(tlsverify) if tlsverify is not None else bool(env.get("DOCKER_TLS_VERIFY"))
        uses_certs = verify or any((tlscacert, tlscert, tlskey)) or "DOCKER_CERT_PATH" in env
        if uses_certs:
            tlscacert = tlscacert or str(cert_path / "ca.pem")
            tlscert = tlscert or str(cert_path / "cert.pem")
            tlskey = tlskey or str(cert_path / "key.pem")
        if base_path is not None and not base_path.startswith("/"):
            base_path = "/" + base_path
        return cls(
            host=host, base_path=base_path.rstrip("/") if base_path else None,
            tls_verify=verify, tls_ca=tlscacert, tls_cert=tlscert, tls_key=tlskey, **rest,
        )

    def endpoint(self) -> Endpoint:
        """Where to connect and with what TLS, parsed once for both HTTP clients."""
        parts = urlsplit(self.host)
        if parts.scheme == "unix":
            return Endpoint(parts.path, "docker", 80, None, "")
        if parts.scheme not in ("tcp", "http", "https") or not parts.hostname:
            raise ValueError(f"unsupported engine address {self.host!r} (use unix://, tcp://, http:// or https://)")
        tls = parts.scheme == "https" or (parts.scheme == "tcp" and bool(self.tls_verify or self.tls_cert))
        # tcp:// without a port means the docker CLI's ports; http(s):// the scheme's.
        default_port = (2376 if tls else 2375) if parts.scheme == "tcp" else (443 if tls else 80)
        ctx = None
        if tls:
            ctx = ssl.create_default_context(cafile=self.tls_ca if self.tls_verify else None)
            if not self.tls_verify:
                # The docker CLI without --tlsverify encrypts but does not check the server.
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
            if self.tls_cert and os.path.exists(self.tls_cert):
                ctx.load_cert_chain(self.tls_cert, self.tls_key)
        return Endpoint(None, parts.hostname, parts.port or default_port, ctx, parts.path.rstrip("/"))

    def transport_and_url(self) -> tuple[httpx.AsyncHTTPTransport, str]:
        """An httpx transport and the base URL the requests are relative to."""
        where = self.endpoint()
        if where.uds is not None:
            return httpx.AsyncHTTPTransport(uds=where.uds), "http://docker"
        verify = where.tls if where.tls is not None else True  # True: httpx's default, unused over plain http
        return httpx.AsyncHTTPTransport(verify=verify, socket_options=TCP_KEEPALIVE), where.base_url


@dataclass(frozen=True)
class Endpoint:
    """A unix socket path, or a host and port (with a TLS context or not); and the URL prefix of the API."""

    uds: str | None
    host: str
    port: int
    tls: ssl.SSLContext | None
    prefix: str

    @property
    def authority(self) -> str:
        """host:port as a URL and a Host header want it (an IPv6 address in brackets)."""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.authority}{self.prefix}"


def quote_name(name: str) -> str:
    """An image name or ID as a URL path segment (the engine routes `{name:.*}`)."""
    return quote(name, safe="/:@")


@contextlib.contextmanager
def _mapped(request: str) -> Iterator[None]:
    """httpx's exceptions become imagefs's: timeouts apart from every other transport failure."""
    try:
        yield
    except httpx.TimeoutException as exc:
        raise EngineTimeout(f"{request}: engine did not answer in time ({type(exc).__name__})") from exc
    except httpx.TransportError as exc:
        raise EngineUnreachable(f"{request}: {type(exc).__name__}: {exc}") from exc


def _error_message(body: bytes) -> str:
    try:
        return str(json.loads(body).get("message", "")) or body.decode(errors="replace").strip()
    except (ValueError, AttributeError):
        return body.decode(errors="replace").strip()


@dataclass
class Engine:
    """One engine: a client for short calls and one per long stream (a stream must not starve the pool)."""

    config: EngineConfig
    api_path: str = ""
    # The /version answer `negotiate` read (None when the path was pinned): the mount needs it too.
    version_info: dict[str, Any] | None = field(default=None, init=False, repr=False)
    _client: httpx.AsyncClient | None = field(default=None, init=False, repr=False)

    def _new_client(self, timeout: httpx.Timeout) -> httpx.AsyncClient:
        transport, url = self.config.transport_and_url()
        return httpx.AsyncClient(transport=transport, base_url=url, timeout=timeout)

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

    def _url(self, path: str, versioned: bool = True) -> str:
        return (self.api_path if versioned else "") + path

    def _request(self, method: str, path: str, params: dict[str, str] | list[tuple[str, str]] | None = None,
                 versioned: bool = True) -> tuple[str, str]:
        """The URL of a call, and the call as logs and error messages name it."""
        url = self._url(path, versioned)
        return url, f"{method} {url}" + (f"?{httpx.QueryParams(params)}" if params else "")

    async def _call(
        self, method: str, path: str, params: dict[str, str] | None = None, versioned: bool = True,
        mutation: bool = False,
    ) -> Any:
        """One request and its JSON answer (None for an empty body, or in dry-run for a mutation)."""
        url, request = self._request(method, path, params, versioned)
        if mutation and self.config.dry_run:
            log.warning("dry-run: would send %s", request)
            return None
        if self.config.debug:
            log.debug("engine request %s", request)
        with _mapped(request):
            resp = await self.client.request(method, url, params=params)
        if resp.status_code >= 400:
            raise engine_error(resp.status_code, _error_message(resp.content), request)
        return resp.json() if resp.content.strip() else None

    @contextlib.asynccontextmanager
    async def stream(self, path: str, params: list[tuple[str, str]] | None = None) -> AsyncIterator[httpx.Response]:
        """A GET whose body is streamed, on a client of its own that is always closed.

        No read timeout: the event stream is silent for as long as nothing happens.
        """
        url, request = self._request("GET", path, params)
        if self.config.debug:
            log.debug("engine request %s (stream)", request)
        timeout = httpx.Timeout(self.config.timeout, read=None)
        async with self._new_client(timeout) as client:
            with _mapped(request):
                async with client.stream("GET", url, params=params) as resp:
                    if resp.status_code >= 400:
                        raise engine_error(resp.status_code, _error_message(await resp.aread()), request)
                    yield resp

    @contextlib.asynccontextmanager
    async def bulk_get(self, path: str, params: list[tuple[str, str]]) -> AsyncIterator[bulkget.Body]:
        """A GET (HTTP/1.0) whose long body the caller writes into a file (an export: see bulkget);
        the body ends when the engine closes the connection."""
        url, request = self._request("GET", path, params)
        if self.config.debug:
            log.debug("engine request %s (bulk)", request)
        async with bulkget.get(self.config.endpoint(), url, params, self.config.timeout,
                               self.config.stream_timeout, TCP_KEEPALIVE) as body:
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
                with _mapped("GET /events"):
                    async for line in resp.aiter_lines():
                        if line.strip():
                            yield json.loads(line)

            yield decoded()
