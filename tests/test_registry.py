"""pull, push, search, commit, build-prune through files (SPEC §7), against real parts.

The engine is the private dockerd; the registries are Debian's docker-registry on 127.0.0.1 (one
with htpasswd auth); credentials come from `docker login` into a temporary DOCKER_CONFIG or from a
credential helper the test puts on PATH; search asks a stand-in v1 index on 127.0.0.1, since
distribution has no search and Docker Hub is not reachable here.
"""

from __future__ import annotations

import errno
import hashlib
import http.server
import io
import json
import os
import re
import signal
import stat
import subprocess
import tarfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import pytest
from conftest import AuthRegistry, Engine, _UnixConnection, interruptible, login, mounted, pretty, wait_for
from test_control_files import build, engine_requests, write


def shell(command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=120)


def install_helper(tmp: Path, monkeypatch: pytest.MonkeyPatch, name: str, server: str, user: str) -> Path:
    """A `docker-credential-<name>` on PATH (a mount started later finds it) that knows one server.

    It answers the secret that the returned file holds at the time of the call."""
    bin_dir = tmp / "bin"
    bin_dir.mkdir(exist_ok=True)
    secret = bin_dir / "secret"
    script = bin_dir / f"docker-credential-{name}"
    answer = f'{{"ServerURL":"{server}","Username":"{user}","Secret":"\'"$(cat {secret})"\'"}}'
    script.write_text(f"#!/bin/sh\n[ \"$1\" = get ] && [ \"$(cat)\" = '{server}' ] && echo '{answer}' && exit 0\n"
                      "echo 'credentials not found in native keychain'; exit 1\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return secret


def image_id(engine: Engine, ref: str) -> str:
    return engine.docker("image", "inspect", "-f", "{{.Id}}", ref).stdout.strip()


PUSH_REFUSED = r"^write: AccessDenied: POST /v1\.41/images/127\.0\.0\.1:\d+/acme/app/push\?tag=\d: .*"
PULL_REFUSED = r"^write: AccessDenied: POST /v1\.41/images/create\?fromImage=\S+&tag=1: 500 .*no basic auth credentials"
PULL_MISSING = r"^write: NoSuchImage: POST /v1\.41/images/create\?fromImage=127\.0\.0\.1%3A\d+%2Facme%2F\w+&tag=\w+: "


def test_push_then_pull_with_the_clis_credentials(engine: Engine, auth_registry: AuthRegistry, tmp: Path,
                                                  docker_config: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    reg = auth_registry.address
    build(engine, tmp, f"FROM scratch\nLABEL run={time.time()}\nCOPY Dockerfile /x\n", f"{reg}/acme/app:1")
    made = image_id(engine, f"{reg}/acme/app:1")
    secret = install_helper(tmp, monkeypatch, "imagefs-test", reg, auth_registry.user)
    with mounted(engine, tmp, expect=[PUSH_REFUSED, PULL_REFUSED, PULL_MISSING]) as m:
        push = m / reg / "acme/app:1/push"
        # No credentials: the registry refuses the push (in the stream), and the file says why.
        result = shell(f"echo > '{push}'")
        assert result.returncode != 0 and "Permission denied" in result.stderr
        assert "no basic auth credentials" in push.read_text()
        assert write(m / ".imagefs/pull", f"{reg}/acme/app:1") == errno.EACCES  # a 500 on 20.10, never a 401
        login(engine, auth_registry)  # read by the very next write: config.json is read per operation
        assert write(push, "\n") == 0
        assert f"pushed {reg}/acme/app:1: digest sha256:" in push.read_text()
        assert auth_registry.tags("acme/app") == ["1"]

        engine.docker("rmi", f"{reg}/acme/app:1")
        assert made not in engine.image_ids()
        pull = m / ".imagefs/pull"
        arch = engine.api("/version")["Arch"]
        assert write(pull, f"{reg}/acme/app:1 platform=linux/{arch}\n") == 0
        assert json.loads((m / reg / "acme/app:1/inspect").read_text())["Id"] == made  # in the tree already
        outcome = pull.read_text()
        assert f"pulled {reg}/acme/app:1 ({made})" in outcome and "Digest: sha256:" in outcome
        digest = outcome.split("Digest: ", 1)[1].split()[0]
        assert write(pull, f"{reg}/acme/app@{digest}") == 0  # by digest, as the engine takes it: tag=sha256:…
        assert f"pulled {reg}/acme/app@{digest} ({made})" in pull.read_text()

        # A reference without a tag is :latest, never every tag; what the registry lacks is ENOENT.
        assert write(pull, f"{reg}/acme/app") == errno.ENOENT
        assert f"{reg}/acme/app:latest not found" in pull.read_text()
        result = shell(f"echo {reg}/acme/nope:1 > '{pull}'")
        assert "No such file or directory" in result.stderr
        assert "not found" in pull.read_text()

        # A credential helper named in config.json wins over the file; a wrong secret is refused.
        secret.write_text("wrong")
        (docker_config / "config.json").write_text(json.dumps({"credHelpers": {reg: "imagefs-test"}}))
        engine.docker("tag", f"{reg}/acme/app:1", f"{reg}/acme/app:2")
        wait_for(lambda: (m / reg / "acme/app:2").exists(), timeout=1.5)  # a change by another: within 1 s
        assert write(m / reg / "acme/app:2/push", "\n") == errno.EACCES
        assert "unauthorized" in (m / reg / "acme/app:2/push").read_text()
        secret.write_text(auth_registry.password)
        assert write(m / reg / "acme/app:2/push", "\n") == 0
        assert sorted(auth_registry.tags("acme/app")) == ["1", "2"]

        status = (m / ".imagefs/status").read_text()
        assert os.stat(m / ".imagefs/status").st_size == len(status.encode())
        lines = status.splitlines()
        assert any(f"push {reg}/acme/app:1 state=failed" in line for line in lines)
        assert any(f"pull {reg}/acme/app:1 state=done" in line for line in lines)
        assert any(f"push {reg}/acme/app:2 state=done" in line for line in lines)
    engine.docker("rmi", f"{reg}/acme/app:1", f"{reg}/acme/app:2")


@pytest.fixture(scope="module")
def big_image(engine: Engine, registry: str) -> Iterator[str]:
    """A 64 MB image (one layer that does not compress) in the plain registry, absent from the engine."""
    ref = f"{registry}/big/blob:1"
    context = Path(f"/tmp/ifs-big-{os.getpid()}")
    context.mkdir()
    try:
        (context / "blob").write_bytes(os.urandom(64 << 20))
        (context / "Dockerfile").write_text("FROM scratch\nCOPY blob /blob\n")
        engine.docker("build", "-q", "-t", ref, str(context))
        engine.docker("push", ref)
        engine.docker("rmi", ref)
        yield ref
    finally:
        subprocess.run(["rm", "-rf", str(context)], check=False)


def test_a_running_pull_shows_its_progress(engine: Engine, big_image: str, tmp: Path) -> None:
    with mounted(engine, tmp) as m:
        pull, status = m / ".imagefs/pull", m / ".imagefs/status"
        tail = subprocess.Popen(["tail", "-s", "0.1", "-f", str(status)], stdout=subprocess.PIPE, text=True)
        try:
            seen = _reads_during_a_pull(pull, big_image)
            assert any(re.search(rf"running: \d+ pull {re.escape(big_image)} state=running", t) for t in seen)
            assert any("Downloading" in text or "Extracting" in text for text in seen), seen[-1]
            journal = status.read_text()
            assert f"pull {big_image} state=running layers=0/1" in journal
            assert f"pull {big_image} state=done layers=1/1 bytes=" in journal
            assert "running:" not in pull.read_text()
            # tail -f (which polls a FUSE file's size) prints the journal line by line as it grows.
            assert [line for line in _lines_until(tail, "state=done") if line.strip()] == journal.splitlines(True)
        finally:
            tail.kill()
            tail.wait()
    engine.docker("rmi", big_image)


def _reads_during_a_pull(pull: Path, ref: str) -> list[str]:
    """Pull in a thread; what reads of the control file said while it ran."""
    done: list[int] = []
    writer = threading.Thread(target=lambda: done.append(write(pull, ref)))
    seen: list[str] = []
    writer.start()
    try:
        while writer.is_alive():
            text = pull.read_text()
            if "running:" in text:
                seen.append(text)
            time.sleep(0.01)
    finally:
        writer.join()
    assert done == [0]
    assert seen, "no read saw the pull running"
    return seen


def _lines_until(proc: subprocess.Popen[str], words: str, timeout: float = 10) -> list[str]:
    """A process's lines up to the first holding `words`; killed after `timeout`, which ends the list."""
    assert proc.stdout is not None
    deadline = threading.Timer(timeout, proc.kill)
    deadline.start()
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if words in line:
                break
    finally:
        deadline.cancel()
    return lines


class StallingRegistry:
    """A v2 registry on 127.0.0.1 that serves a manifest and a config, then stalls inside the layer's body."""

    LAYER = "sha256:" + "ab" * 32

    def __init__(self) -> None:
        self.release = threading.Event()
        config = json.dumps({"architecture": "amd64", "os": "linux", "config": {},
                             "rootfs": {"type": "layers", "diff_ids": ["sha256:" + "cd" * 32]}}).encode()
        config_digest = "sha256:" + hashlib.sha256(config).hexdigest()
        manifest = json.dumps({
            "schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
            "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "size": len(config),
                       "digest": config_digest},
            "layers": [{"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip", "size": 1 << 20,
                        "digest": self.LAYER}]}).encode()
        stall = self.release

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_HEAD(self) -> None:
                self.do_GET(body=False)

            def do_GET(self, body: bool = True) -> None:
                if self.path.endswith(StallingRegistry.LAYER):
                    self.send_response(200)
                    self.send_header("Content-Length", str(1 << 20))
                    self.end_headers()
                    self.wfile.write(b"\x1f\x8b" + b"\0" * 1000)  # a start, then silence
                    self.wfile.flush()
                    stall.wait(60)
                    return
                kind, data = ("application/json", b"{}")
                if "/manifests/" in self.path:
                    kind, data = "application/vnd.docker.distribution.manifest.v2+json", manifest
                elif self.path.endswith(config_digest):
                    kind, data = "application/octet-stream", config
                elif self.path != "/v2/":
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Docker-Content-Digest", "sha256:" + hashlib.sha256(data).hexdigest())
                self.end_headers()
                if body:
                    self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.address = f"127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


def pulls_cancelled(engine: Engine) -> int:
    """How many pulls the engine has given up because their request was closed (its log says so)."""
    return (engine.root / "dockerd.log").read_text(errors="replace").count(
        "Not continuing with pull after error: context canceled")


def test_a_pull_that_goes_silent_fails_after_the_stream_timeout(engine: Engine, tmp: Path) -> None:
    registry = StallingRegistry()
    try:
        with mounted(engine, tmp, "--stream-timeout", "2") as m:
            cancelled = pulls_cancelled(engine)
            start = time.monotonic()
            assert write(m / ".imagefs/pull", f"{registry.address}/stalls/here:1") == errno.ETIMEDOUT
            assert 2 <= time.monotonic() - start < 10
            assert "did not answer in time" in (m / ".imagefs/pull").read_text()
            assert f"pull {registry.address}/stalls/here:1 state=failed" in (m / ".imagefs/status").read_text()
            wait_for(lambda: pulls_cancelled(engine) > cancelled, timeout=10)  # the request closed: the pull too
    finally:
        registry.close()


def test_ctrl_c_cancels_a_pull(engine: Engine, tmp: Path) -> None:
    registry = StallingRegistry()
    try:
        with mounted(engine, tmp) as m:
            pull = m / ".imagefs/pull"
            cancelled = pulls_cancelled(engine)
            writer = subprocess.Popen(["sh", "-c", f"echo {registry.address}/stalls/here:2 > '{pull}'"],
                                      preexec_fn=interruptible)
            try:
                wait_for(lambda: "running:" in pull.read_text(), timeout=10)
                writer.send_signal(signal.SIGINT)
                assert writer.wait(5) == -signal.SIGINT
            finally:
                writer.kill()
            wait_for(lambda: pulls_cancelled(engine) > cancelled, timeout=10)
            assert "interrupted" in pull.read_text()
            assert f"pull {registry.address}/stalls/here:2 state=aborted" in (m / ".imagefs/status").read_text()
    finally:
        registry.close()


class SearchIndex:
    """A stand-in v1 search index on 127.0.0.1: `/v1/_ping`, `/v1/search?q=&n=`, as dockerd asks them."""

    RESULTS = ({"name": "acme/app", "description": "the app", "star_count": 42, "is_official": True,
                "is_automated": False},
               {"name": "acme/tool", "description": "a tool", "star_count": 3, "is_official": False,
                "is_automated": True})

    def __init__(self) -> None:
        self.searches: list[str] = []
        index = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                url = urlsplit(self.path)
                query = {k: v[0] for k, v in parse_qs(url.query).items()}
                if url.path == "/v1/_ping":
                    self.answer({})
                elif url.path == "/v1/search":
                    index.searches.append(query["q"])
                    found = [r for r in index.RESULTS if query["q"] in r["name"]][: int(query.get("n", 25))]
                    self.answer({"num_results": len(found), "query": query["q"], "results": found})
                else:
                    self.send_error(404)

            def answer(self, doc: Any) -> None:
                body = json.dumps(doc).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:  # the TLS attempt arrives as a bad request: quiet
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.address = f"127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def search_index() -> Iterator[SearchIndex]:
    index = SearchIndex()
    yield index
    index.close()


def engine_search(engine: Engine, query: str) -> bytes:
    status, body = engine.raw("GET", f"/images/search?{query}")
    assert status == 200, body
    return pretty(json.loads(body))


UNSUPPORTED = r"^lookup: NotSupported: GET /v1\.41/images/search\?term=127\.0\.0\.1%3A\d+%2Fx: 500 Unexpected status"


def test_search_is_the_engines_answer(engine: Engine, search_index: SearchIndex, registry: str, tmp: Path) -> None:
    host = search_index.address
    with mounted(engine, tmp, expect=[UNSUPPORTED]) as m:
        search = m / ".imagefs/search"
        assert os.listdir(search) == []  # listing never searches
        path = search / host / "acme"
        data = path.read_bytes()
        assert data == engine_search(engine, f"term={quote(host)}%2Facme")
        assert os.stat(path).st_size == len(data)
        assert [r["name"] for r in json.loads(data)] == ["acme/app", "acme/tool"]
        searched = len(search_index.searches)
        assert os.listdir(search) == [host] and os.listdir(search / host) == ["acme"]
        assert (search / host / "acme").read_bytes() == data  # kept briefly: not asked again
        assert len(search_index.searches) == searched
        # Options after a ",": the limit goes to the index; the engine filters the rest itself.
        limited = json.loads((search / host / "acme,limit=1").read_text())
        assert [r["name"] for r in limited] == ["acme/app"]
        assert [r["name"] for r in json.loads((search / host / "acme,stars=10").read_text())] == ["acme/app"]
        assert [r["name"] for r in json.loads((search / host / "acme,automated").read_text())] == ["acme/tool"]
        for bad in ("acme,limit=0", "acme,limit=101", "acme,bogus"):
            with pytest.raises(OSError) as caught:
                os.stat(search / host / bad)
            assert caught.value.errno == errno.EINVAL
        # distribution has no search: the engine's 500 "Unexpected status code 404" is ENOTSUP.
        result = shell(f"cat '{search / registry / 'x'}'")
        assert "Operation not supported" in result.stderr


BAD_CONTAINER = r"^write: NoSuchImage: POST /v1\.41/commit\?container=nope.*: 404 No such container: nope$"


def test_commit_and_build_prune(engine: Engine, tmp: Path) -> None:
    container = engine.docker("create", "--network", "none", "busybox:latest", "true").stdout.strip()
    commit = None
    try:
        with mounted(engine, tmp, "--debug", expect=[BAD_CONTAINER]) as m:
            commit = m / ".imagefs/commit"
            assert write(commit, f"{container} acme/snap:1 comment=hi there pause=false change=ENV X=1") == 0
            info = json.loads((m / "acme/snap:1/inspect").read_text())  # in the tree when the write returned
            assert info["Comment"] == "hi there" and "X=1" in info["Config"]["Env"]
            assert "committed container" in commit.read_text()
            result = shell(f"echo 'nope acme/snap:2' > '{commit}'")
            assert "No such file or directory" in result.stderr
            assert "No such container: nope" in commit.read_text()

            buildkit_build(engine)
            prune = m / ".imagefs/build-prune"
            assert write(prune, "keep-storage=lots") == errno.EINVAL  # refused before any request
            assert not [line for line in engine_requests(m) if "/build/prune" in line]
            assert write(prune, "keep-storage=2GB until=1h") == 0
            assert "keep-storage=2147483648" in m.log_text()
            assert write(prune, "all\n") == 0
            outcome = prune.read_text()
            assert "cache records deleted" in outcome and "reclaimed" in outcome
            assert "0 cache records deleted" not in outcome, outcome
    finally:
        engine.docker("rm", container)
        if "acme/snap:1" in engine.tags():
            engine.docker("rmi", "acme/snap:1")


def buildkit_build(engine: Engine) -> None:
    """A BuildKit build (the raw API's version=2), so that the build cache holds something to prune."""
    body = io.BytesIO()
    with tarfile.open(fileobj=body, mode="w") as tar:
        for name, data in (("Dockerfile", b"FROM scratch\nCOPY a /a\n"), ("a", os.urandom(4096))):
            member = tarfile.TarInfo(name)
            member.size = len(data)
            tar.addfile(member, io.BytesIO(data))
    conn = _UnixConnection(engine.sock, 60)
    conn.request("POST", "/v1.41/build?version=2&t=bk%2Fprune%3A1", body=body.getvalue(),
                 headers={"Content-Type": "application/x-tar"})
    answer = conn.getresponse().read()
    conn.close()
    assert b"errorDetail" not in answer, answer
    engine.docker("rmi", "bk/prune:1")


def test_read_only_and_dry_run(engine: Engine, tmp: Path, registry: str) -> None:
    (tmp / "ro").mkdir()
    (tmp / "dry").mkdir()
    with mounted(engine, tmp / "ro", "--read-only") as m:
        for path in (*(m / ".imagefs" / name for name in ("pull", "commit", "build-prune")),
                     m / "localhost:5000/team/app:2/push"):
            assert "Read-only file system" in shell(f"echo x:1 > '{path}'").stderr
    dry = r"^dry-run: would send POST /v1\.41/(images/create|images/localhost:5000/team/app/push|commit|build/prune)"
    with mounted(engine, tmp / "dry", "--dry-run", expect=[dry]) as m:
        before = (engine.tags(), engine.image_ids())
        assert write(m / ".imagefs/pull", f"{registry}/not/there") == 0
        assert write(m / "localhost:5000/team/app:2/push", "\n") == 0
        assert write(m / ".imagefs/commit", "nope acme/dry:1") == 0
        assert write(m / ".imagefs/build-prune", "all") == 0
        assert (engine.tags(), engine.image_ids()) == before
        assert (m / ".imagefs/pull").read_text().endswith(f"last: dry-run: would pull {registry}/not/there:latest; "
                                                           "nothing sent\n")
        log = m.log_text()
        assert (f"dry-run: would send POST /v1.41/images/create?fromImage={quote(registry, safe='')}%2Fnot%2Fthere"
                "&tag=latest (headers X-Registry-Auth: <redacted>)") in log
        assert "dry-run: would send POST /v1.41/images/localhost:5000/team/app/push?tag=2" in log
        assert "state=dry-run" in (m / ".imagefs/status").read_text()
