#!/usr/bin/env python3
"""The imagefs benchmark: ratios against the engine and the local disk, measured in one run.

    .venv/bin/python scripts/bench.py [--engine-dir D | --use-host] [--big-mb 512] [--skip-export] [--runs N]

It starts a private Docker engine (scripts/private_engine.py, sample images
built offline) or, with --use-host, talks to $DOCKER_HOST; mounts imagefs with
the project's own CLI (`imagefs mount --cache-dir …`); measures; and always
unmounts, stops the engine it started and removes its temporary directories.

Every number is a median of repeated runs, with the compared commands
interleaved so that drift hits both alike. It prints a table — what, imagefs
time, baseline time, ratio, goal, PASS/MISS — and never asserts a timing: the
exit status is non-zero only when a measurement could not be taken.

  1. `cat MOUNT/myorg/app:1.0/inspect` (warm) against `cat` of a local copy of
     the same bytes, `docker image inspect` and a raw API call with curl. The
     exec cost every command pays (`cat` of the local copy) is taken off both
     sides before the engine comparisons.
  2. `ls -l` of the mount with 1,000 references (one image tagged bench/t:0..999),
     warm, cold after a fresh mount and after an untag+tag, against `docker image ls`.
  3. Unless --skip-export: an image of --big-mb MB (random bytes, FROM scratch).
     The first export through a fresh mount against a raw ImageGet; the cached
     re-read against `cat` of the spool file; 16 concurrent readers of a cold
     image (engine exports counted from /events) against one reader; and the
     daemon's peak RSS (VmHWM).
  4. Unless --skip-export or --skip-ssh: the same image's first export through a mount of
     `-H ssh://root@127.0.0.1:PORT` (a private sshd, scripts/private_sshd.py, whose key runs
     `docker system dial-stdio` against the engine) against `docker -H ssh://… save` of it.
  5. Unless --skip-uploads: loads of that image's save through `.imagefs/load/`
     against curl streaming the file (`-T`) to /images/load and `docker load -i` (the image
     removed before each), the daemon's peak RSS over them; a build of a
     --big-mb context through `.imagefs/build/` against `docker build` (no cache).
     With --podman also: the same save loaded into a private podman (scripts/private_engine.py
     --flavor podman) through a mount of it, where uploads are spooled locally and sent whole at
     close(2), against curl -T to podman's socket, and that daemon's peak RSS.
  5. Unless --skip-pull: an image of --pull-mb MB pushed to a local docker-registry,
     pulled through `MOUNT/.imagefs/pull` against `docker pull`, the image removed
     before each pull.
  6. Unless --skip-rootfs: rootfs/ against ImageGet, `docker export`, the local disk (bench_rootfs.py).

Only the standard library is used; the engine is reached with http.client,
curl, and the docker CLI.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import http.client
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlencode, urlsplit

import private_sshd  # scripts/, beside this file

HERE = Path(__file__).resolve().parent
PRIVATE_ENGINE = HERE / "private_engine.py"
API = "/v1.41"
DOCKER = "/usr/bin/docker" if os.path.exists("/usr/bin/docker") else (shutil.which("docker") or "docker")
CURL = shutil.which("curl") or "curl"

SAMPLE_REF = "myorg/app:1.0"
SAMPLE_DOCKERFILE = 'FROM scratch\nCOPY hello.txt /hello.txt\nLABEL org.example.role="app"\nCMD ["/hello.txt"]\n'
TAG_REPO = "bench/t"
TAG_COUNT = 1000
BIG_REF = "big/img:1"
READERS = 16
MIB = 2**20
NOISY = 0.25  # a median whose samples' interquartile range exceeds this fraction of it is flagged


def log(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


# --- the engine, over its API -------------------------------------------------------------------


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("docker", timeout=timeout)
        self.unix_path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.unix_path)


class EngineAPI:
    """Just enough of the Engine API for the benchmark: one short-lived connection per call."""

    def __init__(self, host: str) -> None:
        parts = urlsplit(host)
        self.host = host
        if parts.scheme == "unix":
            self.sock: str | None = parts.path
            self.base_url = "http://d"
        elif parts.scheme in ("tcp", "http"):
            self.sock, self.base_url = None, f"http://{parts.netloc}"
        else:
            raise SystemExit(f"bench: engine address {host!r}: only unix:// and plain tcp:// are supported")
        self.netloc = parts.netloc

    def connection(self, timeout: float = 30.0) -> http.client.HTTPConnection:
        if self.sock is not None:
            return _UnixHTTPConnection(self.sock, timeout)
        return http.client.HTTPConnection(self.netloc, timeout=timeout)

    def call(self, method: str, path: str, params: dict[str, str] | None = None, timeout: float = 30.0) -> bytes:
        url = API + path + (f"?{urlencode(params)}" if params else "")
        conn = self.connection(timeout)
        try:
            conn.request(method, url)
            resp = conn.getresponse()
            body = resp.read()
        finally:
            conn.close()
        if resp.status >= 300:
            raise RuntimeError(f"{method} {url}: {resp.status} {body.decode(errors='replace').strip()}")
        return body

    def ping(self) -> bool:
        try:
            conn = self.connection(2.0)
            conn.request("GET", "/_ping")
            ok = conn.getresponse().status == 200
            conn.close()
            return ok
        except OSError:
            return False

    def exists(self, ref: str) -> bool:
        try:
            self.call("GET", f"/images/{quote(ref, safe='/:@')}/json")
        except RuntimeError:
            return False
        return True

    def tag(self, source: str, repo: str, tag: str, conn: http.client.HTTPConnection | None = None) -> None:
        url = f"{API}/images/{quote(source, safe='/:@')}/tag?{urlencode({'repo': repo, 'tag': tag})}"
        own = conn is None
        conn = conn or self.connection()
        try:
            conn.request("POST", url)
            resp = conn.getresponse()
            body = resp.read()
        finally:
            if own:
                conn.close()
        if resp.status >= 300:
            raise RuntimeError(f"tag {source} {repo}:{tag}: {resp.status} {body.decode(errors='replace').strip()}")

    def untag(self, ref: str, noprune: bool = True) -> None:
        """Remove a reference; the image goes too when it was its last (and `noprune` is off)."""
        self.call("DELETE", f"/images/{quote(ref, safe='/:@')}", {"noprune": "1"} if noprune else None)

    def saves_between(self, since: float, until: float) -> int:
        """How many `save` (ImageGet) events the engine logged in [since, until]."""
        params = {"since": f"{since:.9f}", "until": f"{until:.9f}",
                  "filters": json.dumps({"type": ["image"], "event": ["save"]})}
        body = self.call("GET", "/events", params, timeout=30.0)
        return sum(1 for line in body.splitlines() if line.strip() and json.loads(line).get("Action") == "save")

    def curl(self, path: str) -> list[str]:
        """curl's arguments for a raw GET of an API path."""
        sock = ["--unix-socket", self.sock] if self.sock else []
        return [CURL, "-sS", "--fail", *sock, self.base_url + API + path]


