"""Where the engine is and how to reach it: `EngineConfig` as the docker CLI reads it, and the
`Endpoint` it resolves to, the one place that makes connections to the engine.

`Endpoint.connect` makes a blocking socket (TLS-wrapped where the address asks for TLS) for
the worker threads of `bulkget`; `Endpoint.open_stream` makes the same connection as a trio
stream, which httpx gets through the network backend in `transport`. Both start at
`Endpoint._dial`, so every kind of address reaches both clients: an ssh:// engine
(`docker system dial-stdio`, in `sshdial`) is one more branch there. `Endpoint.explain` says
what a failed connection needs fixed (a certificate, ssh's own complaint), for both clients.

httpx is given that network backend rather than an `AsyncHTTPTransport(uds=…,
socket_options=…, verify=…)`: with the stock transport httpcore would make its own sockets,
and the address kinds, keepalive and TLS would be written once per client and could drift
apart; the cost is a small transport of our own (`transport`), since httpx takes no
network backend itself.
"""

from __future__ import annotations

import contextlib
import math
import os
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import trio

from ..options import default
from . import contexts
from .sshdial import SshTarget

DEFAULT_HOST = "unix:///var/run/docker.sock"
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
    tls: bool = False  # TLS on tcp:// even without certificates (a context's SkipTLSVerify)
    tls_verify: bool = False
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    timeout: float = default("timeout")  # seconds, for every call but the streams
    stream_timeout: float = default("stream_timeout")  # longest silence allowed inside an export stream
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
        context: str | None = None,
        env: dict[str, str] | None = None,
        **rest: Any,
    ) -> EngineConfig:
        """--context, else -H, then the seed's --hostname/--scheme, then DOCKER_HOST, then the docker
        context in use (`contexts`), then the default socket."""
        env = dict(os.environ) if env is None else env
        if base_path is not None:
            base_path = "/" + base_path.strip("/") if base_path.strip("/") else None
        address_given = bool(host or hostname or scheme)
        if context and address_given:
            raise ValueError("conflicting options: either an engine address (-H, --hostname) or --context, not both")
        name = contexts.current(context, address_given, env)
        if name != contexts.DEFAULT:
            ctx = contexts.load(name, env)
            return cls(host=ctx.host, base_path=base_path, tls=ctx.tls, tls_verify=ctx.verify, tls_ca=ctx.ca,
                       tls_cert=ctx.cert, tls_key=ctx.key, **rest)
        if not host and (hostname or scheme):
            host = f"{scheme or 'http'}://{hostname or 'localhost'}"
        host = host or env.get("DOCKER_HOST") or DEFAULT_HOST
        cert_path = Path(env.get("DOCKER_CERT_PATH") or contexts.config_dir(env))
        verify = bool(tlsverify) if tlsverify is not None else bool(env.get("DOCKER_TLS_VERIFY"))
        uses_certs = verify or any((tlscacert, tlscert, tlskey)) or "DOCKER_CERT_PATH" in env
        if uses_certs:
            tlscacert = tlscacert or str(cert_path / "ca.pem")
            # As the docker CLI: a client cert or key left at its default is used only if it is
            # there; one that was named must be (`endpoint` says so).
            tlscert = tlscert or _existing(cert_path / "cert.pem")
            tlskey = tlskey or _existing(cert_path / "key.pem")
        return cls(host=host, base_path=base_path, tls_verify=verify, tls_ca=tlscacert, tls_cert=tlscert,
                   tls_key=tlskey, **rest)

    def endpoint(self) -> Endpoint:
        """Where to connect and with what TLS; a ValueError with a one-line reason for an
        address or TLS files that cannot be used (the CLI checks this before it forks)."""
        parts = urlsplit(self.host)
        if parts.scheme == "ssh":
            return Endpoint(None, "docker", 80, None, "", ssh=SshTarget.parse(self.host, parts))
        if parts.scheme == "unix":
            if not parts.path:
                raise ValueError(f"engine address {self.host!r} names no socket path")
            return Endpoint(parts.path, "docker", 80, None, "")
        if parts.scheme not in ("tcp", "http", "https") or not parts.hostname:
            raise ValueError(f"unsupported engine address {self.host!r} (use unix://, tcp://, http(s):// or ssh://)")
        try:
            port = parts.port
        except ValueError:
            raise ValueError(f"engine address {self.host!r} has a bad port") from None
        # from_options sets the CA path whenever certificates are in play: on tcp:// that asks for TLS.
        tls = parts.scheme == "https" or (
            parts.scheme == "tcp" and bool(self.tls or self.tls_verify or self.tls_ca or self.tls_cert))
        # tcp:// without a port means the docker CLI's ports; http(s):// the scheme's.
        default_port = (2376 if tls else 2375) if parts.scheme == "tcp" else (443 if tls else 80)
        ctx = self._tls_context() if tls else None
        return Endpoint(None, parts.hostname, port or default_port, ctx, parts.path.rstrip("/"),
                        tls_files=TlsFiles(self.tls_ca if self.tls_verify else None, self.tls_cert) if tls else None)

    def _tls_context(self) -> ssl.SSLContext:
        ca = self.tls_ca if self.tls_verify else None
        for what, path in (("CA certificate", ca), ("client certificate", self.tls_cert),
                           ("client key", self.tls_key if self.tls_cert else None)):
            if path and not os.path.isfile(path):
                raise ValueError(f"TLS {what} {path} does not exist")
        try:
            ctx = ssl.create_default_context(cafile=ca)
            if not self.tls_verify:
                # The docker CLI without --tlsverify encrypts but does not check the server.
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
            if self.tls_cert:
                ctx.load_cert_chain(self.tls_cert, self.tls_key)
        except OSError as exc:  # ssl.SSLError too: a file that is not PEM, a key that is not the cert's
            raise ValueError(f"TLS files for {self.host} cannot be used: {exc}") from exc
        return ctx


