#!/usr/bin/env python3
"""Start and stop a private Docker Engine (Debian's dockerd 20.10) with sample images.

Shared by the README's main job, the test suite and the benchmark, so that all
three exercise the same real engine. Everything lives under one short directory
(unix socket paths are limited to 108 bytes):

    python3 scripts/private_engine.py start DIR [--samples] [--flavor F]   # prints DOCKER_HOST
    python3 scripts/private_engine.py stop DIR

Flavors (the engine matrix of the tests; `scripts/setup.sh --test` installs them):
docker20 is Debian 12's dockerd 20.10 (the default); docker26 is Debian 13's
dockerd 26 unpacked under $IMAGEFS_DOCKER26 (its own containerd first on PATH);
docker26c is that dockerd set up as Docker 29.0 ships: on the containerd image
store (image IDs are manifest digests) and refusing API versions below 1.44;
podman is Debian 12's podman 4.3 serving the Docker API (`podman system
service`). Each keeps its storage (vfs, or containerd's native snapshotter)
under DIR, with no bridge and no iptables rules.
    python3 scripts/private_engine.py ping unix:///var/run/docker.sock   # exit 0 if it answers

Only the standard library is used: it runs before the project's venv exists.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

DOCKERD = shutil.which("dockerd") or "/usr/sbin/dockerd"
# The docker CLI from Debian's docker.io matches the engine; any other on PATH also works.
DOCKER = "/usr/bin/docker" if os.path.exists("/usr/bin/docker") else (shutil.which("docker") or "docker")
BUSYBOX = "/bin/busybox"
DOCKER26 = Path(os.environ.get("IMAGEFS_DOCKER26", "/var/cache/imagefs-test/docker26"))
FLAVORS = ("docker20", "docker26", "docker26c", "podman")
MATRIX = FLAVORS  # what the tests run their engine tests against
# podman's storage, private to the engine's directory: vfs needs no kernel overlay support.
PODMAN_STORAGE = '[storage]\ndriver = "vfs"\ngraphroot = "{root}/storage"\nrunroot = "{root}/run"\n'

SAMPLES: dict[str, str] = {
    # reference -> Dockerfile; every build is offline (FROM scratch + COPY)
    "myorg/app:1.0": 'FROM scratch\nCOPY hello.txt /hello.txt\nLABEL org.example.role="app"\nCMD ["/hello.txt"]\n',
    "hello:latest": "FROM scratch\nCOPY hello.txt /srv/hello.txt\n",
    "localhost:5000/team/app:2": "FROM scratch\nCOPY data.bin /data.bin\nCOPY hello.txt /hello.txt\n",
    "busybox:latest": (
        'FROM scratch\nCOPY busybox /bin/busybox\nRUN ["/bin/busybox", "--install", "-s", "/bin"]\nCMD ["/bin/sh"]\n'
    ),
}


def docker_host(root: Path) -> str:
    return f"unix://{root / 'docker.sock'}"


def _engine_env(root: Path) -> dict[str, str]:
    env = dict(os.environ, DOCKER_HOST=docker_host(root), DOCKER_BUILDKIT="0")
    env.pop("DOCKER_CONTEXT", None)
    return env


def _ping(sock: Path) -> bool:
    return reachable(f"unix://{sock}")


def reachable(host: str) -> bool:
    """Does an engine answer /_ping at this DOCKER_HOST-style address (unix:// or tcp://, no TLS)?"""
    try:
        if host.startswith("unix://"):
            conn = socket.socket(socket.AF_UNIX)
            address: object = host.removeprefix("unix://")
        else:
            hostport = host.split("://", 1)[-1].rstrip("/")
            name, _, port = hostport.rpartition(":")
            conn = socket.socket(socket.AF_INET)
            address = (name or hostport, int(port or 2375))
        with conn:
            conn.settimeout(2)
            conn.connect(address)
            conn.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
            return b"200 OK" in conn.recv(256)
    except (OSError, ValueError):
        return False


def flavor_of(root: Path) -> str:
    """The flavor an engine directory was started with (docker20 for one from before flavors)."""
    try:
        return (root / "flavor").read_text().strip()
    except FileNotFoundError:
        return "docker20"


def docker_cli(flavor: str) -> str:
    """A docker CLI that speaks to that engine: Debian 12's (API 1.41) is too old for a floor of 1.44."""
    return str(DOCKER26 / "usr/bin/docker") if flavor.startswith("docker26") else DOCKER


def own_cli(root: Path) -> tuple[list[str], dict[str, str]]:
    """The command line of the engine's own CLI (`docker`, or `podman` on the service's storage
    directly, as a podman user tags), and its environment."""
    flavor = flavor_of(root)
    if flavor != "podman":
        return [docker_cli(flavor)], _engine_env(root)
    (root / "tmp").mkdir(exist_ok=True)
    # TMPDIR: podman writes each save and load to a file there before it streams it.
    env = dict(os.environ, CONTAINERS_STORAGE_CONF=str(root / "storage.conf"), TMPDIR=str(root / "tmp"))
    return [
        "podman", "--root", str(root / "storage"), "--runroot", str(root / "run"), "--tmpdir", str(root / "tmp"),
        "--events-backend", "file", "--cgroup-manager", "cgroupfs",
    ], env


def missing(flavor: str) -> str | None:
    """What this machine lacks to run an engine of this flavor, or None."""
    if flavor == "podman":
        return None if shutil.which("podman") else "no podman: run scripts/setup.sh --test"
    if flavor.startswith("docker26"):
        found = (DOCKER26 / "usr/sbin/dockerd").exists() and (DOCKER26 / "usr/bin/docker").exists()
        return None if found else f"no dockerd 26 in {DOCKER26}: run scripts/setup.sh --test"
    return None if os.path.exists(DOCKERD) else "no dockerd: run scripts/setup.sh --engine"


def _command(root: Path, flavor: str, extra: Sequence[str]) -> tuple[list[str], dict[str, str]]:
    """The engine's command line (dockerd's with `extra` added to its flags) and environment."""
    if flavor == "podman":
        (root / "storage.conf").write_text(PODMAN_STORAGE.format(root=root))
        podman, env = own_cli(root)
        return [*podman, "system", "service", "--time=0", docker_host(root)], env
    if missing(flavor):
        sys.exit(f"{flavor}: {missing(flavor)}")
    containerd_store = flavor == "docker26c"
    (root / "daemon.json").write_text('{"features": {"containerd-snapshotter": true}}\n' if containerd_store
                                      else "{}\n")
    dockerd, env = DOCKERD, dict(os.environ)
    if flavor.startswith("docker26"):
        dockerd = str(DOCKER26 / "usr/sbin/dockerd")
        # Its containerd 1.7, shims, docker-init and docker-proxy, not Debian 12's.
        env["PATH"] = f"{DOCKER26 / 'usr/bin'}:{DOCKER26 / 'usr/sbin'}:{env.get('PATH', '/usr/bin:/bin')}"
    if containerd_store:
        env["DOCKER_MIN_API_VERSION"] = "1.44"  # Docker 29.0-29.2's floor (dockerd 26 can only raise it)
    return [
        dockerd,
        "--config-file", str(root / "daemon.json"),
        # containerd's snapshotters have other names: "native" copies like vfs.
        "--storage-driver", "native" if containerd_store else "vfs",
        "--iptables=false", "--ip-masq=false", "--bridge=none",
        "--data-root", str(root / "data"),
        "--exec-root", str(root / "exec"),
        "--pidfile", str(root / "docker.pid"),
        "--host", docker_host(root),
        *extra,
    ], env


def start(root: Path, samples: bool, extra: Sequence[str] = (), flavor: str | None = None) -> str:
    """Start the engine on DIR's unix socket (dockerd: plus what `extra` adds to its flags, e.g. a TLS
    listener); its DOCKER_HOST once it answers there."""
    root.mkdir(parents=True, exist_ok=True)
    sock = root / "docker.sock"
    if _ping(sock):
        return docker_host(root)
    flavor = flavor or flavor_of(root)
    (root / "flavor").write_text(flavor + "\n")
    command, env = _command(root, flavor, extra)
    log = open(root / "dockerd.log", "ab")  # noqa: SIM115 - handed to the child
    proc = subprocess.Popen(command, env=env, stdout=log, stderr=log, stdin=subprocess.DEVNULL,
                            start_new_session=True)
    if flavor == "podman":  # dockerd writes its own
        (root / "docker.pid").write_text(f"{proc.pid}\n")
    deadline = time.monotonic() + 60
    while not _ping(sock):
        if proc.poll() is not None or time.monotonic() > deadline:
            sys.exit(f"{flavor} did not start; see {root / 'dockerd.log'}")
        time.sleep(0.1)
    if samples:
        build_samples(root)
    return docker_host(root)


def build_samples(root: Path) -> None:
    env, docker = _engine_env(root), docker_cli(flavor_of(root))
    with tempfile.TemporaryDirectory(prefix="imagefs-ctx-") as ctx:
        Path(ctx, "hello.txt").write_text("hello from imagefs\n")
        Path(ctx, "data.bin").write_bytes(os.urandom(256 * 1024))
        shutil.copy(BUSYBOX, Path(ctx, "busybox"))
        for ref, dockerfile in SAMPLES.items():
            Path(ctx, "Dockerfile").write_text(dockerfile)
            subprocess.run(
                [docker, "build", "-q", "-t", ref, ctx],
                env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            )


def gone(pid: int) -> bool:
    """Has the process exited? Reaps it when it is our child (a zombie still answers kill 0)."""
    with contextlib.suppress(ChildProcessError):
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def terminate(root: Path, seconds: float = 20, hard: bool = False) -> None:
    """SIGTERM the engine (SIGKILL when `hard` or after `seconds`); return once it and its containerd exited."""
    for pidfile in (root / "docker.pid", root / "exec/containerd/containerd.pid"):
        with contextlib.suppress(FileNotFoundError, ValueError, ProcessLookupError):
            pid = int(pidfile.read_text().strip())
            os.kill(pid, signal.SIGKILL if hard else signal.SIGTERM)
            deadline = time.monotonic() + seconds
            while not gone(pid):
                if time.monotonic() > deadline:
                    os.kill(pid, signal.SIGKILL)
                time.sleep(0.05)


def stop(root: Path) -> None:
    terminate(root)
    # dockerd 20.10 leaves bind mounts under its roots after shutdown.
    with open("/proc/mounts") as f:
        mounts = [line.split()[1] for line in f]
    for mnt in sorted(mounts, key=len, reverse=True):
        if mnt.startswith(str(root) + "/"):
            subprocess.run(["umount", "-l", mnt], check=False)
    shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=["start", "stop", "samples", "ping"])
    parser.add_argument("root", help="the engine's directory (for ping: a DOCKER_HOST address)")
    parser.add_argument("--samples", action="store_true", help="build the sample images after start")
    parser.add_argument("--flavor", choices=FLAVORS, help="which engine to start (default docker20)")
    args = parser.parse_args()
    if args.action == "ping":
        sys.exit(0 if reachable(args.root) else 1)
    root = Path(args.root).absolute()
    if args.action == "start":
        print(start(root, args.samples, flavor=args.flavor))
    elif args.action == "samples":
        build_samples(root)
    else:
        stop(root)


if __name__ == "__main__":
    main()
