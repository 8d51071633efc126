"""`imagefs mount` and `imagefs umount`: options, the config file, daemonizing, one-line failures."""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import trio

from . import fstab, options
from .daemon import MountError, MountOptions, serve
from .engine import EngineConfig

CONFIG_DEFAULT = Path.home() / ".config" / "imagefs" / "config.toml"


def runtime_dir() -> Path:
    base = os.environ.get("XDG_RUNTIME_DIR") or f"/tmp/imagefs-{os.getuid()}"
    return Path(base) / "imagefs"


def pidfile(mountpoint: Path) -> Path:
    return runtime_dir() / (quote(str(mountpoint.absolute()), safe="") + ".pid")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="imagefs", description="Mount a Docker Engine's images as directories.")
    sub = parser.add_subparsers(dest="command", required=True)
    m = sub.add_parser("mount", help="mount the engine's images at MOUNTPOINT", argument_default=None)
    m.add_argument("mountpoint", type=Path)
    m.add_argument("--config", type=Path, metavar="FILE",
                   help=f"TOML file of long option names (default {CONFIG_DEFAULT})")
    for option in options.OPTIONS:
        names = [n for n in (option.short, option.flag) if n]
        if option.parse is options.flag:
            m.add_argument(*names, action="store_true", default=None, help=option.described())
        else:  # parsed after the config file is read, so that both give the same one-line errors
            m.add_argument(*names, metavar=option.metavar, help=option.described())
    m.add_argument("--ready-fd", type=int, help=argparse.SUPPRESS)
    u = sub.add_parser("umount", help="unmount (also a mount whose daemon died)")
    u.add_argument("mountpoint", type=Path)
    u.add_argument("-z", "--lazy", action="store_true", help="detach now even if busy")
    return parser


def merged(args: argparse.Namespace) -> dict[str, Any]:
    """Every option's value: flags win over the config file, which wins over the defaults."""
    path = args.config or (CONFIG_DEFAULT if CONFIG_DEFAULT.exists() else None)
    config = _parsed(read_config(path), lambda o: f"config {path}: {o.name}") if path else {}
    flags = {o.key: getattr(args, o.key) for o in options.OPTIONS if getattr(args, o.key) is not None}
    return {**options.defaults(), **config, **_parsed(flags, lambda o: o.flag)}


