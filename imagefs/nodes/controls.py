"""Control files: a write is a command (imagefs.controls), a read its usage and last outcome."""

from __future__ import annotations

import stat as st
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass

import trio

from .. import controls
from ..errors import Interrupted, ReadOnly
from ..references import TreePath
from ..uploads import signals
from .base import Context, File, Handle, Stat

WATCH = 0.2  # seconds between looks at whether the writer was asked to stop


@dataclass
class ControlFile(File):
    ctx: Context
    path: TreePath
    command: controls.Command
    target: str  # the reference or ID the command is about ("" for engine-wide commands)
    image_id: str | None
    mtime: int

    @property
    def key(self) -> Hashable:
        return ("control", self.path, self.image_id)

    @property
    def writable(self) -> bool:
        return not self.ctx.read_only

    def content(self) -> bytes:
        """Usage, what runs from this file now (the engine's lines, a layer's latest), the last outcome."""
        last = self.ctx.outcomes.get(self.path)
        running = "".join(f"running: {op.line()}\n" + _indented(op.transcript.text())
                          for op in self.ctx.activity.from_source(self.path))
        return (f"usage: {self.command.usage}\n{running}" + (f"last: {last}\n" if last else "")).encode()

    async def stat(self) -> Stat:
        return Stat(st.S_IFREG | 0o600, len(self.content()), self.mtime, volatile=True)

    async def open(self, flags: int, pid: int) -> Handle:
        return ControlHandle(self, pid)

    async def run(self, data: bytes, pid: int) -> None:
        if self.ctx.read_only:
            raise ReadOnly("mounted read-only")
        op = None
        try:
            params = self.command.parse(controls.decode(data))
            if self.command.kind:  # a long operation: in `status`, and its progress in this file's reads
                op = self.ctx.activity.start(self.command.kind, self.command.subject(self.target, params), self.path)
            outcome = await _unless_interrupted(pid, lambda: self.command.run(
                self.ctx.catalog.engine, self.target, params, op))
        except BaseException as exc:  # a cancelled write too: its operation ends
            if op is not None:
                self.ctx.activity.finish(op, "failed" if isinstance(exc, Exception) and not isinstance(
                    exc, Interrupted) else "aborted")
            self.ctx.outcomes[self.path] = f"error: {getattr(exc, 'message', None) or exc}"
            raise
        if op is not None:
            self.ctx.activity.finish(op, "dry-run" if self.ctx.catalog.engine.config.dry_run else "done")
        self.ctx.outcomes[self.path] = outcome
        await self.ctx.catalog.refresh(settle=True)


async def _unless_interrupted(pid: int, call: Callable[[], Awaitable[str]]) -> str:
    """`call()`, given up when its writer is asked to stop (Ctrl-C, kill): the request is closed then,
    which cancels a pull or a push in the engine (pyfuse3 passes no FUSE_INTERRUPT on)."""
    done: list[str] = []
    failed: list[Exception] = []
    async with trio.open_nursery() as nursery:

        async def run() -> None:
            try:
                done.append(await call())
            except Exception as exc:  # raised below, outside the nursery (which would wrap it)
                failed.append(exc)
            nursery.cancel_scope.cancel()

        nursery.start_soon(run)
        while not signals.interrupted(pid):
            await trio.sleep(WATCH)
        nursery.cancel_scope.cancel()
    if failed:
        raise failed[0]
    if done:
        return done[0]
    raise Interrupted("the writer was interrupted: the request was closed, which cancels it")


@dataclass
class ControlHandle(Handle):
    node: ControlFile
    pid: int  # the opener's: whether it was asked to stop shows in /proc while its write waits
    cacheable = False

    async def read(self, offset: int, size: int) -> bytes:
        return self.node.content()[offset : offset + size]

    async def write(self, offset: int, data: bytes) -> int:
        """One write is one command, wherever it lands (`echo` writes at 0, a second echo at its end)."""
        await self.node.run(data, self.pid)
        return len(data)


def _indented(text: str) -> str:
    return "".join(f"  {line}\n" for line in text.splitlines())
