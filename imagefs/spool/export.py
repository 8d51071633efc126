"""One export: the engine's answer to one ImageGet, spooled, in explicit states.

    IDLE ──start──▶ RUNNING ──verified──▶ COMPLETE
      │                 └──────failed───▶ FAILED
      └──adopt (a complete spool on disk)──▶ COMPLETE

What it is the content of is fixed when it is made (`Content`): the images by
reference it must hold. An export whose manifest names other images (a tag moved
while the engine saved it) is broken like a cut one.
"""

from __future__ import annotations

import enum
import mmap
from dataclasses import dataclass, field

import trio

from ..errors import ImagefsError


class State(enum.Enum):
    IDLE = "idle"
    RUNNING = "running"
    COMPLETE = "complete"
    FAILED = "failed"


@dataclass(frozen=True)
class Content:
    """What an export must hold: `images` maps each reference it is asked for to its image ID."""

    key: str  # what its spool and size are kept under (engine identity, image IDs, references)
    url_path: str
    params: tuple[tuple[str, str], ...]
    images: tuple[tuple[str, str], ...]  # (reference or ID, 64-hex image ID)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(ref for ref, _ in self.images)


@dataclass(eq=False)
class Export:
    content: Content
    name: str  # the spool's file name in the store
    state: State = State.IDLE
    fd: int = -1
    part: str | None = None  # the spool's name while it is written
    size: int = 0  # bytes in the spool
    expected: int | None = None  # the remembered size when it started: what readers were told
    stored: int | None = None  # the size of a complete spool on disk, not yet opened
    error: ImagefsError | None = None
    readers: int = 0
    map: mmap.mmap | None = None  # the complete spool, mapped for reads
    done: trio.Event = field(default_factory=trio.Event)
    stopper: trio.CancelScope = field(default_factory=trio.CancelScope)

    @property
    def key(self) -> str:
        return self.content.key

    def advance(self, n: int) -> None:
        """`n` more bytes are in the spool."""
        self.size += n

    def complete(self) -> None:
        self.state = State.COMPLETE
        self._end()

    def fail(self, error: ImagefsError) -> None:
        self.state = State.FAILED
        self.error = error
        self._end()

    def _end(self) -> None:
        self.done.set()
