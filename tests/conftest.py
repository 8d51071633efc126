"""Fixtures: a real private dockerd with sample images, and imagefs mounted through its own CLI.

Every engine, mount and temp dir started here is torn down here. Every mount is
checked when it is unmounted (as s3ql's pytest_checklogs does): the test fails
when its daemon logged a warning, an error or a traceback that the test did not
declare for that mount. Tests are sorted into tiers: `engine` (a real dockerd
and FUSE) and `unit` (neither), so `pytest -m unit` runs the fast tier alone.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import http.client
import json
import os
import re
import shutil
import signal
import socket
import socketserver
import stat
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Iterable, Iterator
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
    flavor: str = "docker20"  # which engine of private_engine.FLAVORS
    api_path: str = "/v1.41"  # the API version `raw` speaks (the version imagefs picks with this engine)

    @property
    def host(self) -> str:
        return private_engine.docker_host(self.root)

    @property
    def sock(self) -> str:
        return str(self.root / "docker.sock")

    def env(self) -> dict[str, str]:
        return dict(os.environ, DOCKER_HOST=self.host, DOCKER_BUILDKIT="0")

    def docker(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run([private_engine.docker_cli(self.flavor), *args], env=self.env(), check=check,
                              capture_output=True, text=True, timeout=120)

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """The engine's own CLI, as its users drive it: docker, or podman (which spells `x:1` `localhost/x:1`)."""
        command, env = private_engine.own_cli(self.root)
        return subprocess.run([*command, *args], env=env, check=True, capture_output=True, text=True, timeout=120)

    def raw(self, method: str, path: str, timeout: float = 60, api: str | None = None) -> tuple[int, bytes]:
        conn = _UnixConnection(self.sock, timeout)
        try:
            conn.request(method, (self.api_path if api is None else api) + path)
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    def api(self, path: str) -> Any:
        status, body = self.raw("GET", path)
        assert status == 200, (path, status, body)
        return json.loads(body)

    def sample(self, name: str) -> str:
        """A sample image's reference as this engine spells it (podman: `docker.io/library/hello:latest`)."""
        (ref,) = [t for t in self.tags() if t == name or t.endswith("/" + name)]
        return ref

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


@dataclass
class Client(Engine):
    """The same engine as a client with another environment sees it (the docker CLI and imagefs
    alike): `extra` sets variables, and removes those it maps to None."""

    extra: dict[str, str | None] = field(default_factory=dict)

    def env(self) -> dict[str, str]:
        env = super().env()
        for name, value in self.extra.items():
            if value is None:
                env.pop(name, None)
            else:
                env[name] = value
        return env


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


@pytest.fixture(scope="session", params=private_engine.MATRIX)
def matrix_engine(request: pytest.FixtureRequest) -> Iterator[Engine]:
    """Each engine of the matrix in turn, with the sample images: dockerd 20.10 (the `engine`
    fixture itself), dockerd 26, dockerd 26 as Docker 29.0 (containerd image store, API 1.44 at
    least), podman."""
    flavor = request.param
    if flavor == "docker20":
        yield request.getfixturevalue("engine")
        return
    missing = private_engine.missing(flavor)
    if missing:
        pytest.skip(f"{flavor}: {missing}")
    root = Path(tempfile.mkdtemp(prefix=f"ifs-{flavor}-", dir="/tmp"))
    try:
        private_engine.start(root, samples=True, flavor=flavor)
        floor = json.loads(Engine(root, flavor).raw("GET", "/version", api="")[1])["MinAPIVersion"]
        yield Engine(root, flavor, api_path=f"/v{max(floor, '1.41', key=lambda v: tuple(map(int, v.split('.'))))}")
    finally:
        private_engine.stop(root)


@pytest.fixture(scope="session")
def second_engine() -> Iterator[Engine]:
    """An empty engine to restore backups into."""
    yield from _new_engine("ifs-e2-", samples=False)