def _existing(path: Path) -> str | None:
    return str(path) if path.exists() else None


@dataclass(frozen=True)
class TlsFiles:
    """The certificates a TLS endpoint was made with, for messages that name them."""

    ca: str | None  # None: the system's CAs, or (without --tlsverify) the engine is not checked
    cert: str | None


@dataclass(frozen=True)
class Endpoint:
    """A unix socket path, or a host and port (with a TLS context or not), or an ssh target; and
    the URL prefix of the API."""

    uds: str | None
    host: str
    port: int
    tls: ssl.SSLContext | None
    prefix: str
    ssh: SshTarget | None = None
    tls_files: TlsFiles | None = None

    @property
    def authority(self) -> str:
        """host:port as a URL and a Host header want it (an IPv6 address in brackets)."""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        """The URL httpx's requests are relative to. Always http: TLS, like the address, is the
        endpoint's business, done on the connection before httpcore sees it."""
        return f"http://{self.authority}{self.prefix}"

    def connect(self, timeout: float | None) -> socket.socket:
        """A connected socket to the engine, TLS-wrapped if the endpoint has TLS. Blocking, for
        worker threads; `timeout` bounds each step, and stays set on the socket."""
        sock = self._dial(timeout)
        if self.tls is None:
            return sock
        with _closed_on_error(sock):
            return self.tls.wrap_socket(sock, server_hostname=self.host)

    async def open_stream(self, timeout: float | None) -> trio.abc.Stream:
        """The same connection as `connect`, as a trio stream: dialled in a worker thread, the
        TLS handshake (if any) in the event loop."""
        sock = await _in_worker(self._dial, timeout)
        stream: trio.abc.Stream = trio.SocketStream(trio.socket.from_stdlib_socket(sock))
        if self.tls is None:
            return stream
        tls = trio.SSLStream(stream, self.tls, server_hostname=self.host, https_compatible=True)
        try:
            with trio.fail_after(math.inf if timeout is None else timeout):
                await tls.do_handshake()
        except BaseException:
            await trio.aclose_forcefully(tls)
            raise
        return tls

    def explain(self, exc: BaseException) -> str | None:
        """A failure of a connection to this endpoint in the words that say what to fix: which
        certificate TLS refused, or what ssh said; None when the exception says it already."""
        if self.ssh is not None:
            return self.ssh.failure()
        refused = next((e for e in _causes(exc) if isinstance(e, ssl.SSLError)), None)
        if refused is None or self.tls_files is None:
            return None
        return _tls_reason(refused, self.tls_files)

    async def diagnose(self, timeout: float) -> str | None:
        """Why the engine refuses connections, from one that only listens; None if it tells nothing.

        A TLS 1.3 engine judges the client certificate after the handshake, and its verdict can
        be lost to a reset when a request is written meanwhile (as every call does at once).
        """
        if self.tls is None:
            return None
        try:
            stream = await self.open_stream(timeout)
            async with stream:
                with trio.move_on_after(timeout):
                    await stream.receive_some(1)
        except (OSError, trio.BrokenResourceError, trio.TooSlowError) as exc:
            return self.explain(exc)
        return None

    def _dial(self, timeout: float | None) -> socket.socket:
        """The engine's socket before TLS (blocking)."""
        if self.ssh is not None:
            return self.ssh.dial(timeout)
        if self.uds is not None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            with _closed_on_error(sock):
                _large_send_buffer(sock)
                sock.settimeout(timeout)
                sock.connect(self.uds)
            return sock
        sock = socket.create_connection((self.host, self.port), timeout=timeout)
        with _closed_on_error(sock):
            for level, option, value in TCP_KEEPALIVE:
                sock.setsockopt(level, option, value)
        return sock