def read_config(path: Path) -> dict[str, Any]:
    try:
        table = tomllib.loads(Path(path).read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise MountError(f"config {path}: {exc}") from exc
    # Options only: the mountpoint, --config and --ready-fd belong to the command line.
    unknown = sorted(k for k in table if k.replace("-", "_") not in options.BY_KEY)
    if unknown:
        raise MountError(f"config {path}: unknown option(s) {', '.join(unknown)}")
    return {k.replace("-", "_"): v for k, v in table.items()}


def _parsed(raw: dict[str, Any], where: Callable[[options.Option], str]) -> dict[str, Any]:
    values = {}
    for key, value in raw.items():
        option = options.BY_KEY[key]
        try:
            values[key] = option.parse(value)
        except ValueError as exc:
            raise MountError(f"{where(option)}: {exc}") from None
    return values


def mount_options(mountpoint: Path, values: dict[str, Any]) -> MountOptions:
    """The daemon's options; MountError for an engine address it could not use, before anything starts."""
    engine = EngineConfig.from_options(**{o.dest: values[o.key] for o in options.ENGINE})
    try:
        engine.endpoint()
    except ValueError as exc:  # an address it cannot reach, or certificate files it cannot use
        raise MountError(f"cannot use the engine at {engine.host}: {exc}") from exc
    mount = {o.dest: values[o.key] for o in options.MOUNT}
    return MountOptions(mountpoint=mountpoint.absolute(), engine=engine, **mount)


class ReadyPipe:
    """How a background daemon tells the command that started it: "ok" once mounted, else why not."""

    def __init__(self, fd: int | None) -> None:
        self.fd = fd

    def send(self, line: str) -> None:
        if self.fd is not None:
            os.write(self.fd, line.encode() + b"\n")
            os.close(self.fd)
            self.fd = None


def run_mount(mountpoint: Path, values: dict[str, Any], argv: list[str], pipe: ReadyPipe) -> int:
    mount = mount_options(mountpoint, values)
    if not values["foreground"]:
        return spawn_daemon(mount, argv, values["log_file"])
    logging.basicConfig(
        level=logging.DEBUG if values["debug"] else logging.INFO, stream=sys.stderr,
        format="%(asctime)s imagefs[%(process)d] %(levelname)s %(name)s: %(message)s",
    )
    # httpx logs each request at INFO; --debug has the engine client log them itself.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    pid = pidfile(mount.mountpoint)

    def ready() -> None:
        pid.parent.mkdir(parents=True, exist_ok=True)
        pid.write_text(f"{os.getpid()}\n")
        pipe.send("ok")

    try:
        trio.run(serve, mount, ready)
    finally:
        # Only our own: a mount that failed (say, on a mountpoint in use) leaves the running daemon's.
        _remove_pidfile(pid, os.getpid())
    return 0


def spawn_daemon(mount: MountOptions, argv: list[str], log_path: Path | None) -> int:
    """Run the daemon as a detached child in the foreground mode; return once it says the mount is ready."""
    log_file = Path(log_path or os.environ.get("IMAGEFS_LOG") or mount.cache_dir / "imagefs.log")
    try:
        # Private, like the cache directory it usually sits in (which the daemon checks); never a link.
        log_file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        log_out = os.open(log_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        print(f"imagefs: log file {log_file}: {exc.strerror}", file=sys.stderr)
        return 1
    read_fd, write_fd = os.pipe()
    child = subprocess.Popen(
        [sys.executable, "-m", "imagefs", *argv, "--foreground", "--ready-fd", str(write_fd)],
        pass_fds=[write_fd], stdin=subprocess.DEVNULL, stdout=log_out, stderr=log_out, start_new_session=True,
    )
    os.close(write_fd)
    os.close(log_out)
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
    pid_path = pidfile(mountpoint)
    daemon = _daemon_pid(pid_path)  # before: the daemon removes its pidfile on its way out
    cmd = ["fusermount3", "-u", *(["-z"] if lazy else []), str(mountpoint)]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        reason = result.stderr.strip().split(": ", 1)[-1] or "fusermount3 failed"
        hint = "" if lazy else " (try --lazy)" if "busy" in reason.lower() else ""
        print(f"imagefs: cannot unmount {mountpoint}: {reason}{hint}", file=sys.stderr)
        return 1
    if daemon is not None:
        _wait_for_exit(daemon)
        if not _running(daemon):  # a killed daemon could not remove its pidfile itself
            _remove_pidfile(pid_path, daemon)
    return 0


def _daemon_pid(pid_path: Path) -> int | None:
    try:
        return int(pid_path.read_text())
    except (OSError, ValueError):
        return None


def _remove_pidfile(pid_path: Path, pid: int) -> None:
    """Remove the pidfile only while it names `pid`: another daemon's stays."""
    if _daemon_pid(pid_path) == pid:
        pid_path.unlink(missing_ok=True)


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


def _reason(exc: BaseException) -> str | None:
    """The one line a mount failure prints, also when a trio nursery wrapped it in a group; None for a bug."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return f"imagefs: {exc}" if isinstance(exc, MountError | ValueError) else None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if fstab.is_helper_call(argv):  # run by mount.fuse3 for an fstab line of type fuse.imagefs
        try:
            argv = fstab.mount_argv(argv)
        except ValueError as exc:
            print(f"imagefs: {exc}", file=sys.stderr)
            return 1
    args = build_parser().parse_args(argv)
    if args.command == "umount":
        return run_umount(args.mountpoint, args.lazy)
    pipe = ReadyPipe(args.ready_fd)
    try:
        return run_mount(args.mountpoint, merged(args), argv, pipe)
    except (MountError, ValueError, ExceptionGroup) as exc:
        reason = _reason(exc)
        if reason is None:
            raise
        print(reason, file=sys.stderr)  # the terminal, or a background daemon's log
        pipe.send(reason)  # and so the terminal of the command that started it
        return 1
