"""`imagefs mount` and `imagefs umount`: options, the config file, daemonizing, one-line failures."""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import quote

import trio

from .daemon import MountError, MountOptions, serve
from .engine import EngineConfig

log = logging.getLogger("imagefs")

CONFIG_DEFAULT = Path.home() / ".config" / "imagefs" / "config.toml"
DEFAULTS: dict[str, Any] = {
    "foreground": False, "debug": False, "dry_run": False, "read_only": False, "allow_other": False,
    "cache_dir": str(Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "imagefs"),
    "cache_size": "10G", "timeout": 10.0, "stream_timeout": 120.0,
    "list_ttl": 1.0, "live_ttl": 60.0, "cache_ttl": 60.0, "cache_entries": 1024,
}


def runtime_dir() -> Path:
    base = os.environ.get("XDG_RUNTIME_DIR") or f"/tmp/imagefs-{os.getuid()}"
    return Path(base) / "imagefs"


def pidfile(mountpoint: Path) -> Path:
    return runtime_dir() / (quote(str(mountpoint.absolute()), safe="") + ".pid")


def parse_size(text: str | int) -> int:
    if isinstance(text, int):
        return text
    units = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
    text = text.strip().upper().removesuffix("B").removesuffix("I")
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="imagefs", description="Mount a Docker Engine's images as directories.")
    sub = parser.add_subparsers(dest="command", required=True)
    m = sub.add_parser("mount", help="mount the engine's images at MOUNTPOINT", argument_default=None)
    m.add_argument("mountpoint", type=Path)
    m.add_argument("-H", "--host", help="engine address: unix:///…, tcp://…, http(s)://… (else $DOCKER_HOST)")
    m.add_argument("--hostname", help="the seed's host name of the engine (with --scheme)")
    m.add_argument("--scheme", choices=["http", "https"])
    m.add_argument("--base-path", help="API path to pin, e.g. /v1.41 (default: 1.41, negotiated)")
    m.add_argument("--tlsverify", action="store_true", default=None)
    m.add_argument("--tlscacert")
    m.add_argument("--tlscert")
    m.add_argument("--tlskey")
    m.add_argument("--config", type=Path, help=f"TOML file of long option names (default {CONFIG_DEFAULT})")
    m.add_argument("-f", "--foreground", action="store_true", default=None, help="stay in front; log to stderr")
    m.add_argument("--debug", action="store_true", default=None, help="log every engine request")
    m.add_argument("--dry-run", action="store_true", default=None, help="log control requests, send none")
    m.add_argument("--read-only", action="store_true", default=None, help="every write is EROFS")
    m.add_argument("--allow-other", action="store_true", default=None, help="let other users in")
    m.add_argument("--cache-dir", help="export spool and remembered sizes")
    m.add_argument("--cache-size", help="bound of the export spool, e.g. 10G")
    m.add_argument("--timeout", type=float, help="seconds for each engine call")
    m.add_argument("--stream-timeout", type=float, help="longest silence inside an export stream")
    m.add_argument("--list-ttl", type=float, help="seconds the image list is trusted while events are down")
    m.add_argument("--live-ttl", type=float, help="seconds it is trusted while events flow")
    m.add_argument("--cache-ttl", type=float, help="seconds inspect/history answers are kept")
    m.add_argument("--cache-entries", type=int, help="how many inspect/history answers are kept")
    m.add_argument("--log-file", help="where a background daemon logs (default CACHE_DIR/imagefs.log)")
    m.add_argument("--ready-fd", type=int, help=argparse.SUPPRESS)
    u = sub.add_parser("umount", help="unmount (also a mount whose daemon died)")
    u.add_argument("mountpoint", type=Path)
    u.add_argument("-z", "--lazy", action="store_true", help="detach now even if busy")
    return parser


def merged(args: argparse.Namespace) -> dict[str, Any]:
    """Flags win over the config file, which wins over the defaults."""
    path = args.config or (CONFIG_DEFAULT if CONFIG_DEFAULT.exists() else None)
    config: dict[str, Any] = {}
    if path is not None:
        try:
            config = {k.replace("-", "_"): v for k, v in tomllib.loads(Path(path).read_text()).items()}
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise MountError(f"config {path}: {exc}") from exc
        unknown = set(config) - set(vars(args))
        if unknown:
            raise MountError(f"config {path}: unknown option(s) {', '.join(sorted(unknown))}")
    flags = {k: v for k, v in vars(args).items() if v is not None}
    return {**DEFAULTS, **config, **flags}