@contextlib.contextmanager
def _docker_registry(prefix: str, htpasswd: str = "") -> Iterator[str]:
    """Debian's docker-registry on 127.0.0.1 (never with /etc's config: it listens on every interface),
    asking for basic auth when given htpasswd lines; its address."""
    root = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (root / "htpasswd").write_text(htpasswd)
    auth = f"auth:\n  htpasswd:\n    realm: imagefs-tests\n    path: {root}/htpasswd\n" if htpasswd else ""
    (root / "config.yml").write_text(
        f"version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {root}/data\n"
        f"http:\n  addr: 127.0.0.1:{port}\n{auth}"
    )
    proc = subprocess.Popen(["docker-registry", "serve", str(root / "config.yml")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        address = f"127.0.0.1:{port}"
        wait_for(lambda: _http_up(address, expect=401 if htpasswd else 200), timeout=15)
        yield address
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def registry() -> Iterator[str]:
    """A real registry (Debian's docker-registry) on 127.0.0.1: pushing there gives images digests."""
    with _docker_registry("ifs-reg-") as address:
        yield address


@dataclass(frozen=True)
class AuthRegistry:
    """A registry that asks for basic auth: whoever pushes or pulls must log in as `user`."""

    address: str
    user: str
    password: str

    def tags(self, repository: str) -> list[str]:
        """The registry's own list of a repository's tags (its API, not the engine's)."""
        conn = http.client.HTTPConnection(self.address, timeout=10)
        token = base64.b64encode(f"{self.user}:{self.password}".encode()).decode()
        conn.request("GET", f"/v2/{repository}/tags/list", headers={"Authorization": f"Basic {token}"})
        resp = conn.getresponse()
        body = resp.read()
        return list(json.loads(body).get("tags") or []) if resp.status == 200 else []


@pytest.fixture(scope="session")
def auth_registry() -> Iterator[AuthRegistry]:
    """A registry with htpasswd (bcrypt) auth on 127.0.0.1: the engine talks plain HTTP to it."""
    user, password = "alice", "s3cret-pw"
    with warnings.catch_warnings():  # crypt is the stdlib's bcrypt until 3.13; the registry takes only bcrypt
        warnings.simplefilter("ignore", DeprecationWarning)
        import crypt
        hashed = crypt.crypt(password, crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=16))
    with _docker_registry("ifs-areg-", f"{user}:{hashed}\n") as address:
        yield AuthRegistry(address, user, password)


@pytest.fixture
def docker_config(tmp: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty DOCKER_CONFIG for the docker CLI and for the mounts this test makes (they inherit it)."""
    where = tmp / "docker-config"
    where.mkdir()
    monkeypatch.setenv("DOCKER_CONFIG", str(where))
    return where


def login(engine: Engine, registry: AuthRegistry, password: str | None = None) -> None:
    result = subprocess.run(
        ["docker", "login", "-u", registry.user, "--password-stdin", registry.address],
        input=password or registry.password, env=engine.env(), capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def _http_up(address: str, expect: int = 200) -> bool:
    try:
        conn = http.client.HTTPConnection(address, timeout=1)
        conn.request("GET", "/v2/")
        return conn.getresponse().status == expect
    except OSError:
        return False


# The daemon's log format (imagefs/cli.py run_mount): "%(asctime)s imagefs[PID] LEVEL name: message".
LOG_RECORD = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} imagefs\[\d+\] (?P<level>[A-Z]+) \S+: (?P<message>.*)")
QUIET_LEVELS = {"DEBUG", "INFO"}
# An allowance that matches this line would excuse nearly anything: refused, so that no test can
# silence its mount's log by accident.
UNRELATED = "the quick brown fox jumps over the lazy dog 0123456789 /:._-()[]'\",=<>@%?"


def allowances(patterns: Iterable[str]) -> tuple[re.Pattern[str], ...]:
    """Compile a test's expected-log regexes, refusing catch-alls."""
    compiled = tuple(re.compile(p) for p in patterns)
    for p in compiled:
        if p.search("") or p.search(UNRELATED):
            raise ValueError(f"expect={p.pattern!r} would excuse almost any line: name the message")
    return compiled


def unexpected_lines(log: str, expect: Iterable[re.Pattern[str]] = ()) -> list[str]:
    """The lines of a daemon's log that no test should see, besides the records `expect` matches.

    A record at WARNING or above is unexpected unless one of `expect` matches its message. Every
    line not in the log format is unexpected too, and no allowance excuses it: a traceback (which
    the last-resort guard logs with a bug), a Python warning or a crash written to stderr around
    the logger.
    """
    expect = tuple(expect)
    bad = []
    for line in log.splitlines():
        record = LOG_RECORD.fullmatch(line)
        if record is None or (record["level"] not in QUIET_LEVELS
                              and not any(p.search(record["message"]) for p in expect)):
            bad.append(line)
    return bad


@dataclass
class Mount:
    """One imagefs mount made through the CLI, and the part of its log file that this mount wrote."""

    path: Path
    cache_dir: Path
    log: Path
    engine: Engine
    pid: int
    log_start: int  # the log file's size before this mount: a remount in the same dir appends to it
    args: list[str] = field(default_factory=list)
    expect: tuple[re.Pattern[str], ...] = ()
    checked: bool = False

    def __truediv__(self, other: str) -> Path:
        return self.path / other

    def daemon_pid(self) -> int:
        return self.pid

    def log_text(self) -> str:
        if not self.log.exists():
            return ""
        with open(self.log, "rb") as f:
            f.seek(self.log_start)
            return f.read().decode(errors="replace")

    def check_log(self) -> None:
        """Fail with the lines of this mount's log that its test did not declare."""
        self.checked = True
        bad = unexpected_lines(self.log_text(), self.expect)
        expected = ", ".join(repr(p.pattern) for p in self.expect) or "nothing"
        assert not bad, (f"the daemon of {self.path} logged what its test did not expect "
                         f"(expected: {expected}):\n" + "\n".join(bad))


def settled(m: Mount) -> None:
    """Wait until a --debug mount follows events and has asked for the list it catches up with.

    From then on it asks the engine nothing of its own accord until an event comes, so a test can
    count the requests that what it does causes.
    """
    catching_up = re.compile(r"following engine events\n(?:.*\n)*?.* engine request GET /v1\.\d+/images/json")
    wait_for(lambda: catching_up.search(m.log_text()) is not None, timeout=10)


_MOUNTS: list[Mount] = []  # every mount of the running test, so that none is left unchecked


def _find_daemon(mnt: Path) -> int:
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmd = (proc / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"imagefs" in cmd and str(mnt).encode() in cmd and b"--foreground" in cmd:
                return int(proc.name)
    raise LookupError(f"no daemon serves {mnt}")


def mount_imagefs(engine: Engine, base: Path, *args: str, expect: Iterable[str] = ()) -> Mount:
    """Mount through the CLI; `expect` are regexes for the warnings this test's scenario causes.

    The mount is checked by `unmount` (which a test that mounts here need not call: the mount is
    unmounted and checked after the test anyway).
    """
    patterns = allowances(expect)
    mnt, cache = base / "mnt", base / "cache"
    mnt.mkdir(exist_ok=True)
    log = base / "imagefs.log"
    log_start = log.stat().st_size if log.exists() else 0
    env = dict(engine.env(), IMAGEFS_LOG=str(log))
    result = subprocess.run([*IMAGEFS, "mount", "--cache-dir", str(cache), *args, str(mnt)],
                            env=env, capture_output=True, text=True, timeout=60)
    m = Mount(mnt, cache, log, engine, 0, log_start, list(args), patterns)
    assert result.returncode == 0, result.stderr + (m.log_text() or "(no log)")
    assert os.path.ismount(mnt)
    try:
        m.pid = _find_daemon(mnt)
    except LookupError:
        subprocess.run(["fusermount3", "-u", "-z", str(mnt)], capture_output=True)
        raise AssertionError(f"mounted, but no daemon serves {mnt}:\n{m.log_text()}") from None
    _MOUNTS.append(m)
    return m


@contextlib.contextmanager
def mounted(engine: Engine, base: Path, *args: str, expect: Iterable[str] = ()) -> Iterator[Mount]:
    """imagefs mounted through its CLI for the block, unmounted (and its log checked) however the block ends."""
    m = mount_imagefs(engine, base, *args, expect=expect)
    try:
        yield m
    finally:
        unmount(m)


def unmount(m: Mount) -> None:
    """Unmount, wait for the daemon to exit, then check its log; a second call does nothing."""
    if m.checked:
        return
    if os.path.ismount(m.path):
        subprocess.run([*IMAGEFS, "umount", str(m.path)], capture_output=True, timeout=60)
    if os.path.ismount(m.path):
        subprocess.run(["fusermount3", "-u", "-z", str(m.path)], capture_output=True)
    # Only an exited daemon has written all of its log (a lazy unmount does not wait for it).
    with contextlib.suppress(AssertionError):
        wait_for(lambda: _gone(m.pid), timeout=15)
    try:
        m.check_log()
    finally:
        if not _gone(m.pid):
            os.kill(m.pid, signal.SIGKILL)
            raise AssertionError(f"the daemon of {m.path} (pid {m.pid}) still ran 15 s after its unmount")


def _gone(pid: int) -> bool:
    """Exited: no process, or a zombie that init has yet to reap."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state in ("Z", "X")


@pytest.fixture(autouse=True)
def _every_mount_is_checked() -> Iterator[None]:
    """Unmount and check whatever mount a test left behind, so no mount site can skip the check."""
    _MOUNTS.clear()
    yield
    left, _MOUNTS[:] = list(_MOUNTS), []
    failures = []
    for m in left:
        try:
            unmount(m)
        except AssertionError as exc:
            failures.append(str(exc))
    assert not failures, "\n\n".join(failures)


@pytest.fixture
def tmp(request: pytest.FixtureRequest) -> Iterator[Path]:
    """A short temp dir under /tmp (unix sockets and mount paths stay short), always removed."""
    path = Path(tempfile.mkdtemp(prefix="ifs-t-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def mount(engine: Engine, tmp: Path, request: pytest.FixtureRequest) -> Iterator[Mount]:
    """imagefs mounted for the test; `@pytest.mark.mount(*args, expect=[...])` passes options and allowances."""
    marker = request.node.get_closest_marker("mount")
    args, expect = (marker.args, marker.kwargs.get("expect", ())) if marker else ((), ())
    with mounted(engine, tmp, *args, expect=expect) as m:
        yield m


# --- tiers ----------------------------------------------------------------------------------------

ENGINE_FIXTURES = {"engine", "second_engine", "matrix_engine", "registry", "auth_registry", "mount"}


def _fuse_missing() -> str | None:
    """Why FUSE mounts cannot be made here, or None (as pyfuse3's test/util.py fuse_test_marker)."""
    fusermount = shutil.which("fusermount3")
    if fusermount is None:
        return "no fusermount3"
    if not os.path.exists("/dev/fuse"):
        return "no /dev/fuse: the FUSE kernel module does not seem to be loaded"
    if os.getuid() != 0 and not os.stat(fusermount).st_mode & stat.S_ISUID:
        return "fusermount3 is not setuid, and we are not root"
    try:
        os.close(os.open("/dev/fuse", os.O_RDWR))
    except OSError as exc:
        return f"cannot open /dev/fuse: {exc.strerror}"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # fixturenames is the closure: a test that needs the engine through another fixture counts too.
    fuse_missing = _fuse_missing()
    for item in items:
        if ENGINE_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.engine)
            if fuse_missing:  # every engine test mounts imagefs
                item.add_marker(pytest.mark.skip(reason=fuse_missing))
        else:
            item.add_marker(pytest.mark.unit)


def dead(path: Path) -> bool:
    """Is this a mount whose daemon is gone ("Transport endpoint is not connected")?"""
    try:
        os.listdir(path)
    except OSError as exc:
        return exc.errno == errno.ENOTCONN
    return False


def interruptible() -> None:
    """A child's SIGINT as a terminal gives it (preexec_fn): a test run in the background (`cmd &`
    from a script) inherits SIGINT ignored, and Ctrl-C would then never reach the writer."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


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
