#!/usr/bin/env python3
"""Start and stop a private Docker Engine (Debian's dockerd 20.10) with sample images.

Shared by the README's main job, the test suite and the benchmark, so that all
three exercise the same real engine. Everything lives under one short directory
(unix socket paths are limited to 108 bytes):

    python3 scripts/private_engine.py start DIR [--samples]   # prints DOCKER_HOST
    python3 scripts/private_engine.py stop DIR
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


def start(root: Path, samples: bool, extra: Sequence[str] = ()) -> str:
    """Start dockerd on DIR's unix socket (plus what `extra` adds to its flags, e.g. a TLS
    listener); its DOCKER_HOST once it answers there."""
    root.mkdir(parents=True, exist_ok=True)
    sock = root / "docker.sock"
    if _ping(sock):
        return docker_host(root)
    (root / "daemon.json").write_text("{}\n")
    log = open(root / "dockerd.log", "ab")  # noqa: SIM115 - handed to the child
    proc = subprocess.Popen(
        [
            DOCKERD,
            "--config-file", str(root / "daemon.json"),
            "--storage-driver", "vfs",
            "--iptables=false", "--ip-masq=false", "--bridge=none",
            "--data-root", str(root / "data"),
            "--exec-root", str(root / "exec"),
            "--pidfile", str(root / "docker.pid"),
            "--host", docker_host(root),
            *extra,
        ],
        stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True,
    )
    deadline = time.monotonic() + 60
    while not _ping(sock):
        if proc.poll() is not None or time.monotonic() > deadline:
            sys.exit(f"dockerd did not start; see {root / 'dockerd.log'}")
        time.sleep(0.1)
    if samples:
        build_samples(root)
    return docker_host(root)


def build_samples(root: Path) -> None:
    env = _engine_env(root)
    with tempfile.TemporaryDirectory(prefix="imagefs-ctx-") as ctx:
        Path(ctx, "hello.txt").write_text("hello from imagefs\n")
        Path(ctx, "data.bin").write_bytes(os.urandom(256 * 1024))
        shutil.copy(BUSYBOX, Path(ctx, "busybox"))
        for ref, dockerfile in SAMPLES.items():
            Path(ctx, "Dockerfile").write_text(dockerfile)
            subprocess.run(
                [DOCKER, "build", "-q", "-t", ref, ctx],
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
    """SIGTERM dockerd (SIGKILL when `hard` or after `seconds`); return once it and its containerd exited."""
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
    args = parser.parse_args()
    if args.action == "ping":
        sys.exit(0 if reachable(args.root) else 1)
    root = Path(args.root).absolute()
    if args.action == "start":
        print(start(root, args.samples))
    elif args.action == "samples":
        build_samples(root)
    else:
        stop(root)


if __name__ == "__main__":
    main()
