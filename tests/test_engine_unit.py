"""The engine client's own logic: addresses, TLS settings, connections, version choice, answer mapping.

httpx's MockTransport (through Engine's `transport=` seam) stands in for the engine only to
check how answers are mapped. The connections themselves (unix, TCP with keepalive, TLS for
both the httpx client and the export GET) are made to small servers on real sockets here;
every behaviour with a real engine is tested against dockerd elsewhere.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import socket
import ssl
import subprocess
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import trio

from imagefs.engine import Engine, EngineConfig
from imagefs.errors import BrokenAnswer, Conflict, EngineUnreachable, NoSuchImage, errno_for


def test_address_precedence() -> None:
    env = {"DOCKER_HOST": "tcp://10.0.0.1:2375"}
    assert EngineConfig.from_options(env=env).host == "tcp://10.0.0.1:2375"
    assert EngineConfig.from_options(host="unix:///x.sock", env=env).host == "unix:///x.sock"
    assert EngineConfig.from_options(hostname="engine:2375", env=env).host == "http://engine:2375"
    assert EngineConfig.from_options(scheme="https", env={}).host == "https://localhost"
    assert EngineConfig.from_options(env={}).host == "unix:///var/run/docker.sock"


def test_endpoints() -> None:
    unix = EngineConfig(host="unix:///run/d.sock").endpoint()
    assert unix.uds == "/run/d.sock" and httpx.URL(unix.base_url) == httpx.URL("http://docker")
    assert EngineConfig(host="tcp://h:2375").endpoint().base_url == "http://h:2375"
    assert EngineConfig(host="tcp://h").endpoint().base_url == "http://h:2375"
    assert EngineConfig(host="tcp://[::1]:1").endpoint().authority == "[::1]:1"
    assert EngineConfig(host="http://h:80/prefix/").endpoint().base_url == "http://h:80/prefix"
    secure = EngineConfig(host="https://h/").endpoint()
    # TLS is the endpoint's: httpx speaks plain HTTP over a connection that is already TLS.
    assert secure.tls is not None and secure.port == 443 and secure.base_url == "http://h:443"
    assert EngineConfig(host="tcp://h", tls_verify=True).endpoint().port == 2376


@pytest.mark.parametrize(
    ("host", "reason"),
    [
        ("ssh://user:pw@h", "a password in an ssh:// address is not supported"),
        ("ssh://h?x=1", "has no query or fragment"),
        ("ssh://h:port", "bad port"),
        ("ftp://h", "unsupported engine address"),
        ("tcp://:2375", "unsupported engine address"),
        ("tcp://h:port", "bad port"),
        ("unix://", "names no socket path"),
    ],
)
def test_an_unusable_address_says_why_in_one_line(host: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason) as info:
        EngineConfig(host=host).endpoint()
    assert "\n" not in str(info.value)


def test_tls_follows_the_docker_cli(tmp_path: Path) -> None:
    env = {"DOCKER_TLS_VERIFY": "1", "DOCKER_CERT_PATH": "/certs"}
    config = EngineConfig.from_options(host="tcp://h:2376", env=env)
    assert config.tls_verify and config.tls_ca == "/certs/ca.pem"
    assert not EngineConfig.from_options(host="tcp://h:2375", env={}).tls_verify
    flags = EngineConfig.from_options(host="tcp://h:2376", tlsverify=True, tlscacert="/a/ca.pem", env={})
    assert flags.tls_verify and flags.tls_ca == "/a/ca.pem"
    # A client cert or key left at its default is used only if it is there.
    assert config.tls_cert is None and config.tls_key is None
    (tmp_path / "cert.pem").touch()
    (tmp_path / "key.pem").touch()
    there = EngineConfig.from_options(host="tcp://h", env={"DOCKER_CERT_PATH": str(tmp_path)})
    assert there.tls_cert == str(tmp_path / "cert.pem") and there.tls_key == str(tmp_path / "key.pem")


def test_tls_files_that_are_not_there_are_errors(tmp_path: Path) -> None:
    named = EngineConfig.from_options(host="tcp://h", tlscert=str(tmp_path / "mine.pem"), env={})
    with pytest.raises(ValueError, match=r"client certificate .*mine\.pem does not exist"):
        named.endpoint()
    no_ca = EngineConfig(host="tcp://h", tls_verify=True, tls_ca=str(tmp_path / "ca.pem"))
    with pytest.raises(ValueError, match=r"CA certificate .*ca\.pem does not exist"):
        no_ca.endpoint()
    (tmp_path / "junk.pem").write_text("not a certificate")
    with pytest.raises(ValueError, match="cannot be used"):
        EngineConfig(host="tcp://h", tls_cert=str(tmp_path / "junk.pem")).endpoint()


# --- answers, through the transport seam ----------------------------------------------------


def _engine_answering(handler: Callable[[httpx.Request], httpx.Response], **config: object) -> Engine:
    return Engine(EngineConfig(host="unix:///unused", **config), transport=httpx.MockTransport(handler))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("oldest", "newest", "chosen"),
    [("1.12", "1.41", "/v1.41"), ("1.24", "1.51", "/v1.41"), ("1.44", "1.51", "/v1.44"), ("1.12", "1.40", "/v1.40")],
)
def test_version_negotiation(oldest: str, newest: str, chosen: str) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/version"
        return httpx.Response(200, json={"ApiVersion": newest, "MinAPIVersion": oldest})

    assert trio.run(_engine_answering(handler).negotiate) == chosen


def test_pinned_base_path_asks_nothing() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise AssertionError("no request expected")

    assert trio.run(_engine_answering(handler, base_path="/v1.40").negotiate) == "/v1.40"


def test_errors_carry_the_engines_message() -> None:
    answers = {
        "/v1.41/images/x/json": (404, {"message": "No such image: x"}),
        "/v1.41/images/y": (409, {"message": "conflict: image is being used by running container abc"}),
    }

    def handler(request: httpx.Request) -> httpx.Response:
        status, body = answers[request.url.path]
        return httpx.Response(status, content=json.dumps(body).encode())

    async def main() -> None:
        engine = _engine_answering(handler)
        engine.api_path = "/v1.41"
        with pytest.raises(NoSuchImage) as missing:
            await engine.inspect("x")
        assert missing.value.message == "No such image: x" and errno_for(missing.value) == errno.ENOENT
        with pytest.raises(Conflict) as busy:
            await engine.delete("y")
        assert "running container abc" in busy.value.message and errno_for(busy.value) == errno.EBUSY

    trio.run(main)


def test_unreachable_engine_is_eio_never_enoent() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("[Errno 2] No such file or directory")

    async def main() -> None:
        with pytest.raises(EngineUnreachable) as info:
            await _engine_answering(handler).list_images()
        assert errno_for(info.value) == errno.EIO

    trio.run(main)


@pytest.mark.parametrize("body", [b"<html>busy</html>", b'{"cut": ', b"\xff\xfe{}"])
def test_an_answer_that_is_not_json_is_a_broken_answer(body: bytes) -> None:
    async def main() -> None:
        with pytest.raises(BrokenAnswer, match="not JSON") as info:
            await _engine_answering(lambda request: httpx.Response(200, content=body)).list_images()
        assert errno_for(info.value) == errno.EIO and "GET /images/json?all=1" in str(info.value)

    trio.run(main)


@pytest.mark.parametrize("line", [b"{not json}", b"[1, 2]"])
def test_an_event_that_is_not_json_is_a_broken_answer(line: bytes) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=b'{"Action": "tag"}\n\n' + line + b"\n")

    async def main() -> None:
        seen = []
        with pytest.raises(BrokenAnswer, match="GET /events"):
            async with _engine_answering(handler).events({}) as events:
                async for event in events:
                    seen.append(event)
        assert seen == [{"Action": "tag"}]

    trio.run(main)


def test_dry_run_sends_no_mutation() -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.method)
        return httpx.Response(200, json=[])

    async def main() -> None:
        engine = _engine_answering(handler, dry_run=True)
        assert await engine.tag("a:1", "b", "2") is None
        assert await engine.delete("a:1") is None
        assert await engine.prune({}) is None
        assert await engine.list_images() == []

    trio.run(main)
    assert seen == ["GET"]


# --- connections, to small servers on real sockets ------------------------------------------

Answer = Callable[[bytes], tuple[bytes, bool]]  # a request head -> the reply, and whether to close after it


@dataclass
class Served:
    heads: list[bytes] = field(default_factory=list)  # of the requests, in order
    closed: threading.Semaphore = field(default_factory=lambda: threading.Semaphore(0))  # once per connection


@contextmanager
def serving(listener: socket.socket, answer: Answer, tls: ssl.SSLContext | None = None) -> Iterator[Served]:
    """A server on `listener` in a thread, one connection at a time."""
    served = Served()

    def serve(conn: socket.socket) -> None:
        data = b""
        while True:
            while b"\r\n\r\n" not in data:
                if not (got := conn.recv(65536)):
                    return
                data += got
            head, _, data = data.partition(b"\r\n\r\n")
            served.heads.append(head)
            reply, close = answer(head)
            conn.sendall(reply)
            if close:
                return

    def run() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:  # shut down: the test is over
                return
            with conn:
                serve(tls.wrap_socket(conn, server_side=True) if tls else conn)
            served.closed.release()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield served
    finally:
        listener.shutdown(socket.SHUT_RDWR)
        listener.close()
        thread.join(10)


def unix_listener(path: Path) -> socket.socket:
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(path))
    listener.listen(4)
    return listener


def tcp_listener() -> socket.socket:
    return socket.create_server(("127.0.0.1", 0))


def json_reply(document: object) -> bytes:
    body = json.dumps(document).encode()
    return b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)


def test_a_connection_the_engine_closed_is_not_reused(tmp_path: Path) -> None:
    def answer(head: bytes) -> tuple[bytes, bool]:
        return json_reply({"Version": "1"}), True  # keep-alive by HTTP/1.1, closed all the same

    with serving(unix_listener(tmp_path / "d.sock"), answer) as served:
        engine = Engine(EngineConfig(host=f"unix://{tmp_path / 'd.sock'}"), api_path="/v1.41")

        async def main() -> None:
            assert await engine.version() == {"Version": "1"}
            await trio.to_thread.run_sync(served.closed.acquire)
            # The pooled connection is closed at the other end: it is seen to be, not written into.
            assert await engine.version() == {"Version": "1"}
            await engine.aclose()

        trio.run(main)
    assert [h.split(b"\r\n")[0] for h in served.heads] == [b"GET /v1.41/version HTTP/1.1"] * 2


def test_tcp_connections_keep_alive() -> None:
    with tcp_listener() as listener:
        port = listener.getsockname()[1]
        with EngineConfig(host=f"tcp://127.0.0.1:{port}").endpoint().connect(5) as sock:
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 10


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """A self-signed certificate for 127.0.0.1 and its key (the server's, the client's and the CA)."""
    if not shutil.which("openssl"):
        pytest.skip("needs openssl to make a certificate")
    where = tmp_path_factory.mktemp("tls")
    cert, key = str(where / "cert.pem"), str(where / "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
                    "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", key, "-out", cert],
                   check=True, capture_output=True)
    return cert, key


def test_tls_reaches_the_engine_from_both_clients(certificate: tuple[str, str]) -> None:
    cert, key = certificate
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=cert)
    server.load_cert_chain(cert, key)
    server.verify_mode = ssl.CERT_REQUIRED  # the client's certificate is checked too
    payload = os.urandom(300_000)

    def answer(head: bytes) -> tuple[bytes, bool]:
        if b"/get " in head:
            return b"HTTP/1.0 200 OK\r\nContent-Type: application/x-tar\r\n\r\n" + payload, True
        return json_reply({"Version": "tls"}), True  # one connection at a time: the GET's is next

    listener = tcp_listener()
    port = listener.getsockname()[1]
    with serving(listener, answer, server) as served:
        config = EngineConfig(host=f"tcp://127.0.0.1:{port}", tls_verify=True, tls_ca=cert, tls_cert=cert,
                              tls_key=key)
        engine = Engine(config, api_path="/v1.41")
        fd = os.memfd_create("spool")

        async def main() -> None:
            assert await engine.version() == {"Version": "tls"}  # httpx, on the endpoint's TLS stream
            async with engine.bulk_get("/images/x/get", []) as body:  # bulkget, on the endpoint's TLS socket
                await body.write_into(fd, lambda n: None)
            await engine.aclose()

        try:
            trio.run(main)
            assert os.pread(fd, len(payload) + 1, 0) == payload
        finally:
            os.close(fd)
    assert [h.split(b" ")[1] for h in served.heads] == [b"/v1.41/version", b"/v1.41/images/x/get"]
