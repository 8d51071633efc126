"""The mount's lifetime: engine, catalog, exports, the FUSE session and the background tasks.

Everything is opened in one AsyncExitStack, in the order it is needed, each
teardown pushed right after its resource; the FUSE session unmounts cleanly on
SIGINT/SIGTERM and whenever `pyfuse3.main` returns.
"""

from __future__ import annotations

import contextlib
import faulthandler
import logging
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import pyfuse3
import trio

from .activity import Activity
from .catalog import Catalog, Change
from .engine import Engine, EngineConfig
from .errors import EngineUnreachable, ImagefsError
from .events import EventFollower
from .fuse.operations import Operations
from .nodes.base import Context
from .nodes.tree import Tree, affected
from .options import default
from .spool.exports import Exports
from .spool.sizes import Sizes
from .spool.store import Store, UnsafeCache
from .uploads.service import Uploads

log = logging.getLogger(__name__)

READAHEAD_KIB = 1024


class MountError(Exception):
    """A mount-time failure; its text is the one line the user sees."""


@dataclass(frozen=True)
class MountOptions:
    mountpoint: Path
    engine: EngineConfig = field(default_factory=EngineConfig)
    read_only: bool = default("read_only")
    allow_other: bool = default("allow_other")
    cache_dir: Path = field(default_factory=partial(default, "cache_dir"))  # $XDG_CACHE_HOME when made
    cache_size: int = default("cache_size")
    fallback_ttl: float = default("list_ttl")
    live_ttl: float = default("live_ttl")
    cache_ttl: float = default("cache_ttl")
    cache_entries: int = default("cache_entries")
    no_xattrs: bool = default("no_xattrs")

    def fuse_options(self) -> set[str]:
        opts = set(pyfuse3.default_options)
        # nodev, nosuid: rootfs/ holds the image's device nodes and setuid files, never to be used here.
        opts |= {"fsname=imagefs", "subtype=imagefs", "ro" if self.read_only else "rw", "nodev", "nosuid"}
        if self.allow_other:
            opts.add("allow_other")
        else:
            # Only the mounting user reaches the mount; permission bits are then ours to interpret.
            opts.discard("default_permissions")
        return opts


def check_mountpoint(path: Path) -> None:
    if not path.is_dir():
        raise MountError(f"mountpoint {path}: not a directory")
    if os.path.ismount(path):
        raise MountError(f"mountpoint {path}: something is already mounted there")
    if not os.path.exists("/dev/fuse"):
        raise MountError("no FUSE: /dev/fuse does not exist (is the fuse module loaded?)")


async def serve(options: MountOptions, ready: Callable[[], None]) -> None:
    """Mount, call `ready()`, and serve until unmounted or signalled."""
    check_mountpoint(options.mountpoint)
    async with contextlib.AsyncExitStack() as stack:
        engine = Engine(options.engine)
        stack.push_async_callback(engine.aclose)
        version = await _reach(engine, options)
        store, sizes = _open_store(options.cache_dir)
        stack.callback(store.close)
        catalog = Catalog(engine, fallback_ttl=options.fallback_ttl, live_ttl=options.live_ttl,
                          cache_ttl=options.cache_ttl, cache_entries=options.cache_entries)
        nursery = await stack.enter_async_context(trio.open_nursery())
        stack.callback(nursery.cancel_scope.cancel)
        identity = f"{options.engine.host} {version.get('Version', '?')}"
        exports = Exports(engine, store, sizes, options.cache_size, identity, nursery)
        stack.callback(exports.close)  # after the nursery's end: no export task still writes
        activity = Activity()
        uploads = Uploads(engine, catalog, activity, nursery, store)
        tree = Tree(Context(catalog, exports, options.read_only, activity=activity, uploads=uploads))
        tree.xattrs = not options.no_xattrs
        ops = Operations(tree)

        async def forget(change: Change | None, settle: bool) -> None:
            await ops.on_change(affected(change) if change is not None else None, settle)

        catalog.listeners.append(forget)
        try:
            pyfuse3.init(ops, str(options.mountpoint), options.fuse_options())
        except RuntimeError as exc:
            raise MountError(f"cannot mount {options.mountpoint}: {exc}") from exc
        # Unmount even after a failure: a dead mount ("Transport endpoint is not connected") helps nobody.
        stack.callback(pyfuse3.close, unmount=True)
        nursery.start_soon(ops.kernel.run)
        nursery.start_soon(_raise_readahead, ops.initialized, options.mountpoint)
        nursery.start_soon(EventFollower(catalog).run)
        nursery.start_soon(_stop_on_signals, exports.abort, uploads.abort)
        faulthandler.register(signal.SIGUSR1, all_threads=True)
        log.info("mounted %s (engine %s, API %s)", options.mountpoint, options.engine.host, engine.api_path)
        ready()
        await pyfuse3.main()
        log.info("unmounted %s", options.mountpoint)


async def _reach(engine: Engine, options: MountOptions) -> dict[str, Any]:
    """The engine's /version, after choosing the API version and telling its flavor: the mount's first calls."""
    try:
        with trio.fail_after(options.engine.timeout):
            await engine.negotiate()
            version = engine.version_info or await engine.version()
            await engine.identify(version)
            return version
    except (ImagefsError, trio.TooSlowError) as exc:
        # The first call's failure may have lost the reason (a certificate refused): ask once more.
        refused = await engine.endpoint.diagnose(options.engine.timeout) if isinstance(exc, EngineUnreachable) else None
        why = refused or exc or "timed out"
        raise MountError(f"cannot reach the Docker engine at {options.engine.host}: {why}") from exc


def _open_store(cache_dir: Path) -> tuple[Store, Sizes]:
    """The cache directory, checked, and the sizes it remembers (blocking: before the mount serves)."""
    store = Store(cache_dir)
    sizes = Sizes(store)
    try:
        store.open()
        sizes.load()
    except UnsafeCache as exc:
        store.close()
        raise MountError(f"cache directory refused: {exc}") from exc
    except OSError as exc:
        store.close()
        raise MountError(f"cache directory {cache_dir}: {exc.strerror or exc}") from exc
    return store, sizes


async def _raise_readahead(initialized: trio.Event, mountpoint: Path, kib: int = READAHEAD_KIB) -> None:
    """Larger kernel readahead: larger reads (up to 1 MiB, not 128 KiB) when tar or cp stream an export."""
    # Only once INIT is answered: the kernel lowers the readahead to what the INIT reply allows,
    # and libfuse's reply allows what the kernel had offered at mount time (128 KiB).
    await initialized.wait()
    # Not os.stat(mountpoint): that would send this very daemon a request it cannot answer yet.
    # mountinfo writes these four as octal escapes (fs/proc_namespace.c), a newline too.
    escaped = str(mountpoint).translate({ord(c): f"\\{ord(c):03o}" for c in " \t\n\\"})
    with open("/proc/self/mountinfo") as f:
        devices = [line.split()[2] for line in f if line.split()[4] == escaped]
    if not devices:
        return
    try:
        Path(f"/sys/class/bdi/{devices[-1]}/read_ahead_kb").write_text(f"{kib}\n")
    except OSError as exc:  # not root, or no such knob: the kernel's default stays
        log.debug("read_ahead_kb not raised: %s", exc)


async def _stop_on_signals(*aborts: Callable[[], None]) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            log.info("%s: unmounting", signal.Signals(signum).name)
            for abort in aborts:  # a reader waiting for an export, a writer for the engine, would keep
                abort()  # pyfuse3's loop from ending
            pyfuse3.terminate()