# --- running and timing commands ----------------------------------------------------------------


def run(argv: list[str], env: dict[str, str] | None = None, timeout: float = 600) -> str:
    """Run a command, its output to a pipe; raise with its stderr when it fails."""
    result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: exit {result.returncode}: {result.stderr.strip()[-2000:]}")
    return result.stdout


def timed(argv: list[str], env: dict[str, str] | None = None) -> float:
    """Wall time of one command whose output goes to /dev/null (as `cmd > /dev/null` would).

    No timeout: with one, Popen.wait polls with sleeps of 0.5 ms and more, which a 1 ms command would feel.
    """
    start = time.perf_counter()
    result = subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: exit {result.returncode}: {result.stderr.decode(errors='replace')}")
    return elapsed


@dataclass
class Timing:
    """Repeated wall times of one thing: its median, and how noisy that median is."""

    values: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    @property
    def spread(self) -> float:
        """Interquartile range over the median (0 when there are too few values to tell)."""
        if len(self.values) < 2 or self.median <= 0:
            return 0.0
        q1, _, q3 = statistics.quantiles(self.values, n=4)
        return (q3 - q1) / self.median


def sample(commands: dict[str, list[str]], runs: int, env: dict[str, str] | None = None,
           warmup: int = 1) -> dict[str, Timing]:
    """Wall times of each command, the commands interleaved run by run (rotating who goes first)."""
    names = list(commands)
    for _ in range(warmup):
        for name in names:
            timed(commands[name], env)
    times: dict[str, list[float]] = {name: [] for name in names}
    for i in range(runs):
        for name in names[i % len(names):] + names[: i % len(names)]:
            times[name].append(timed(commands[name], env))
    return {name: Timing(values) for name, values in times.items()}


def sample_calls(calls: dict[str, Callable[[], object]], runs: int) -> dict[str, Timing]:
    """The same for in-process calls."""
    for call in calls.values():
        call()
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(runs):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - start)
    return {name: Timing(values) for name, values in times.items()}


def wait_for(what: str, check: Callable[[], bool], timeout: float = 60.0, interval: float = 0.05) -> float:
    """Poll until `check()` holds; return how long it took."""
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)
    return time.monotonic() - start


# --- the table ------------------------------------------------------------------------------------


def fmt_time(seconds: float) -> str:
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f} µs"
    if seconds < 1:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds:.2f} s"


def fmt_rate(seconds: float, size: int) -> str:
    return f"{fmt_time(seconds)} ({size / MIB / seconds:.0f} MiB/s)"


@dataclass
class Row:
    what: str
    imagefs: str
    baseline: str
    ratio: str = "—"
    goal: str = "—"
    ok: bool | None = None  # None: information, no goal
    timings: tuple[Timing, ...] = ()  # what the figures came from, to flag noisy ones

    @property
    def noisy(self) -> bool:
        return any(t.spread > NOISY for t in self.timings)

    @property
    def verdict(self) -> str:
        verdict = "info" if self.ok is None else "PASS" if self.ok else "MISS"
        return verdict + ("~" if self.noisy else "")


class Report:
    HEADERS = ("what", "imagefs", "baseline", "ratio", "goal", "result")

    def __init__(self) -> None:
        self.rows: list[Row] = []
        self.errors: list[str] = []

    def add(self, row: Row) -> None:
        self.rows.append(row)
        log(f"{row.what}: {row.imagefs} vs {row.baseline} -> {row.ratio} [{row.verdict}]")

    def section(self, title: str) -> None:
        self.rows.append(Row(f"## {title}", "", ""))

    def print(self) -> None:
        cells = [self.HEADERS] + [
            (r.what, r.imagefs, r.baseline, r.ratio, r.goal, r.verdict) for r in self.rows if not r.what.startswith("#")
        ]
        widths = [max(len(c[i]) for c in cells) for i in range(len(self.HEADERS))]

        def line(values: tuple[str, ...]) -> str:
            return "  ".join(v.ljust(w) for v, w in zip(values, widths, strict=True)).rstrip()

        print(line(self.HEADERS))
        print(line(tuple("-" * w for w in widths)))
        for r in self.rows:
            if r.what.startswith("## "):
                print(f"[{r.what[3:]}]")
            else:
                print(line((r.what, r.imagefs, r.baseline, r.ratio, r.goal, r.verdict)))
        misses = sum(1 for r in self.rows if r.ok is False)
        passes = sum(1 for r in self.rows if r.ok)
        errors = f", {len(self.errors)} ERROR" if self.errors else ""
        print(f"\n{passes} PASS, {misses} MISS against the goals{errors}")
        if any(r.noisy for r in self.rows):
            print(f"~ the samples behind this row spread by more than {NOISY:.0%} of their median (IQR/median): "
                  "the machine was busy or the figure is bimodal; take it with care or rerun")
        for error in self.errors:
            print(f"ERROR: {error}")


# --- the environment: engine, mount, scratch space ----------------------------------------------


def daemon_pid(mountpoint: Path) -> int | None:
    """The imagefs daemon serving `mountpoint`, found by its command line in /proc."""
    target = str(mountpoint)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            args = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if "--foreground" in args and target in args and any(a == "imagefs" or a.endswith("/imagefs") for a in args):
            return int(entry.name)
    return None


def proc_status_kib(pid: int, field: str) -> int:
    for text in Path(f"/proc/{pid}/status").read_text().splitlines():
        if text.startswith(field + ":"):
            return int(text.split()[1])
    raise KeyError(field)


