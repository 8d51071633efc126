"""One upload: what a writer writes streams into one engine request, committed only if whole.

The request starts at the first write with data; its body is fed by a bounded channel,
so a write waits for room (backpressure: the writer goes at the engine's speed and
memory stays flat). The body ends - the chunk that commits it - only in `finish` (the
writer's close), and only when what was written is one whole archive; any other end
cancels the request mid-body, and the engine, short of its terminating chunk, creates
nothing. A writer that waits in the daemon cannot be killed until it is answered, so
every wait also watches the writer for a pending ending signal.

An engine that keeps partial bodies (podman: Flavor.keeps_partial_bodies) gets nothing
before the commit: the checked bytes are spooled locally (imagefs.uploads.local) and
sent whole from there at the close; once that send has begun it is not cut (its shield
is lifted when the body is whole), so the engine gets all of the archive or nothing.
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import trio

from ..activity import Activity, Operation
from ..catalog import Catalog
from ..controls import human_size
from ..engine import Engine, auth
from ..engine.messages import Transcript
from ..errors import BadUpload, EngineFailed, Finished, ImagefsError, Interrupted, Unseekable
from ..spool.store import Store
from . import kinds, signals
from .archive import Archive, Malformed
from .local import Spool

log = logging.getLogger(__name__)

QUEUED = 16  # chunks the body may hold ahead of the engine
CHUNK = 1 << 20  # bytes gathered from writes before they go to the body (the kernel's largest write)
WATCH = 0.2  # seconds between looks at the writer while it waits
HOLE_PIECE = 1 << 20


class State(enum.Enum):
    OPEN = "open"  # nothing written yet: nothing sent
    SPOOLING = "spooling"  # written to the local spool, nothing sent yet (an engine keeping partial bodies)
    SENDING = "sending"
    COMMITTING = "committing"  # the body is whole and ended; the engine works
    DONE = "done"
    FAILED = "failed"  # the engine refused or failed
    ABORTED = "aborted"  # imagefs ended it before the engine had a whole body


ENDED = (State.DONE, State.FAILED, State.ABORTED)


@dataclass
class Upload:
    request: kinds.Request
    engine: Engine
    catalog: Catalog
    activity: Activity
    nursery: trio.Nursery
    pid: int  # the writer who opened it (pyfuse3 tells write and flush nobody's pid)
    store: Store  # where a local spool goes
    state: State = State.OPEN
    archive: Archive = field(default_factory=Archive)
    transcript: Transcript = field(default_factory=Transcript)
    sent: int = 0  # bytes taken from the writer (sent, or spooled to be sent)
    uploaded: int = 0  # bytes of the spool sent to the engine
    outcome: str = ""
    error: ImagefsError | None = None
    op: Operation | None = None
    created: float = field(default_factory=time.time)
    _gathered: bytearray = field(default_factory=bytearray)
    _held: bytearray = field(default_factory=bytearray)  # the end-of-archive marker on, until the commit
    _lock: trio.Lock = field(default_factory=trio.Lock)
    _answered: trio.Event = field(default_factory=trio.Event)
    _scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    _spool: Spool | None = None
    _guard: trio.CancelScope = field(default_factory=trio.CancelScope)  # shields a spool's send
    _body_sent: trio.Event = field(default_factory=trio.Event)

    def __post_init__(self) -> None:
        self._send, self._receive = trio.open_memory_channel[bytes](QUEUED)

    @property
    def dry_run(self) -> bool:
        return self.engine.config.dry_run

    @property
    def spooled(self) -> bool:
        return self.engine.flavor.keeps_partial_bodies and not self.dry_run

    # --- the writer's calls -----------------------------------------------------------------

    async def write(self, offset: int, data: bytes) -> int:
        async with self._lock:
            if self.state in ENDED or self.state is State.COMMITTING:
                if self.state is not State.DONE and self.error is not None:
                    raise self.error
                raise Finished(f"{self.request.target}: the upload has ended ({self.state.value})")
            await self._check_cancelled()
            if offset < self.sent:
                raise await self._unseekable(f"a write at byte {offset}")
            while offset > self.sent:  # a hole (a sparse cp seeks over zeros): they are sent as zeros
                await self._send_checked(bytes(min(offset - self.sent, HOLE_PIECE)))
            await self._send_checked(data)
            return len(data)

    async def truncate(self, size: int) -> None:
        """ftruncate(2) while writing: to its end is nothing, beyond it a hole (zeros), before it a rewrite."""
        if size < self.archive.written:
            async with self._lock:
                if self.state in ENDED or self.state is State.COMMITTING:
                    raise Finished(f"{self.request.target}: the upload has ended ({self.state.value})")
                raise await self._unseekable(f"a truncation to byte {size}")
        if size > self.archive.written:
            await self.write(size, b"")

    async def _send_checked(self, body: bytes) -> None:
        if not body:
            return  # an empty chunk would end the body: the engine's go
        start = self.archive.written
        await self._check(body)
        if self.state is State.OPEN:
            await self._start()
        keep = self._before_marker(start, len(body))
        if keep < len(body):
            self._held += body[keep:]
            self.sent += len(body) - keep
        await self._put(body[:keep] if keep < len(body) else body)

    def _before_marker(self, start: int, n: int) -> int:
        """How much of a write may go to the engine now: nothing from the end-of-archive marker on.

        dockerd 26 imports a tar whose marker it has read even when the body is then cut off, so
        the marker is held back until the commit, and an abort still leaves the engine nothing.
        """
        marker = self.archive.tar.marker_at
        if self._held or marker is None:
            return 0 if self._held else n
        if self.archive.codec is not None:  # compressed: held from the write whose bytes inflated to it
            return 0
        return max(0, min(n, marker - start))

    async def finish(self) -> None:
        """The writer closed a descriptor: commit if the archive is whole, abort if not, say how it went."""
        async with self._lock:
            if self.state is State.OPEN and not self.archive.written:
                return  # a close before any data (a shell's dup2): nothing to send, nothing ends
            if self.state not in ENDED and not signals.closing(self.pid):
                log.info("upload %s: a close by another process than its writer (a child it forked); "
                         "the upload goes on", self.request.target)
                return
            if self.state in ENDED:
                if self.error is not None:
                    raise self.error
                return
            await self._check_cancelled()
            problem = self.archive.finish()
            if problem is not None:
                await self._incomplete(problem)
            if self.dry_run:
                self._end(State.DONE, f"dry-run: would send {self.request.line()} with {self.sent} bytes; nothing sent")
                log.warning("dry-run: would send %s with a %d-byte body", self.request.line(), self.sent)
                return
            await self._send_gathered()
            await self._send_chunk(bytes(self._held))
            if self._spool is not None:
                await self._send_spool()
            self.state = State.COMMITTING
            self._send.close()  # the body ends here: the terminating chunk, the engine's go
            await self._watching(self._answered.wait, "while the engine finished the upload")
            if self.error is not None:
                self._end(State.FAILED, f"error: {getattr(self.error, 'message', None) or self.error}")
                raise self.error
            self._end(State.DONE, kinds.result(self.request, self.transcript))
        await self.catalog.refresh(settle=True)  # the new references are in the tree when close returns

    async def abandon(self) -> None:
        """The last descriptor is gone: an upload that was not committed is aborted (nothing sent if empty)."""
        async with self._lock:
            if self.state is State.OPEN:
                self._end(State.ABORTED, "nothing was written; nothing was sent")
            elif self.state in (State.SPOOLING, State.SENDING):
                await self._abort("closed before the archive was complete",
                                  BadUpload(f"{self.request.target}: closed before the archive was complete"))

    def cancel(self, error: ImagefsError) -> None:
        """End the request now, whoever waits (the mount is closing): `error` is what writers get."""
        if self.state not in ENDED:
            self.error = self.error or error
            self._scope.cancel()

    async def _check_cancelled(self) -> None:
        """A spooling upload that `cancel` ended (no request runs to end it) ends at its next call."""
        if self.state is State.SPOOLING and self.error is not None:
            raise await self._abort("the mount is closing", self.error)

    # --- the request ------------------------------------------------------------------------

    async def _start(self) -> None:
        self.op = self.activity.start(self.request.kind, self.request.target)
        if self.spooled:
            self.state = State.SPOOLING
            try:
                self._spool = await Spool.create(self.store, self.request.target)
            except ImagefsError as exc:
                raise await self._abort(str(exc), exc) from None
            return
        self.state = State.SENDING
        if not self.dry_run:
            self.nursery.start_soon(self._run)

    async def _send_spool(self) -> None:
        """The whole, verified archive goes to the engine now, from the spool, and is not cut midway."""
        self.state = State.SENDING
        self._guard.shield = True
        self.nursery.start_soon(self._run)
        await self._watching(self._body_sent.wait, "while imagefs sent the upload")

    async def _run(self) -> None:
        r = self.request
        try:
            with self._scope, self._guard:
                headers = dict(r.headers)
                if r.credentials:  # as the CLI sends them, read at each upload
                    headers["X-Registry-Config"] = await auth.registry_config(self.engine.config.timeout)
                async with self.engine.post_stream(r.path, r.params, headers, self._body()) as stream:
                    async for message in stream:
                        self.transcript.add(message)
        except ImagefsError as exc:
            self.error = self.error or exc  # an abort's reason stays the writer's error
        except Exception as exc:  # a bug must not leave the writer waiting for ever
            log.exception("upload %s failed unexpectedly", r.target)
            self.error = EngineFailed(500, f"imagefs failed: {exc!r}", r.line())
        if self._scope.cancelled_caught and self.error is None:
            self.error = Interrupted(f"{r.target}: the upload was cancelled")
        self._receive.close()  # a writer waiting for room learns the request is over
        self._body_sent.set()
        self._answered.set()

    async def _body(self) -> AsyncIterator[bytes]:
        if self._spool is None:
            async for data in self._receive:
                yield data
            return
        async for data in self._spool.chunks():
            yield data
            self.uploaded += len(data)
        # The body is whole: from here on the request may be cancelled (the engine has it all).
        self._guard.shield = False
        self._body_sent.set()

    async def _check(self, body: bytes) -> None:
        try:
            if self.archive.plain:  # a plain tar's walk skips data: microseconds per write
                self.archive.feed(body)
            else:  # inflating takes milliseconds per MiB: not on the loop
                await trio.to_thread.run_sync(self.archive.feed, body)
        except Malformed as exc:
            raise await self._abort(str(exc), BadUpload(f"{self.request.target}: {exc}")) from None

    async def _put(self, body: bytes) -> None:
        """Take a write: gathered until a chunk is worth the body's machinery (tar writes 10 KiB records)."""
        if not self._gathered and len(body) >= CHUNK:  # a big write (cp, dd): no copy
            await self._send_chunk(body)
        else:
            self._gathered += body
            if len(self._gathered) >= CHUNK:
                await self._send_gathered()
        self.sent += len(body)
        if self.op is not None:
            self.op.facts["bytes"] = str(self.sent)
            self.activity.note(self.op)  # the status journal: a line a second at most

    async def _send_gathered(self) -> None:
        chunk, self._gathered = bytes(self._gathered), bytearray()
        await self._send_chunk(chunk)

    async def _send_chunk(self, chunk: bytes) -> None:
        if self.dry_run or not chunk:
            return
        if self._spool is not None:
            try:
                await self._spool.write(chunk)
            except ImagefsError as exc:  # a full local disk: ENOSPC, and the upload ends
                raise await self._abort(str(exc), exc) from None
            return

        async def send() -> None:
            await self._send.send(chunk)

        try:
            await self._watching(send, "while the engine took the upload")
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            # The engine answered before the body was whole (a refusal): its answer is the error.
            await self._answered.wait()
            error = self.error or EngineFailed(500, "the engine ended the request early", self.request.line())
            self._end(State.FAILED, f"error: {getattr(error, 'message', None) or error}")
            raise error from None

    async def _watching(self, wait: Callable[[], Awaitable[None]], doing: str) -> None:
        """`wait()`, given up (and the upload aborted) if the writer is asked to stop meanwhile."""
        while True:
            with trio.move_on_after(WATCH):
                await wait()
                return
            if signals.interrupted(self.pid):
                raise await self._abort(f"the writer was interrupted {doing}", Interrupted(
                    f"{self.request.target}: the writer was interrupted; the upload is aborted"))

    async def _incomplete(self, problem: str) -> None:
        if signals.killed(self.pid):
            raise await self._abort(f"the writer was killed after {self.archive.written} bytes: {problem}",
                                    Interrupted(f"{self.request.target}: the writer was killed; nothing was created"))
        raise await self._abort(f"not a complete archive: {problem}", BadUpload(
            f"{self.request.target}: not a complete archive: {problem}; nothing was created"))

    async def _unseekable(self, what: str) -> ImagefsError:
        return await self._abort(f"{what}, behind the {self.sent} bytes already sent",
                                 Unseekable(f"{self.request.target}: an upload is written once, from start to end"))

    async def _abort(self, why: str, error: ImagefsError) -> ImagefsError:
        """End the request mid-body, so that the engine creates nothing, and wait until it is gone;
        `error` is what the writer is told, now and at every later write or close."""
        self.error = error
        # The request runs from the first byte sent on; a spool is sent whole once its send has begun.
        requested = self.state in (State.SENDING, State.COMMITTING) and not self.dry_run
        committed = self.state is State.COMMITTING or (self._spool is not None and requested)
        self._scope.cancel()
        if requested:
            await self._answered.wait()  # cancelled, the request ends at once (a spool's: once it is whole)
        # Once the body has ended, the engine has all it needs: closing the connection may be too late.
        after = "the engine had the whole archive and may have made the image" if committed else "nothing was created"
        self._end(State.ABORTED, f"aborted: {why}; {after}")
        log.warning("upload %s aborted after %d bytes: %s", self.request.target, self.archive.written, why)
        return error

    def _end(self, state: State, outcome: str) -> None:
        self.state, self.outcome = state, outcome
        if self.op is not None:
            self.activity.finish(self.op, state.value if not self.dry_run else "dry-run")
        spool, self._spool = self._spool, None
        if spool is not None:  # nothing reads or writes it any more: writes hold the lock, the request is over
            self.nursery.start_soon(spool.close)

    def text(self) -> str:
        """What a read of the upload's path shows: its state, its bytes, the engine's lines, its outcome."""
        head = f"{self.request.kind} {self.request.target}: {self.state.value}, {self._progress()}\n"
        return head + self.transcript.text() + (f"{self.outcome}\n" if self.outcome else "")

    def _progress(self) -> str:
        if self.state is State.SPOOLING:
            return f"{human_size(self.sent)} spooled locally (sent whole at the close)"
        if self.spooled:  # what reached the engine is only what was sent from the spool
            return f"{human_size(self.uploaded)} of {human_size(self.sent)} sent"
        return f"{human_size(self.sent)} sent"
