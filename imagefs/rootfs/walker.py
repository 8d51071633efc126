"""A layer's member walk in a forked child, so that parsing and the merge's SQLite writes use two cores.

Checking and parsing a header costs about as much as writing its row; in one
process the two add up, across a pipe they overlap. The child walks
(`members.entries`, every check made there) and sends the members in batches
`marshal` encodes and decodes at C speed; the builder merges them as they come.
A walk the child finds broken ends with its `BadArchive` text, raised here.
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

from .members import BadArchive, Buffer, Raw, entries

BATCH = 2048  # members a frame holds
_FRAME = struct.Struct("<cI")  # kind (D: members, E: the walk's error, Z: the end), length
PIPE_SIZE = 1 << 20  # the default most kernels allow an unprivileged process
MIN_FORKED = 8 << 20  # a smaller layer is walked in the builder: a fork would cost more than it saves


class Batch(list[Raw]):
    """Members as a walk gives them, and the `marshal` bytes they came in, which a kept walk keeps as they are."""

    __slots__ = ("frame",)

    def __init__(self, members: Iterable[Raw], frame: bytes) -> None:
        super().__init__(members)
        self.frame = frame


def walk(buf: Buffer, start: int, end: int) -> Iterator[list[Raw]]:
    """`members.entries(buf, start, end)` in batches, from a child process when the layer is big enough to gain."""
    if end - start < MIN_FORKED:
        yield list(entries(buf, start, end))
        return
    read, write = os.pipe()
    with contextlib.suppress(OSError):  # a deeper pipe lets the walk run ahead of the merge, not in step with it
        fcntl.fcntl(write, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
    pid = os.fork()
    if pid == 0:  # the child: never returns
        os.close(read)
        _child(buf, start, end, write)
    os.close(write)
    finished = False
    try:
        with os.fdopen(read, "rb", buffering=1 << 20) as frames:
            while not finished:
                kind, body = _receive(frames)
                if kind == b"D":
                    yield Batch(marshal.loads(body), body)
                elif kind == b"E":
                    raise BadArchive(body.decode(errors="replace"))
                elif kind == b"Z":
                    finished = True
                else:
                    raise RuntimeError(f"the member walk of bytes {start}-{end} ended without a word")
    finally:
        if not finished:  # the merge stopped early, or the child broke
            os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)


def _child(buf: Buffer, start: int, end: int, out: int) -> None:
    status = 0
    try:
        with os.fdopen(out, "wb", buffering=1 << 20) as frames:
            try:
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