class Bench:
    """Owns the engine, the mount and the scratch directory; `close()` undoes all of it."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.work = Path(tempfile.mkdtemp(prefix="imagefs-bench-", dir="/tmp"))
        self.mnt = self.work / "mnt"
        self.mnt.mkdir()
        self.config = self.work / "empty.toml"  # isolates the mount from ~/.config/imagefs/config.toml
        self.config.write_text("")
        self.engine_dir: Path | None = None
        self.started_engine = False
        self.created_refs: list[str] = []  # removed again when the engine is not ours to stop
        self.pid: int | None = None
        self.cache_dir: Path | None = None
        self.mounts = 0
        exe = Path(sys.executable).with_name("imagefs")
        self.imagefs = [str(exe)] if exe.exists() else [sys.executable, "-m", "imagefs"]
        self.api: EngineAPI
        self.env: dict[str, str]

    # engine

    def start_engine(self) -> None:
        if self.args.use_host:
            host = os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
        else:
            self.engine_dir = Path(self.args.engine_dir or self.work / "engine").absolute()
            host = f"unix://{self.engine_dir / 'docker.sock'}"
            if EngineAPI(host).ping():
                log(f"using the engine already running in {self.engine_dir} (it is left running)")
            else:
                log(f"starting a private engine in {self.engine_dir}")
                self.started_engine = True
                out = run([sys.executable, str(PRIVATE_ENGINE), "start", str(self.engine_dir), "--samples"])
                host = out.strip().splitlines()[-1]
        self.api = EngineAPI(host)
        if not self.api.ping():
            raise RuntimeError(f"no engine answers at {host}")
        self.env = dict(os.environ, DOCKER_HOST=host, DOCKER_BUILDKIT="0", LC_ALL="C")
        self.env.pop("DOCKER_CONTEXT", None)
        if not self.api.exists(SAMPLE_REF):
            self.build(SAMPLE_REF, SAMPLE_DOCKERFILE, {"hello.txt": b"hello from imagefs\n"})

    def build(self, ref: str, dockerfile: str, files: dict[str, bytes | Callable[[Path], None]]) -> None:
        """An offline build (the classic builder) of `dockerfile` with `files` in its context."""
        ctx = self.work / "ctx"
        ctx.mkdir(exist_ok=True)
        try:
            (ctx / "Dockerfile").write_text(dockerfile)
            for name, content in files.items():
                if callable(content):
                    content(ctx / name)
                else:
                    (ctx / name).write_bytes(content)
            run([DOCKER, "build", "-q", "-t", ref, str(ctx)], env=self.env, timeout=1800)
            self.created_refs.append(ref)
        finally:
            shutil.rmtree(ctx, ignore_errors=True)

    def stop_engine(self) -> None:
        if self.started_engine and self.engine_dir is not None:
            log(f"stopping the private engine in {self.engine_dir}")
            subprocess.run([sys.executable, str(PRIVATE_ENGINE), "stop", str(self.engine_dir)], check=False)
            self.started_engine = False
        elif self.created_refs and hasattr(self, "api"):
            log(f"removing the {len(self.created_refs)} references the benchmark created")
            for ref in reversed(self.created_refs):
                with contextlib.suppress(RuntimeError, OSError):
                    self.api.untag(ref, noprune=False)
        self.created_refs.clear()

    # mount

    def mount(self, fresh_cache: bool = True, extra: tuple[str, ...] = (), env: dict[str, str] | None = None) -> float:
        """Mount with the project's CLI (which returns once the mount is ready); a fresh cache dir by default."""
        if fresh_cache or self.cache_dir is None:
            self.mounts += 1
            self.cache_dir = self.work / f"cache-{self.mounts}"
        cmd = [*self.imagefs, "mount", "--config", str(self.config), "--cache-dir", str(self.cache_dir),
               *extra, str(self.mnt)]
        start = time.perf_counter()
        result = subprocess.run(cmd, env=env or self.env, capture_output=True, text=True, timeout=120)
        elapsed = time.perf_counter() - start
        if result.returncode != 0:
            logfile = self.cache_dir / "imagefs.log"
            tail = logfile.read_text()[-2000:] if logfile.exists() else ""
            raise RuntimeError(f"imagefs mount failed: {result.stderr.strip()}\n{tail}")
        self.pid = daemon_pid(self.mnt)
        if self.pid is None:
            raise RuntimeError(f"mounted, but no imagefs daemon process for {self.mnt} was found in /proc")
        return elapsed

    def umount(self, drop_cache: bool = True) -> None:
        if os.path.ismount(self.mnt):
            try:
                run([*self.imagefs, "umount", str(self.mnt)], timeout=60)
            except (RuntimeError, subprocess.TimeoutExpired) as exc:
                log(f"unmount failed ({exc}); unmounting lazily")
                subprocess.run([*self.imagefs, "umount", "--lazy", str(self.mnt)], check=False, timeout=60)
        if self.pid is not None:
            self._reap(self.pid)
            self.pid = None
        if drop_cache and self.cache_dir is not None:
            shutil.rmtree(self.cache_dir, ignore_errors=True)
            self.cache_dir = None

    @staticmethod
    def _reap(pid: int) -> None:
        """Make sure the daemon we started is gone: it gets 15 s to clean up, then SIGTERM, then SIGKILL."""
        for sig in (None, signal.SIGTERM, signal.SIGKILL):
            if sig is not None:
                log(f"imagefs daemon {pid} still alive; sending {sig.name}")
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            try:
                wait_for(f"daemon {pid} to exit", lambda: not Path(f"/proc/{pid}").exists(), timeout=15)
                return
            except TimeoutError:
                continue

    def remount(self) -> float:
        self.umount()
        return self.mount()

    def peak_rss_kib(self) -> int:
        assert self.pid is not None
        return proc_status_kib(self.pid, "VmHWM")

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.umount()
        if os.path.ismount(self.mnt):
            subprocess.run(["fusermount3", "-u", "-z", str(self.mnt)], check=False)
        try:
            self.stop_engine()
        finally:
            if os.path.ismount(self.mnt):
                log(f"{self.mnt} is still mounted; leaving {self.work} in place")
            else:
                shutil.rmtree(self.work, ignore_errors=True)

    def path(self, ref: str, *rest: str) -> Path:
        return self.mnt.joinpath(*ref.split("/"), *rest)


# --- 1. inspect -------------------------------------------------------------------------------