def mount_options(opts: dict[str, Any]) -> MountOptions:
    engine = EngineConfig.from_options(
        host=opts.get("host"), hostname=opts.get("hostname"), scheme=opts.get("scheme"),
        base_path=opts.get("base_path"), tlsverify=opts.get("tlsverify"), tlscacert=opts.get("tlscacert"),
        tlscert=opts.get("tlscert"), tlskey=opts.get("tlskey"), timeout=float(opts["timeout"]),
        stream_timeout=float(opts["stream_timeout"]), dry_run=bool(opts["dry_run"]), debug=bool(opts["debug"]),
    )
    return MountOptions(
        mountpoint=Path(opts["mountpoint"]).absolute(), engine=engine, read_only=bool(opts["read_only"]),
        allow_other=bool(opts["allow_other"]), cache_dir=Path(opts["cache_dir"]),
        cache_size=parse_size(opts["cache_size"]), fallback_ttl=float(opts["list_ttl"]),
        live_ttl=float(opts["live_ttl"]), cache_ttl=float(opts["cache_ttl"]),
        cache_entries=int(opts["cache_entries"]),
    )


def run_mount(opts: dict[str, Any], argv: list[str]) -> int:
    options = mount_options(opts)
    if not opts["foreground"]:
        return spawn_daemon(options, argv, opts.get("log_file"))
    logging.basicConfig(
        level=logging.DEBUG if opts["debug"] else logging.INFO, stream=sys.stderr,
        format="%(asctime)s imagefs[%(process)d] %(levelname)s %(name)s: %(message)s",
    )
    # httpx logs each request at INFO; --debug has the engine client log them itself.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    ready_fd = opts.get("ready_fd")
    pid = pidfile(options.mountpoint)

    def ready() -> None:
        pid.parent.mkdir(parents=True, exist_ok=True)
        pid.write_text(f"{os.getpid()}\n")
        if ready_fd is not None:
            os.write(ready_fd, b"ok\n")
            os.close(ready_fd)

    try:
        trio.run(serve, options, ready)
    except MountError as exc:
        message = f"imagefs: {exc}"
        if ready_fd is not None:
            os.write(ready_fd, message.encode() + b"\n")
        print(message, file=sys.stderr)
        return 1
    finally:
        pid.unlink(missing_ok=True)
    return 0


def spawn_daemon(options: MountOptions, argv: list[str], log_path: str | None) -> int:
    """Run the daemon as a detached child in the foreground mode; return once it says the mount is ready."""
    log_file = Path(log_path or os.environ.get("IMAGEFS_LOG") or options.cache_dir / "imagefs.log")
    try:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        log_out = open(log_file, "ab")  # noqa: SIM115 - the child's stderr for its whole life
    except OSError as exc:
        print(f"imagefs: log file {log_file}: {exc.strerror}", file=sys.stderr)
        return 1
    read_fd, write_fd = os.pipe()
    child = subprocess.Popen(
        [sys.executable, "-m", "imagefs", *argv, "--foreground", "--ready-fd", str(write_fd)],
        pass_fds=[write_fd], stdin=subprocess.DEVNULL, stdout=log_out, stderr=log_out, start_new_session=True,
    )
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as pipe:
        answer = pipe.readline().decode().strip()
    if answer == "ok":
        return 0
    child.wait()
    print(answer or f"imagefs: the daemon exited ({child.returncode}) before mounting; see {log_file}",
          file=sys.stderr)
    return 1


def run_umount(mountpoint: Path, lazy: bool) -> int:
    mountpoint = mountpoint.absolute()
    daemon = _daemon_pid(pidfile(mountpoint))  # before: the daemon removes its pidfile on its way out
    cmd = ["fusermount3", "-u", *(["-z"] if lazy else []), str(mountpoint)]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        reason = result.stderr.strip().split(": ", 1)[-1] or "fusermount3 failed"
        hint = "" if lazy else " (try --lazy)" if "busy" in reason.lower() else ""
        print(f"imagefs: cannot unmount {mountpoint}: {reason}{hint}", file=sys.stderr)
        return 1
    if daemon is not None:
        _wait_for_exit(daemon)
    return 0


def _daemon_pid(pid_path: Path) -> int | None:
    try:
        return int(pid_path.read_text())
    except (OSError, ValueError):
        return None


def _wait_for_exit(pid: int, seconds: float = 15.0) -> None:
    """After an unmount, give the daemon time to clean its spool and exit."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and _running(pid):
        time.sleep(0.02)


def _running(pid: int) -> bool:
    """Alive and not a zombie: an exited daemon waits for its reaper (init), which may take a second."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    if args.command == "umount":
        return run_umount(args.mountpoint, args.lazy)
    try:
        return run_mount(merged(args), argv)
    except (MountError, ValueError) as exc:
        print(f"imagefs: {exc}", file=sys.stderr)
        return 1
