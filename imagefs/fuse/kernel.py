"""Telling the kernel to forget: one task, in order, never from inside the request it would wait for.

A lookup or readdir that caused a refresh holds its directory's lock in the
kernel until it is answered, and invalidating an entry there needs that lock,
so a request must never wait for its own invalidation; and pyfuse3's
invalidate calls block, so they run in a worker thread.
"""

from __future__ import annotations

import errno
import logging
import math
import os
from collections.abc import Callable

import pyfuse3
import trio

from ..nodes.tree import Invalidation
from ..references import TreePath
from .inodes import Dentry, Inodes

log = logging.getLogger(__name__)


class Kernel:
    def __init__(self, inodes: Inodes, notify: Callable[[list[Dentry], list[int]], None] | None = None) -> None:
        self.inodes = inodes
        self.notify = notify or _notify  # what tells the kernel (a test without a mount records instead)
        self._send, self._pending = trio.open_memory_channel[tuple[Invalidation | None, trio.Event]](math.inf)

    def invalidate_soon(self, what: Invalidation | None) -> trio.Event:
        """Queue what to forget (None: everything); the event is set once the kernel has."""
        done = trio.Event()
        self._send.send_nowait((what, done))
        return done

    async def run(self) -> None:
        async for what, done in self._pending:
            try:
                await self._invalidate(what)
            except Exception:
                log.exception("unexpected error invalidating the kernel's cache")
            finally:
                done.set()

    async def _invalidate(self, what: Invalidation | None) -> None:
        dentries: list[Dentry] = []
        inodes: list[int] = []
        for ino, node in self.inodes.known():
            if ino == pyfuse3.ROOT_INODE:
                touched = what is None or node.path in what.nodes
            else:
                dropped = what is None or _under(node.path, what.trees)
                if dropped:
                    dentries.extend(self.inodes.names(ino))
                touched = dropped or node.path in (what.nodes if what else ())
            if touched:
                inodes.append(ino)
        if dentries or inodes:
            await trio.to_thread.run_sync(self.notify, dentries, inodes)


def _under(path: TreePath, trees: frozenset[TreePath]) -> bool:
    return any(path[:depth] in trees for depth in range(1, len(path) + 1))


def _notify(dentries: list[Dentry], inodes: list[int]) -> None:
    for parent, name in dentries:
        try:
            pyfuse3.invalidate_entry(parent, os.fsencode(name))
        except OSError as exc:  # ENOENT: the kernel had no such entry
            if exc.errno != errno.ENOENT:
                log.warning("invalidate_entry(%d, %r): %s", parent, name, exc)
    for ino in inodes:
        try:
            # Attributes only: pages belong to the inode's content, which never changes under it.
            pyfuse3.invalidate_inode(ino, attr_only=True)
        except OSError as exc:
            if exc.errno != errno.ENOENT:
                log.warning("invalidate_inode(%d): %s", ino, exc)