UNIX_SEND_BUFFER = 4 << 20
SO_SNDBUFFORCE = getattr(socket, "SO_SNDBUFFORCE", 32)  # Linux's (asm-generic); Python does not name it


def _large_send_buffer(sock: socket.socket) -> None:
    """A unix socket's default send buffer (~200 KiB) had an upload wait on the engine's reads every few
    hundred KiB: 1.4 s for 512 MiB where 4 MiB of buffer took 0.9 s, curl's time. net.core.wmem_max
    caps SO_SNDBUF (212992 on a stock kernel) but not SO_SNDBUFFORCE, which root may use. TCP tunes
    its own buffers, and setting one would turn that off: unix sockets only."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE, UNIX_SEND_BUFFER)
    except PermissionError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, UNIX_SEND_BUFFER)


# The alerts a TLS server sends when it refuses the client's certificate, or the lack of one.
_CLIENT_REFUSED = frozenset({"SSLV3_ALERT_BAD_CERTIFICATE", "TLSV13_ALERT_CERTIFICATE_REQUIRED",
                             "TLSV1_ALERT_UNKNOWN_CA", "SSLV3_ALERT_CERTIFICATE_UNKNOWN",
                             "TLSV1_ALERT_ACCESS_DENIED", "SSLV3_ALERT_UNSUPPORTED_CERTIFICATE"})


def _tls_reason(err: ssl.SSLError, files: TlsFiles) -> str:
    if isinstance(err, ssl.SSLCertVerificationError):
        trusted = f"the CA certificate {files.ca}" if files.ca else "the system's CA certificates"
        return f"TLS: the engine's certificate is not trusted by {trusted} ({err.verify_message})"
    if err.reason in _CLIENT_REFUSED:
        if files.cert is None:
            return ("TLS: the engine wants a client certificate and none was given "
                    "(--tlscert and --tlskey, or cert.pem and key.pem in $DOCKER_CERT_PATH)")
        return f"TLS: the engine refused the client certificate {files.cert} ({err.reason})"
    return f"TLS: {err.reason or err}"


def _causes(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    at: BaseException | None = exc
    while at is not None and id(at) not in seen:
        seen.add(id(at))
        yield at
        at = at.__cause__ or at.__context__


@contextlib.contextmanager
def _closed_on_error(sock: socket.socket) -> Iterator[None]:
    try:
        yield
    except BaseException:
        sock.close()
        raise


async def _in_worker(dial: Callable[[float | None], socket.socket], timeout: float | None) -> socket.socket:
    """`dial(timeout)` in a worker thread that a cancellation leaves behind at once; a socket
    that thread makes after that belongs to nobody and is closed."""
    lock = threading.Lock()
    made: list[socket.socket] = []
    wanted = True

    def run() -> None:
        sock = dial(timeout)
        with lock:
            if wanted:
                made.append(sock)
            else:
                sock.close()

    try:
        await trio.to_thread.run_sync(run, abandon_on_cancel=True)
    except BaseException:
        with lock:
            wanted = False
            for sock in made:  # made, but the cancellation came before it was handed over
                sock.close()
        raise
    return made[0]
