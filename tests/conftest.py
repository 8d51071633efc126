"""Fixtures: a real private dockerd with sample images, and imagefs mounted through its own CLI.

Every engine, mount and temp dir started here is torn down here, and a test
fails when the daemon logged a bug caught by its last-resort guard.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import shutil
import socket
import socketserver
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import private_engine  # noqa: E402

IMAGEFS = [sys.executable, "-m", "imagefs"]


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, sock_path: str, timeout: float) -> None:
        super().__init__("docker", timeout=timeout)
        self.sock_path = sock_path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.sock_path)


@dataclass
class Engine:
    """A private dockerd, driven through its CLI and its raw API (never through imagefs)."""

    root: Path

    @property
    def host(self) -> str:
        return private_engine.docker_host(self.root)

    @property
    def sock(self) -> str:
        return str(self.root / "docker.sock")

    def env(self) -> dict[str, str]:
        return dict(os.environ, DOCKER_HOST=self.host, DOCKER_BUILDKIT="0")

    def docker(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run([private_engine.DOCKER, *args], env=self.env(), check=check,
                              capture_output=True, text=True, timeout=120)

    def raw(self, method: str, path: str, timeout: float = 60) -> tuple[int, bytes]:
        conn = _UnixConnection(self.sock, timeout)
        try:
            conn.request(method, "/v1.41" + path)
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    def api(self, path: str) -> Any:
        status, body = self.raw("GET", path)
        assert status == 200, (path, status, body)
        return json.loads(body)

    def tags(self) -> set[str]:
        return {t for image in self.api("/images/json") for t in image.get("RepoTags") or () if t != "<none>:<none>"}

    def image_ids(self) -> set[str]:
        return {image["Id"] for image in self.api("/images/json?all=1")}

    def save(self, ref: str) -> bytes:
        status, body = self.raw("GET", f"/images/{quote(ref, safe='/:@')}/get", timeout=300)
        assert status == 200, (ref, status)
        return body

    def events(self, since: float, action: str | None = None) -> list[dict[str, Any]]:
        filters = quote(json.dumps({"type": ["image"]}))
        status, body = self.raw("GET", f"/events?since={since:.3f}&until={time.time():.3f}&filters={filters}")
        assert status == 200
        events = [json.loads(line) for line in body.splitlines() if line.strip()]
        return [e for e in events if action is None or e.get("Action") == action]

    def start(self) -> None:
        private_engine.start(self.root, samples=False)

    def kill(self, hard: bool = False) -> None:
        """Stop dockerd (SIGKILL when hard), keeping its data, and wait until it has exited."""
        private_engine.terminate(self.root, hard=hard)


def _new_engine(prefix: str, samples: bool) -> Iterator[Engine]:
    root = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    try:
        private_engine.start(root, samples=samples)
        yield Engine(root)
    finally:
        private_engine.stop(root)


@pytest.fixture(scope="session")
def engine() -> Iterator[Engine]:
    yield from _new_engine("ifs-e-", samples=True)


@pytest.fixture(scope="session")
def second_engine() -> Iterator[Engine]:
    """An empty engine to restore backups into."""
    yield from _new_engine("ifs-e2-", samples=False)


@pytest.fixture(scope="session")
def registry() -> Iterator[str]:
    """A real registry (Debian's docker-registry) on 127.0.0.1: pushing there gives images digests."""
    root = Path(tempfile.mkdtemp(prefix="ifs-reg-", dir="/tmp"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (root / "config.yml").write_text(
        f"version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {root}/data\n"
        f"http:\n  addr: 127.0.0.1:{port}\n"
    )
    proc = subprocess.Popen(["docker-registry", "serve", str(root / "config.yml")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        address = f"127.0.0.1:{port}"
        wait_for(lambda: _http_up(address), timeout=15)
        yield address
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(root, ignore_errors=True)


def _http_up(address: str) -> bool:
    try:
        conn = http.client.HTTPConnection(address, timeout=1)
        conn.request("GET", "/v2/")
        return conn.getresponse().status == 200
    except OSError:
        return False


@dataclass
class Mount:
    path: Path
    cache_dir: Path
    log: Path
    engine: Engine
    args: list[str] = field(default_factory=list)

    def __truediv__(self, other: str) -> Path:
        return self.path / other

    def daemon_pid(self) -> int:
        for proc in Path("/proc").iterdir():
            if proc.name.isdigit():
                try:
                    cmd = (proc / "cmdline").read_bytes().split(b"\0")
                except OSError:
                    continue
                if b"imagefs" in cmd and str(self.path).encode() in cmd and b"--foreground" in cmd:
                    return int(proc.name)
        raise LookupError("no daemon")

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def mount_imagefs(engine: Engine, base: Path, *args: str, expect: list[str] | None = None) -> Mount:
    mnt, cache = base / "mnt", base / "cache"
    mnt.mkdir(exist_ok=True)
    log = base / "imagefs.log"
    env = dict(engine.env(), IMAGEFS_LOG=str(log))
    result = subprocess.run([*IMAGEFS, "mount", "--cache-dir", str(cache), *args, str(mnt)],
                            env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr + log.read_text(errors="replace") if log.exists() else ""
    assert os.path.ismount(mnt)
    return Mount(mnt, cache, log, engine, list(args))


@contextlib.contextmanager
def mounted(engine: Engine, base: Path, *args: str, expect: list[str] | None = None) -> Iterator[Mount]:
    """imagefs mounted through its CLI for the block, unmounted however the block ends."""
    m = mount_imagefs(engine, base, *args)
    try:
        yield m
    finally:
        unmount(m)


def unmount(m: Mount) -> None:
    if os.path.ismount(m.path):
        subprocess.run([*IMAGEFS, "umount", str(m.path)], capture_output=True, timeout=60)
    if os.path.ismount(m.path):
        subprocess.run(["fusermount3", "-u", "-z", str(m.path)], capture_output=True)


@pytest.fixture
def tmp(request: pytest.FixtureRequest) -> Iterator[Path]:
    """A short temp dir under /tmp (unix sockets and mount paths stay short), always removed."""
    path = Path(tempfile.mkdtemp(prefix="ifs-t-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def mount(engine: Engine, tmp: Path, request: pytest.FixtureRequest) -> Iterator[Mount]:
    marker = request.node.get_closest_marker("mount_args")
    with mounted(engine, tmp, *(marker.args if marker else ())) as m:
        yield m
    bugs = [line for line in m.log_text().splitlines() if "unexpected error" in line]
    assert not bugs, "the daemon's guard caught bugs:\n" + "\n".join(bugs)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "mount_args(*args): extra imagefs mount options for the mount fixture")


def wait_for(predicate: Any, timeout: float = 5.0, interval: float = 0.05) -> float:
    """Poll until predicate() is true; the seconds it took. Fails the test on timeout."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"not true within {timeout} s")
        time.sleep(interval)
    return time.monotonic() - start


def pretty(doc: Any) -> bytes:
    return (json.dumps(doc, indent=2, ensure_ascii=False) + "\n").encode()


class Proxy:
    """A proxy to the engine's unix socket, listening on a unix socket or on TCP 127.0.0.1.

    With `refuse_events` it answers /events with 500: an engine whose event stream is down. With
    `http11` it passes HTTP/1.0 requests on as HTTP/1.1 (the engine then frames the body in chunks);
    with `cut_exports` it ends each export's body after that many bytes, as a crashing engine would.
    """

    def __init__(self, upstream: str, listen: Path | None = None, refuse_events: bool = False,
                 http11: bool = False, cut_exports: int | None = None) -> None:
        handler = self._handler(upstream, refuse_events, http11, cut_exports)
        self.server: socketserver.BaseServer
        if listen is None:
            self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), handler)
            self.address = f"127.0.0.1:{self.server.server_address[1]}"  # type: ignore[index]
        else:
            self.server = socketserver.ThreadingUnixStreamServer(str(listen), handler)
            self.address = str(listen)
        self.server.daemon_threads = True  # type: ignore[attr-defined]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @staticmethod
    def _handler(upstream: str, refuse_events: bool, http11: bool,
                 cut_exports: int | None) -> type[socketserver.BaseRequestHandler]:
        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                head = b""
                while b"\r\n\r\n" not in head:
                    chunk = self.request.recv(65536)
                    if not chunk:
                        return
                    head += chunk
                if refuse_events and b"/events" in head.split(b"\r\n", 1)[0]:
                    body = b'{"message":"events are off here"}'
                    self.request.sendall(b"HTTP/1.1 500 Internal Server Error\r\nContent-Type: application/json\r\n"
                                         b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body))
                    return
                line = head.split(b"\r\n", 1)[0]
                if http11 and line.endswith(b" HTTP/1.0"):
                    head = head.replace(b" HTTP/1.0\r\n", b" HTTP/1.1\r\nConnection: close\r\n", 1)
                with socket.socket(socket.AF_UNIX) as up:
                    up.connect(upstream)
                    up.sendall(head)
                    pump = threading.Thread(target=_copy, args=(self.request, up), daemon=True)
                    pump.start()
                    if cut_exports is not None and re.match(rb"GET \S*/get[?\s]", line):
                        _copy_cut(up, self.request, cut_exports)
                    else:
                        _copy(up, self.request)

        return Handler

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _copy_cut(src: socket.socket, dst: socket.socket, body_bytes: int) -> None:
    """Pass an answer's head and the first `body_bytes` of its body on, then end the connection."""
    data = b""
    while b"\r\n\r\n" not in data and (chunk := src.recv(1 << 16)):
        data += chunk
    with contextlib.suppress(OSError):
        while len(data) < data.find(b"\r\n\r\n") + 4 + body_bytes and (chunk := src.recv(1 << 16)):
            data += chunk
        dst.sendall(data[: data.find(b"\r\n\r\n") + 4 + body_bytes])
        dst.shutdown(socket.SHUT_RDWR)


def _copy(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(1 << 16):
            dst.sendall(data)
    except OSError:
        pass
    with contextlib.suppress(OSError):
        dst.shutdown(socket.SHUT_WR)
