"""A layer's member walk in a forked child, so that parsing and the merge's SQLite writes use two cores.

Checking and parsing a header costs about as much as writing its row; in one
process the two add up, across a pipe they overlap. The child walks
(`members.entries`, every check made there) and sends the members in batches
`marshal` encodes and decodes at C speed; the builder merges them as they come.
A walk the child finds broken ends with its `BadArchive` text, raised here.

Whiteouts are merged before the rest of their layer, so a merge must know first
whether a layer may hold any: a scan of its bytes for `.wh.`. A walk begun ahead,
while the builder still merges the layer below, has its child scan first and
send the answer as its first frame (W), before the members (D) and the end (Z).
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import marshal
import os
import signal
import struct
import sys
from collections.abc import Iterable, Iterator
from typing import IO

from .members import SPAN, BadArchive, Buffer, Raw, entries
from .merge import WHITEOUT

BATCH = 2048  # members a frame holds
_FRAME = struct.Struct("<cI")  # kind (W: may it hide, D: members, E: the walk's error, Z: the end), length
PIPE_SIZE = 1 << 20  # the default most kernels allow an unprivileged process
MIN_FORKED = 8 << 20  # a smaller layer is walked in the builder: a fork would cost more than it saves


class Batch(list[Raw]):
    """Members as a walk gives them, and the `marshal` bytes they came in, which a kept walk keeps as they are."""

    __slots__ = ("frame",)

    def __init__(self, members: Iterable[Raw], frame: bytes) -> None:
        super().__init__(members)
        self.frame = frame


class Walk:
    """The member walk of the tar in `buf[start:end]`, begun when made: a big layer's in a child. One begun
    `ahead`, while the layer below is merged, is first looked through for whiteouts (`_may_hide`) there, so
    that the merge finds that answer and the first batches ready. `whiteouts()` if the merge needs it, then
    `batches()` once; `close()` in any case."""

    def __init__(self, buf: Buffer, start: int, end: int, ahead: bool = False) -> None:
        self.buf, self.start, self.end = buf, start, end
        self.pid, self.started, self.finished = 0, False, False
        self.frames: IO[bytes] | None = None
        self.hides: bool | None = None
        self.scans_first = False  # the child's first frame says whether the layer may hold whiteouts
        if end - start < MIN_FORKED:
            return  # walked in the builder when asked: a fork would cost more than it saves
        read, write = os.pipe()
        try:
            with contextlib.suppress(OSError):  # a deeper pipe lets the walk run ahead of the merge
                fcntl.fcntl(write, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
            self.pid = os.fork()
        except BaseException:
            os.close(read)
            os.close(write)
            raise
        if self.pid == 0:  # the child: never returns
            os.close(read)
            _child(buf, start, end, write, ahead)
        os.close(write)
        self.frames = os.fdopen(read, "rb", buffering=1 << 20)
        self.scans_first = ahead

    def whiteouts(self) -> bool:
        """Can the layer hold a whiteout? (Not if `.wh.` is nowhere in its bytes.)"""
        if self.hides is None:
            self.hides = self._next(b"W") == b"1" if self.scans_first else _may_hide(self.buf, self.start, self.end)
        return self.hides

    def batches(self) -> Iterator[list[Raw]]:
        """The members, once: a child's walk cannot be begun again."""
        assert not self.started, "a walk's batches are read once"
        self.started = True
        if self.frames is None:
            yield list(entries(self.buf, self.start, self.end))
            return
        if self.scans_first:
            self.whiteouts()  # the child's first frame
        while (body := self._next(b"D")) is not None:
            yield Batch(marshal.loads(body), body)

    def _next(self, kind: bytes) -> bytes | None:
        """The next frame's body, which must be of `kind` (W: the whiteout answer; D: members, None at the end)."""
        assert self.frames is not None
        got, body = _receive(self.frames)
        if got == kind:
            return body
        if got == b"E":
            raise BadArchive(body.decode(errors="replace"))
        if got == b"Z" and kind == b"D":
            self.finished = True
            return None
        raise RuntimeError(f"the member walk of bytes {self.start}-{self.end} sent {got!r}, not {kind!r}")

    def close(self) -> None:
        if self.frames is None:
            return
        self.frames.close()
        if not self.finished:  # the merge stopped early, or the child broke
            os.kill(self.pid, signal.SIGKILL)
        os.waitpid(self.pid, 0)
        self.frames = None


def _may_hide(buf: Buffer, start: int, end: int) -> bool:
    """Can the tar in `buf[start:end]` hold a whiteout? Not if `.wh.` is nowhere in it, however its names are
    written (a C-speed scan, several times faster than a walk)."""
    return any(WHITEOUT in buf[at : min(end, at + SPAN + len(WHITEOUT) - 1)] for at in range(start, end, SPAN))


def _child(buf: Buffer, start: int, end: int, out: int, scan: bool) -> None:
    status = 0
    try:
        with os.fdopen(out, "wb", buffering=1 << 20) as frames:
            try:
                if scan:
                    _send(frames, b"W", b"1" if _may_hide(buf, start, end) else b"0")
                walk = entries(buf, start, end)
                while batch := list(itertools.islice(walk, BATCH)):
                    _send(frames, b"D", marshal.dumps(batch))
                _send(frames, b"Z", b"")
            except BadArchive as exc:
                _send(frames, b"E", str(exc).encode())
    except BaseException:  # a child of a fork must never return into the builder's code
        status = 1
        sys.stderr.flush()
    os._exit(status)


def _send(frames: IO[bytes], kind: bytes, body: bytes) -> None:
    """A frame, sent at once: the merge takes it while the next is walked."""
    frames.write(_FRAME.pack(kind, len(body)))
    frames.write(body)
    frames.flush()


def _receive(frames: IO[bytes]) -> tuple[bytes, bytes]:
    """The next frame's kind and body; kind `?` if the child ended before a whole frame."""
    head = frames.read(_FRAME.size)
    if len(head) < _FRAME.size:
        return b"?", b""
    kind, length = _FRAME.unpack(head)
    body = frames.read(length)
    return (kind, body) if len(body) == length else (b"?", b"")