def bench_inspect(bench: Bench, report: Report) -> None:
    report.section("1. warm inspect (each a fresh process)")
    runs = bench.args.runs
    inspect = bench.path(SAMPLE_REF, "inspect")
    local = bench.work / "inspect.local"
    local.write_bytes(inspect.read_bytes())  # also the warm-up of the catalog and the document cache
    ref_path = f"/images/{quote(SAMPLE_REF, safe='/:@')}/json"
    log(f"timing cat of {inspect} ({runs} runs each)")
    t = sample({"imagefs": ["cat", str(inspect)], "local": ["cat", str(local)], "true": ["/bin/true"]},
               runs, bench.env)
    t |= sample({"docker": [DOCKER, "image", "inspect", SAMPLE_REF], "curl": bench.api.curl(ref_path),
                 "floor": ["cat", str(local)]}, max(10, runs // 4), bench.env)
    m = {name: timing.median for name, timing in t.items()}
    report.add(Row("exec floor: /bin/true | cat of a local copy", fmt_time(m["true"]), fmt_time(m["local"]),
                   timings=(t["true"], t["local"])))
    ratio = m["imagefs"] / m["local"]
    report.add(Row(f"cat inspect vs cat local copy ({local.stat().st_size} B)", fmt_time(m["imagefs"]),
                   fmt_time(m["local"]), f"{ratio:.2f}× time", "≤ 1.2× time", ratio <= 1.2,
                   (t["imagefs"], t["local"])))

    def net(name: str, baseline: str, goal: float | None) -> None:
        # The slow commands ran in their own interleaved batch: take the floor from that batch too.
        mine, theirs = m["imagefs"] - m["local"], m[name] - m["floor"]
        speedup = theirs / mine if mine > 0 else float("inf")
        report.add(Row(f"cat inspect vs {baseline}, net of exec floor", f"{fmt_time(max(mine, 0))} net",
                       f"{fmt_time(theirs)} net", f"{speedup:.1f}× faster" if mine > 0 else "∞ (net ≤ 0)",
                       f"≥ {goal:g}× faster" if goal else "—", None if goal is None else speedup >= goal,
                       (t["imagefs"], t["local"], t[name], t["floor"])))

    net("docker", "docker image inspect", 10)
    net("curl", "curl raw API", None)
    report.add(Row("  (gross, no floor taken off) vs docker | curl", fmt_time(m["imagefs"]),
                   f"{fmt_time(m['docker'])} | {fmt_time(m['curl'])}",
                   f"{m['docker'] / m['imagefs']:.1f}× | {m['curl'] / m['imagefs']:.1f}× faster",
                   timings=(t["imagefs"], t["docker"], t["curl"])))

    def read_mount() -> bytes:
        with open(inspect, "rb") as f:
            return f.read()

    def get_api() -> bytes:
        return bench.api.call("GET", ref_path)

    c = sample_calls({"imagefs": read_mount, "api": get_api}, runs * 5)
    report.add(Row("in-process: open+read inspect vs HTTP GET (new conn)", fmt_time(c["imagefs"].median),
                   fmt_time(c["api"].median), f"{c['api'].median / c['imagefs'].median:.1f}× faster",
                   timings=(c["imagefs"], c["api"])))


# --- 2. listings ----------------------------------------------------------------------------


def tag_many(bench: Bench) -> None:
    log(f"tagging {SAMPLE_REF} {TAG_COUNT} times as {TAG_REPO}:0..{TAG_COUNT - 1}")
    conn = bench.api.connection()
    try:
        for i in range(TAG_COUNT):
            bench.api.tag(SAMPLE_REF, TAG_REPO, str(i), conn)
            bench.created_refs.append(f"{TAG_REPO}:{i}")
    finally:
        conn.close()


def count_entries(path: Path) -> int:
    try:
        return len(os.listdir(path))
    except FileNotFoundError:
        return 0


def bench_listing(bench: Bench, report: Report) -> None:
    report.section(f"2. ls -l with {TAG_COUNT} references")
    runs = max(10, bench.args.runs // 4)
    ns = bench.mnt / TAG_REPO.split("/")[0]
    start = time.monotonic()
    tag_many(bench)
    tagged = time.monotonic() - start
    seen = wait_for(f"{TAG_COUNT} entries in {ns}", lambda: count_entries(ns) == TAG_COUNT, timeout=60, interval=0.1)
    report.add(Row(f"{TAG_COUNT} API tags, then all listed in the mount", f"+{fmt_time(seen)} after",
                   f"{fmt_time(tagged)} to tag"))

    ls = {"root": ["ls", "-l", str(bench.mnt)], "ns": ["ls", "-l", str(ns)]}
    labels = {"root": "ls -l MOUNT/ (top level)", "ns": f"ls -l MOUNT/bench/ ({TAG_COUNT} dirs)"}
    log(f"timing ls -l warm ({runs} runs each)")
    t = sample({**ls, "docker": [DOCKER, "image", "ls"]}, runs, bench.env)
    docker = t["docker"]
    for key in ls:
        report.add(Row(f"{labels[key]}, warm vs docker image ls", fmt_time(t[key].median), fmt_time(docker.median),
                       f"{t[key].median / docker.median:.2f}× time", "≤ 50 ms", t[key].median <= 0.050,
                       (t[key],)))

    cold = max(1, bench.args.cold_runs)
    log(f"timing ls -l cold: {2 * cold} fresh mounts")
    mounts = Timing([])
    first: dict[str, Timing] = {"root": Timing([]), "ns": Timing([])}
    second: dict[str, Timing] = {"root": Timing([]), "ns": Timing([])}
    for i in range(2 * cold):
        mounts.values.append(bench.remount())
        a, b = ("root", "ns") if i % 2 == 0 else ("ns", "root")
        first[a].values.append(timed(ls[a], bench.env))
        second[b].values.append(timed(ls[b], bench.env))
    report.add(Row("imagefs mount (CLI returns when ready)", fmt_time(mounts.median), "—", timings=(mounts,)))
    for key in ls:
        for when, timing in (("first after a fresh mount", first[key]), ("second after a fresh mount", second[key])):
            report.add(Row(f"{labels[key]}, {when}", fmt_time(timing.median), fmt_time(docker.median),
                           f"{timing.median / docker.median:.2f}× time", timings=(timing,)))

    log("timing ls -l after untag+tag of one reference")
    for argv in ls.values():
        timed(argv, bench.env)  # warm again after the last mount
    after: dict[str, Timing] = {"root": Timing([]), "ns": Timing([])}
    victim = f"{TAG_REPO}:0"
    for i in range(2 * cold):
        bench.api.untag(victim)
        bench.api.tag(SAMPLE_REF, *victim.split(":"))
        time.sleep(1.5)  # the SPEC's coherence bound is 1 s: imagefs has seen both events and invalidated
        key = "root" if i % 2 == 0 else "ns"
        after[key].values.append(timed(ls[key], bench.env))
    for key in ls:
        timing = after[key]
        report.add(Row(f"{labels[key]}, first after an untag+tag", fmt_time(timing.median), fmt_time(docker.median),
                       f"{timing.median / docker.median:.2f}× time", timings=(timing,)))


# --- 3. export.tar ----------------------------------------------------------------------------


def write_random(path: Path, mib: int) -> None:
    chunk = 4 * MIB
    with open(path, "wb") as f:
        for _ in range(mib * MIB // chunk):
            f.write(os.urandom(chunk))
        f.write(os.urandom(mib * MIB % chunk))


def find_spool(cache_dir: Path, size: int) -> Path:
    candidates = [p for p in cache_dir.glob("spool/*.tar") if p.is_file() and p.stat().st_size == size]
    if len(candidates) != 1:
        found = sorted((p.name, p.stat().st_size) for p in cache_dir.glob("spool/*.tar"))
        raise RuntimeError(f"expected one spool file of {size} bytes under {cache_dir}/spool/, found {found}")
    return candidates[0]


def logged_export_seconds(log_file: Path) -> float | None:
    """How long the daemon's log says its export took ("export …: started" to "…: complete"), if it says."""
    stamps: dict[str, datetime.datetime] = {}
    with contextlib.suppress(OSError):
        for line in log_file.read_text(errors="replace").splitlines():
            kind = "started" if line.endswith(": started") else "complete" if ": complete," in line else None
            if kind and " export " in line:
                with contextlib.suppress(ValueError):
                    stamps[kind] = datetime.datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")
    if len(stamps) < 2:
        return None
    return (stamps["complete"] - stamps["started"]).total_seconds()


@contextlib.contextmanager
def engine_saves(bench: Bench) -> Iterator[list[int]]:
    """Count the engine's `save` events while the block runs (appended to the yielded list afterwards)."""
    result: list[int] = []
    since = time.time() - 0.01
    yield result
    until = time.time() + 0.01
    time.sleep(0.2)  # let the events be logged and `until` pass
    result.append(bench.api.saves_between(since, until))


def concurrent_cats(path: Path, readers: int) -> float:
    """Wall time of `readers` simultaneous `cat path > /dev/null`; each must succeed."""
    start = time.perf_counter()
    procs = [subprocess.Popen(["cat", str(path)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
             for _ in range(readers)]
    try:
        outcomes = [(p.wait(timeout=900), p.stderr.read() if p.stderr else b"") for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
            if p.stderr:
                p.stderr.close()
    elapsed = time.perf_counter() - start
    failed = {f"exit {code}: {err.decode(errors='replace').strip()}" for code, err in outcomes if code}
    if failed:
        raise RuntimeError(f"{len(failed)} of {readers} concurrent readers failed: {sorted(failed)}")
    return elapsed


def page_cache_writes(directory: Path, mib: int, quiet: float = 5.0) -> tuple[float, float]:
    """Seconds to write `mib` MiB into a new file's page cache: into memory left free for `quiet`
    seconds, then into the memory that file's deletion has just freed.

    Where the hypervisor takes back guest memory that stays free (virtio-balloon free page
    reporting, as on the test VM), the first touch of such memory is slow; a mount that
    spools an export touches memory that `curl -o /dev/null` never does.
    """
    block = bytes(MIB)
    path = directory / f"bench-touch-{os.getpid()}"

    def write() -> float:
        start = time.perf_counter()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            for _ in range(mib):
                os.write(fd, block)
        finally:
            os.close(fd)
        elapsed = time.perf_counter() - start
        path.unlink()  # dirty pages of a deleted file are freed without being written back
        return elapsed

    time.sleep(quiet)
    return write(), write()


def settle(bench: Bench, get: list[str]) -> None:
    """Every timed export starts alike: right after another ImageGet (`get`), with nothing left to write back.

    Measured here: the engine's first save after an export through the mount (whose spool is then
    still on disk) took 1 s longer than the next one, whichever client asked; and dockerd writes
    the whole save to a temporary directory first, which a flush of the last spool would slow.
    """
    run([*get, "-o", "/dev/null"], env=bench.env)
    os.sync()


def bench_export(bench: Bench, report: Report) -> None:
    mib = bench.args.big_mb
    report.section(f"3. export.tar of a {mib} MiB image")
    if bench.api.exists(BIG_REF):
        log(f"{BIG_REF} exists already; reusing it")
    else:
        log(f"building {BIG_REF} ({mib} MiB of random bytes, offline)")
        start = time.monotonic()
        bench.build(BIG_REF, "FROM scratch\nCOPY big.bin /big.bin\n", {"big.bin": lambda p: write_random(p, mib)})
        log(f"built in {time.monotonic() - start:.1f} s")
    export = bench.path(BIG_REF, "export.tar")
    get = bench.api.curl(f"/images/{quote(BIG_REF, safe='/:@')}/get")
    rounds = max(1, bench.args.export_rounds)
    raw, first, ingest, read_pass, reread1, steady, spool, many = (Timing([]) for _ in range(8))
    first_saves: list[int] = []
    many_saves: list[int] = []
    idle_hwm: list[int] = []
    peak_hwm: list[int] = []
    size = 0

    for r in range(rounds):
        step = f"export round {r + 1}/{rounds}"
        log(f"{step}: raw ImageGet")
        bench.umount()
        settle(bench, get)
        start = time.perf_counter()
        size = int(run([*get, "-o", "/dev/null", "-w", "%{size_download}"], env=bench.env))
        raw.values.append(time.perf_counter() - start)

        log(f"{step}: first export through a fresh mount")
        bench.mount()
        idle_hwm.append(bench.peak_rss_kib())
        settle(bench, get)
        with engine_saves(bench) as saves:
            first.values.append(timed(["cat", str(export)]))
        first_saves.extend(saves)
        log(f"{step}: raw ImageGet {raw.values[-1]:.2f} s, first export through the mount {first.values[-1]:.2f} s")
        if export.stat().st_size != size:
            raise RuntimeError(f"export.tar is {export.stat().st_size} bytes, ImageGet sent {size}")
        assert bench.cache_dir is not None
        logged = logged_export_seconds(bench.cache_dir / "imagefs.log")
        if logged is not None:
            ingest.values.append(logged)
            read_pass.values.append(first.values[-1] - logged)
        spool_file = find_spool(bench.cache_dir, size)
        log(f"{step}: cached re-reads")
        reread1.values.append(timed(["cat", str(export)]))  # the first cacheable open: the daemon serves the spool
        t = sample({"mount": ["cat", str(export)], "spool": ["cat", str(spool_file)]}, 3, warmup=0)
        steady.values.append(t["mount"].median)
        spool.values.append(t["spool"].median)
        peak_hwm.append(bench.peak_rss_kib())

        log(f"{step}: {READERS} concurrent readers of a cold export (fresh mount)")
        bench.remount()
        settle(bench, get)
        with engine_saves(bench) as saves:
            many.values.append(concurrent_cats(export, READERS))
        many_saves.extend(saves)
        peak_hwm.append(bench.peak_rss_kib())
    bench.umount()
    log(f"page-cache writes of {mib} MiB: into memory free for a while, then into memory just freed")
    fresh, reused = page_cache_writes(bench.work, mib)

    report.add(Row(f"first export, fresh mount vs raw ImageGet (n={rounds})", fmt_rate(first.median, size),
                   fmt_rate(raw.median, size), f"{raw.median / first.median:.2f}× throughput", "≥ 0.9×",
                   raw.median / first.median >= 0.9, (first, raw)))
    if ingest.values:
        report.add(Row("  of which the daemon's export to its spool (its log)", fmt_rate(ingest.median, size),
                       fmt_rate(raw.median, size), f"{raw.median / ingest.median:.2f}× throughput",
                       timings=(ingest, raw)))
    if read_pass.values:
        # `stat` waits for the exact size, so the reader's pass through FUSE follows the export:
        # even a spool that cost nothing could not beat this ratio.
        report.add(Row("  of which the read pass after it (first minus daemon)", fmt_rate(read_pass.median, size),
                       fmt_time(raw.median), f"≤ {raw.median / (raw.median + read_pass.median):.2f}× ceiling",
                       timings=(read_pass,)))
    report.add(Row(f"  this machine: page-cache write of {mib} MiB, idle vs just-freed memory",
                   fmt_rate(fresh, mib * MIB), fmt_rate(reused, mib * MIB), f"{fresh / reused:.1f}× time"))
    report.add(Row("  engine exports per first export (save events)", " ".join(map(str, first_saves)), "1",
                   goal="= 1", ok=all(n == 1 for n in first_saves)))
    report.add(Row("cached re-read, 1st (daemon serves spool) vs cat spool", fmt_rate(reread1.median, size),
                   fmt_rate(spool.median, size), f"{spool.median / reread1.median:.2f}× throughput", "≥ 0.5×",
                   spool.median / reread1.median >= 0.5, (reread1, spool)))
    report.add(Row("cached re-read, steady (page cache) vs cat spool", fmt_rate(steady.median, size),
                   fmt_rate(spool.median, size), f"{spool.median / steady.median:.2f}× throughput", "≥ 0.5×",
                   spool.median / steady.median >= 0.5, (steady, spool)))
    report.add(Row(f"{READERS} concurrent cold readers: engine exports", " ".join(map(str, many_saves)), "1",
                   goal="exactly 1", ok=all(n == 1 for n in many_saves)))
    report.add(Row(f"{READERS} concurrent cold readers vs 1 cold reader", fmt_time(many.median),
                   fmt_time(first.median), f"{many.median / first.median:.2f}× time", "≤ 1.5× time",
                   many.median / first.median <= 1.5, (many, first)))
    peak = max(peak_hwm) / 1024
    report.add(Row("daemon peak RSS (VmHWM) exporting vs idle after mount", f"{peak:.1f} MiB",
                   f"{max(idle_hwm) / 1024:.1f} MiB", goal="≤ 100 MiB", ok=peak <= 100))


# --- 5. uploads ---------------------------------------------------------------------------------


def ensure_big(bench: Bench) -> None:
    if not bench.api.exists(BIG_REF):
        log(f"building {BIG_REF} ({bench.args.big_mb} MiB of random bytes, offline)")
        bench.build(BIG_REF, "FROM scratch\nCOPY big.bin /big.bin\n",
                    {"big.bin": lambda p: write_random(p, bench.args.big_mb)})


def bench_uploads(bench: Bench, report: Report) -> None:
    """load through the mount vs curl and docker load; a build of a large context vs docker build."""
    mib = bench.args.big_mb
    report.section(f"5. uploads of a {mib} MiB image")
    save = big_save(bench)
    size = save.stat().st_size
    loads = {"mount": ["cp", str(save), str(bench.mnt / ".imagefs/load/big.tar")], "curl": load_curl(bench.api, save),
             "docker": [DOCKER, "load", "-q", "-i", str(save)]}
    bench.remount()  # the daemon's peak RSS below is that of these uploads alone
    t = timed_loads(bench, bench.api, loads, bench.env)
    ratio = t["curl"].median / t["mount"].median
    report.add(Row("load through the mount vs curl -T (a streamed POST)", fmt_rate(t["mount"].median, size),
                   fmt_rate(t["curl"].median, size), f"{ratio:.2f}× throughput", "≥ 0.9×", ratio >= 0.9,
                   (t["mount"], t["curl"])))
    ratio = t["docker"].median / t["mount"].median
    report.add(Row("load through the mount vs docker load -i", fmt_rate(t["mount"].median, size),
                   fmt_rate(t["docker"].median, size), f"{ratio:.2f}× throughput", timings=(t["mount"], t["docker"])))
    peak = bench.peak_rss_kib() / 1024
    report.add(Row(f"daemon peak RSS (VmHWM) during {mib} MiB loads", f"{peak:.1f} MiB", "—", goal="≤ 100 MiB",
                   ok=peak <= 100))
    save.unlink()
    bench_build(bench, report)


def big_save(bench: Bench) -> Path:
    """The big image's save, from the engine, as a file to load."""
    ensure_big(bench)
    save = bench.work / "big-save.tar"
    run([*bench.api.curl(f"/images/{quote(BIG_REF, safe='/:@')}/get"), "-o", str(save)], env=bench.env)
    return save


def load_curl(api: EngineAPI, save: Path) -> list[str]:
    sock = ["--unix-socket", api.sock] if api.sock else []
    # -T streams the file (--data-binary @file reads it whole into memory first: out of memory at 1 GiB).
    return [CURL, "-sS", "--fail", *sock, "-X", "POST", "-H", "Content-Type: application/x-tar", "-H", "Expect:",
            "-T", str(save), "-o", "/dev/null", api.base_url + API + "/images/load?quiet=1"]


def timed_loads(bench: Bench, api: EngineAPI, loads: dict[str, list[str]], env: dict[str, str]) -> dict[str, Timing]:
    """Each load command in turn, interleaved, the image removed before each (a load writes it anew)."""
    times: dict[str, list[float]] = {name: [] for name in loads}
    for r in range(max(1, bench.args.export_rounds)):
        for name in list(loads)[r % len(loads):] + list(loads)[: r % len(loads)]:
            if api.exists(BIG_REF):
                api.untag(BIG_REF, noprune=False)
            os.sync()
            times[name].append(timed(loads[name], env=env))
            if not api.exists(BIG_REF):
                raise RuntimeError(f"{name}: the load did not bring back {BIG_REF}")
    return {name: Timing(values) for name, values in times.items()}


def bench_podman_load(bench: Bench, report: Report) -> None:
    """With --podman: a load into podman through the mount (spooled, then sent whole) vs curl -T."""
    mib = bench.args.big_mb
    report.section(f"5. a {mib} MiB load into podman (uploads spooled locally, sent at close)")
    save = big_save(bench)
    size = save.stat().st_size
    root = bench.work / "podman"
    bench.umount()
    try:
        log(f"starting a private podman in {root}")
        host = run([sys.executable, str(PRIVATE_ENGINE), "start", str(root), "--flavor", "podman"]).split()[-1]
        podman, env = EngineAPI(host), dict(bench.env, DOCKER_HOST=host)
        bench.mount(env=env)
        loads = {"mount": ["cp", str(save), str(bench.mnt / ".imagefs/load/big.tar")], "curl": load_curl(podman, save)}
        t = timed_loads(bench, podman, loads, env)
        peak = bench.peak_rss_kib() / 1024
    finally:
        bench.umount()
        subprocess.run([sys.executable, str(PRIVATE_ENGINE), "stop", str(root)], check=False)
        save.unlink(missing_ok=True)
    ratio = t["curl"].median / t["mount"].median
    report.add(Row("podman load through the mount vs curl -T", fmt_rate(t["mount"].median, size),
                   fmt_rate(t["curl"].median, size), f"{ratio:.2f}× throughput", timings=(t["mount"], t["curl"])))
    report.add(Row(f"daemon peak RSS (VmHWM) during {mib} MiB podman loads", f"{peak:.1f} MiB", "—",
                   goal="≤ 100 MiB", ok=peak <= 100))


def bench_build(bench: Bench, report: Report) -> None:
    mib = bench.args.big_mb
    ctx = bench.work / "big-ctx"
    ctx.mkdir()
    try:
        write_random(ctx / "big.bin", mib)
        (ctx / "Dockerfile").write_text("FROM scratch\nCOPY big.bin /big.bin\n")
        target = str(bench.mnt / ".imagefs/build/bench/ctx:1,nocache")
        builds = {"mount": ["tar", "-cf", target, "-C", str(ctx), "."],  # 10 KiB records: a round trip each
                  "mount-1M": ["tar", "-b", "2048", "-cf", target, "-C", str(ctx), "."],
                  "docker": [DOCKER, "build", "-q", "--no-cache", "-t", "bench/ctx:2", str(ctx)]}
        bench.created_refs += ["bench/ctx:1", "bench/ctx:2"]
        t = sample(builds, max(1, bench.args.export_rounds), env=bench.env, warmup=0)
    finally:
        shutil.rmtree(ctx, ignore_errors=True)
    ratio = t["docker"].median / t["mount"].median
    report.add(Row(f"build of a {mib} MiB context: tar into build/ vs docker build", fmt_time(t["mount"].median),
                   fmt_time(t["docker"].median), f"{ratio:.2f}× throughput", timings=(t["mount"], t["docker"])))
    ratio = t["docker"].median / t["mount-1M"].median
    report.add(Row("  the same with tar -b 2048 (1 MiB records)", fmt_time(t["mount-1M"].median),
                   fmt_time(t["docker"].median), f"{ratio:.2f}× throughput", timings=(t["mount-1M"], t["docker"])))
# --- 4. export.tar over ssh:// -----------------------------------------------------------------


def bench_ssh(bench: Bench, report: Report) -> None:
    """The first export through an ssh:// mount against `docker -H ssh://… save`, interleaved."""
    if not bench.api.exists(BIG_REF):
        raise RuntimeError(f"{BIG_REF} is missing: the export measurement builds it")
    sshd = private_sshd.start(bench.work / "sshd", bench.api.host)
    try:
        env = sshd.env(bench.env)
        env.pop("DOCKER_HOST", None)
        report.section(f"4. export.tar over {sshd.address} (one ssh per connection)")
        export = bench.path(BIG_REF, "export.tar")
        ours, theirs = Timing([]), Timing([])
        for r in range(max(1, bench.args.export_rounds)):
            log(f"ssh round {r + 1}: docker -H {sshd.address} save, then a first export through an ssh:// mount")
            bench.umount()
            os.sync()
            theirs.values.append(timed(["sh", "-c", f'exec {DOCKER} -H {sshd.address} save "$0" >/dev/null',
                                        BIG_REF], env))
            bench.mount(extra=("-H", sshd.address), env=env)
            os.sync()
            ours.values.append(timed(["cat", str(export)]))
        size = export.stat().st_size
        bench.umount()
        report.add(Row(f"first export over ssh:// vs docker -H ssh:// save (n={len(ours.values)})",
                       fmt_rate(ours.median, size), fmt_rate(theirs.median, size),
                       f"{theirs.median / ours.median:.2f}× throughput", "≥ 0.8×", theirs.median / ours.median >= 0.8,
                       (ours, theirs)))
    finally:
        private_sshd.stop(sshd.root)


# --- 5. pull ------------------------------------------------------------------------------------


@contextlib.contextmanager
def local_registry(bench: Bench) -> Iterator[str]:
    """Debian's docker-registry on 127.0.0.1 with a config of its own (never /etc's); its address."""
    root = bench.work / "registry"
    root.mkdir()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (root / "config.yml").write_text(f"version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {root}/data\n"
                                     f"http:\n  addr: 127.0.0.1:{port}\n")
    proc = subprocess.Popen(["docker-registry", "serve", str(root / "config.yml")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        def up() -> bool:
            with contextlib.suppress(OSError):
                conn = http.client.HTTPConnection(f"127.0.0.1:{port}", timeout=1)
                conn.request("GET", "/v2/")
                return conn.getresponse().status == 200
            return False

        wait_for("the registry", up, timeout=15)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


def pull_through_mount(bench: Bench, ref: str) -> float:
    """One `echo REF > MOUNT/.imagefs/pull`: the write returns when the image is pulled."""
    start = time.perf_counter()
    fd = os.open(bench.mnt / ".imagefs/pull", os.O_WRONLY | os.O_TRUNC)
    try:
        os.write(fd, f"{ref}\n".encode())
    finally:
        os.close(fd)
    return time.perf_counter() - start


def bench_pull(bench: Bench, report: Report) -> None:
    mib = bench.args.pull_mb
    report.section(f"5. pull of a {mib} MiB image from a local registry")
    with local_registry(bench) as address:
        ref = f"{address}/bench/pull:1"
        log(f"building and pushing {ref} ({mib} MiB of random bytes)")
        bench.build(ref, "FROM scratch\nCOPY big.bin /big.bin\n", {"big.bin": lambda p: write_random(p, mib)})
        run([DOCKER, "push", ref], env=bench.env, timeout=1800)
        mount, cli = Timing([]), Timing([])
        pulls: dict[str, Callable[[], float]] = {
            "mount": lambda: pull_through_mount(bench, ref),
            "cli": lambda: timed([DOCKER, "pull", "-q", ref], bench.env)}
        for r in range(bench.args.pull_rounds):
            for who in (["mount", "cli"] if r % 2 == 0 else ["cli", "mount"]):
                bench.api.untag(ref, noprune=False)  # the image and its layer go: every pull fetches it all
                os.sync()
                (mount if who == "mount" else cli).values.append(pulls[who]())
                log(f"pull round {r + 1}: {who} {fmt_time((mount if who == 'mount' else cli).values[-1])}")
    ratio = mount.median / cli.median
    report.add(Row(f"pull through the mount vs docker pull (n={bench.args.pull_rounds})",
                   fmt_rate(mount.median, mib * MIB), fmt_rate(cli.median, mib * MIB), f"{ratio:.2f}× time",
                   "≤ 1.05× time", ratio <= 1.05, (mount, cli)))


# --- main ---------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--engine-dir", type=Path,
                       help="directory of the private engine (default: a fresh one under /tmp; keep it short)")
    where.add_argument("--use-host", action="store_true", help="use $DOCKER_HOST instead of a private engine")
    parser.add_argument("--big-mb", type=int, default=512, help="size of the export test image in MiB (default 512)")
    parser.add_argument("--skip-export", action="store_true", help="skip the export.tar measurements")
    parser.add_argument("--skip-uploads", action="store_true", help="skip the load and build measurements")
    parser.add_argument("--podman", action="store_true", help="also load into a private podman (spooled uploads)")
    parser.add_argument("--skip-ssh", action="store_true", help="skip the export over ssh:// (needs openssh-server)")
    parser.add_argument("--runs", type=int, default=200, help="runs of each fast command (default 200)")
    parser.add_argument("--cold-runs", type=int, default=5, help="fresh mounts / invalidations per cold case")
    parser.add_argument("--export-rounds", type=int, default=3, help="rounds of the export measurements")
    parser.add_argument("--skip-pull", action="store_true", help="skip the pull measurements")
    parser.add_argument("--pull-mb", type=int, default=256, help="size of the pull test image in MiB (default 256)")
    parser.add_argument("--pull-rounds", type=int, default=4, help="pulls of each kind (default 4)")
    parser.add_argument("--skip-rootfs", action="store_true", help="skip the rootfs/ measurements")
    parser.add_argument("--rootfs-files", type=int, default=10_000, help="files in the rootfs test image")
    parser.add_argument("--rootfs-mb", type=int, default=200, help="MiB of one more file in the rootfs test image")
    parser.add_argument("--index-entries", type=int, default=1_000_000, help="entries of the synthetic index test")
    return parser.parse_args(argv)


def describe(bench: Bench, load_before: float) -> None:
    version = json.loads(bench.api.call("GET", "/version"))
    print(f"imagefs benchmark — engine {version.get('Version')} (API {API[2:]}) at {bench.api.host}; "
          f"kernel {platform.release()}; {os.cpu_count()} CPUs; Python {platform.python_version()}; "
          f"load average {load_before:.2f} before, {os.getloadavg()[0]:.2f} after")
    print(f"medians of interleaved runs ({bench.args.runs} per fast command, {max(10, bench.args.runs // 4)} per "
          f"slow one, {bench.args.export_rounds} export rounds); wall clock per command, exec included\n")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    report = Report()

    def terminate(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, terminate)
    load_before = os.getloadavg()[0]
    bench = Bench(args)
    try:
        bench.start_engine()
        bench.mount()
        measurements: list[Callable[[Bench, Report], None]] = [bench_inspect, bench_listing]
        if not args.skip_export:
            measurements.append(bench_export)
            if not args.skip_ssh:
                measurements.append(bench_ssh)
        if not args.skip_uploads:
            measurements.append(bench_uploads)
        if args.podman:
            measurements.append(bench_podman_load)
        if not args.skip_pull:
            measurements.append(bench_pull)
        if not args.skip_rootfs:
            from bench_rootfs import bench_rootfs  # it imports this module's helpers

            measurements.append(bench_rootfs)
        for measure in measurements:
            try:
                if not os.path.ismount(bench.mnt):
                    bench.mount()
                measure(bench, report)
            except (RuntimeError, OSError, TimeoutError, subprocess.SubprocessError, KeyError, ValueError) as exc:
                traceback.print_exc()
                report.errors.append(f"{measure.__name__}: {exc}")
                with contextlib.suppress(Exception):
                    bench.umount()
        describe(bench, load_before)
        report.print()
    except KeyboardInterrupt:
        log("interrupted; cleaning up")
        return 130
    finally:
        bench.close()
    return 1 if report.errors else 0


if __name__ == "__main__":
    sys.exit(main())
