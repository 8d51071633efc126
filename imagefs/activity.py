"""What runs and what ran: one record per long operation (an upload, a pull, a push), and their journal.

Each operation's owner keeps its record up to date and calls `note` when it changed;
`.imagefs/status` is the journal of those records, one nested-keyed line each (cgroup v2's
format: `NUMBER KIND TARGET state=… KEY=VAL …`), appended when an operation starts, when its
state or its count of finished layers changes, at most once a second for its bytes, and when it
ends. So the last line of an operation is its state, and the file only grows: `tail -f` (which
polls a FUSE file's size) prints each new line whole, and `grep` reads it. When the journal is
full its older half is dropped, which `tail -f` reports as a truncation.
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .engine.messages import Transcript
from .references import TreePath

JOURNAL_LINES = 4000
NOTE_EVERY = 1.0  # seconds between lines of an operation whose only news is bytes moved


@dataclass
class Operation:
    number: int
    kind: str  # load, import, build, pull, push, …
    target: str  # what it is about, as the user named it
    source: TreePath = ()  # the file it was started from, whose reads show its transcript while it runs
    started: float = field(default_factory=time.time)
    state: str = "running"  # running, then done, failed, aborted or dry-run
    facts: dict[str, str] = field(default_factory=dict)  # progress: bytes=…, layers=…
    transcript: Transcript = field(default_factory=Transcript)  # what the engine's stream said
    _noted: tuple[str, str, float] = ("", "", 0.0)  # the last journal line, its news, and when
    on_change: Callable[[Operation], None] | None = field(default=None, repr=False)

    def follow(self, message: dict[str, Any]) -> None:
        """One message of the engine's stream: into the transcript, its progress into the facts."""
        self.transcript.add(message)
        self.facts.update(self.transcript.facts())
        if self.on_change is not None:
            self.on_change(self)

    def line(self) -> str:
        words = [f"state={self.state}", *(f"{k}={v}" for k, v in self.facts.items())]
        target = self.target.replace(" ", "%20") or "-"
        return f"{self.number} {self.kind} {target} {' '.join(words)}"

    def news(self) -> str:
        """What makes a journal line worth writing at once: the state and the facts but bytes and time."""
        return " ".join([self.state, *(f"{k}={v}" for k, v in self.facts.items() if k not in ("bytes", "seconds"))])


@dataclass
class Activity:
    running: dict[int, Operation] = field(default_factory=dict)
    journal: deque[str] = field(default_factory=deque)
    _numbers: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def start(self, kind: str, target: str, source: TreePath = ()) -> Operation:
        op = Operation(next(self._numbers), kind, target, source, on_change=self.note)
        self.running[op.number] = op
        self.note(op)
        return op

    def note(self, op: Operation) -> None:
        """Journal the operation's record if it has news (or new bytes, once a second)."""
        line, news, now = op.line(), op.news(), time.monotonic()
        last_line, last_news, last_time = op._noted
        if line == last_line or (news == last_news and now - last_time < NOTE_EVERY):
            return
        op._noted = (line, news, now)
        if len(self.journal) >= JOURNAL_LINES:
            for _ in range(JOURNAL_LINES // 2):
                self.journal.popleft()
        self.journal.append(line + "\n")

    def finish(self, op: Operation, state: str) -> None:
        op.state = state
        op.facts["seconds"] = f"{time.time() - op.started:.1f}"
        if self.running.pop(op.number, None) is not None:
            self.note(op)

    def from_source(self, source: TreePath) -> list[Operation]:
        """The operations running from one file."""
        return [op for op in self.running.values() if op.source == source]

    def text(self) -> str:
        return "".join(self.journal)
