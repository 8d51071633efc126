"""What runs and what ran: one record per long operation (an upload, a pull, a push).

Each operation's owner keeps its record up to date; `.imagefs/status` shows them all,
one nested-keyed line each (cgroup v2's format: `KEY SUB=VAL …`), so `tail -f` and
`grep` read it. A bounded number of finished records is kept.
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from dataclasses import dataclass, field

KEPT_FINISHED = 100


@dataclass
class Operation:
    number: int
    kind: str  # load, import, build, pull, push, …
    target: str  # what it is about, as the user named it
    started: float = field(default_factory=time.time)
    state: str = "running"  # running, then done, failed, aborted or dry-run
    facts: dict[str, str] = field(default_factory=dict)  # progress: bytes=…, layers=…

    def line(self) -> str:
        words = [f"state={self.state}", *(f"{k}={v}" for k, v in self.facts.items())]
        target = self.target.replace(" ", "%20") or "-"
        return f"{self.number} {self.kind} {target} {' '.join(words)}"


@dataclass
class Activity:
    running: dict[int, Operation] = field(default_factory=dict)
    finished: deque[Operation] = field(default_factory=lambda: deque(maxlen=KEPT_FINISHED))
    _numbers: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def start(self, kind: str, target: str) -> Operation:
        op = Operation(next(self._numbers), kind, target)
        self.running[op.number] = op
        return op

    def finish(self, op: Operation, state: str) -> None:
        op.state = state
        op.facts["seconds"] = f"{time.time() - op.started:.1f}"
        if self.running.pop(op.number, None) is not None:
            self.finished.append(op)

    def text(self) -> str:
        ops = sorted([*self.finished, *self.running.values()], key=lambda op: op.number)
        return "".join(op.line() + "\n" for op in ops)
