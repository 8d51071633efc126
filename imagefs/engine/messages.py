"""The engine's JSON message streams (pull, push, load, import, build): lines, failures, transcripts.

These operations answer 200 and then report, one JSON object per line, what happens;
a failure comes *inside* the stream (`errorDetail`, `error`), and an error the engine
raised before its first message comes as an HTTP status whose class (a registry's
refusal is a 500 on 20.10, never a 401) says less than its message. So both are
classed here by the message, the one place that reads the engine's wording. Sans-IO:
bytes in, messages and text out.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from ..errors import (
    AccessDenied,
    BadParameter,
    BrokenAnswer,
    EngineError,
    EngineFailed,
    EngineTimeout,
    ImagefsError,
    NoSuchImage,
    NotSupported,
)

MAX_LINE = 1 << 20  # one message; a build step's output line is far shorter
MAX_LINES = 2000  # what a transcript keeps: the last lines, with a count of what it dropped

# The engine's wording, in order: the first class whose words a message holds is its class.
_BY_WORDS: tuple[tuple[type[EngineError], tuple[str, ...]], ...] = (
    (NoSuchImage, ("repository does not exist", "not found", "manifest unknown", "does not exist locally",
                   "tag does not exist", "no such image", "no such container", "name unknown")),
    (AccessDenied, ("no basic auth credentials", "unauthorized", "authentication required", "denied",
                    "forbidden")),
    # A load's archive that is no save: `open …/repositories: no such file or directory`.
    (BadParameter, ("no such file or directory", "error processing tar file", "invalid tar header", "unexpected eof",
                    "dockerfile parse error", "cannot locate specified dockerfile", "invalid reference format",
                    "is not a valid change command", "unknown instruction")),
)
# A layer's status words in pull and push streams: bytes moving, and the layer finished.
_MOVING = ("Downloading", "Pushing")
_DONE = ("Pull complete", "Already exists", "Pushed", "Layer already exists", "Mounted from")
_TIMEOUT_WORDS = ("i/o timeout", "deadline exceeded", "timeout exceeded")


def classed(message: str, request: str = "", status: int = 500) -> ImagefsError:
    """An error the engine reported in a stream (or as a 500) as the class its message says."""
    lowered = message.lower()
    if any(words in lowered for words in _TIMEOUT_WORDS):
        return EngineTimeout(f"{request}: {message}" if request else message)
    for cls, words in _BY_WORDS:
        if any(w in lowered for w in words):
            return cls(status, message, request)
    return EngineFailed(status, message, request)


def refined(exc: EngineError) -> ImagefsError:
    """An HTTP error of a streaming operation, classed by its message when the status says nothing more."""
    return classed(exc.message, exc.request, exc.status) if type(exc) is EngineFailed else exc


def search_refined(exc: EngineError) -> EngineError:
    """A failed search: an index without the v1 search API (a distribution registry) is NotSupported.

    dockerd answers 500 `Unexpected status code 404` when the index has no `/v1/search`."""
    if type(exc) is EngineFailed and "unexpected status code 404" in exc.message.lower():
        return NotSupported(exc.status, exc.message, exc.request)
    return exc


def failure(message: dict[str, Any]) -> str | None:
    """The failure a message reports, if any (either field: the CLI heeds only errorDetail)."""
    detail = message.get("errorDetail")
    text = detail.get("message") if isinstance(detail, dict) else None
    if text or message.get("error"):
        return str(text or message.get("error"))
    return None


@dataclass
class Decoder:
    """Bytes of a message stream in, decoded messages out (lines end in \\r\\n or \\n)."""

    request: str
    _pending: bytearray = field(default_factory=bytearray)

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        self._pending += data
        *lines, rest = self._pending.split(b"\n")
        if len(rest) > MAX_LINE:
            raise BrokenAnswer(f"a message longer than {MAX_LINE} bytes", self.request)
        self._pending = bytearray(rest)
        return [self._decode(line) for line in lines if line.strip()]

    def end(self) -> list[dict[str, Any]]:
        """What is left when the stream ends (a last line without its newline)."""
        rest, self._pending = bytes(self._pending), bytearray()
        return [self._decode(rest)] if rest.strip() else []

    def _decode(self, line: bytes | bytearray) -> dict[str, Any]:
        try:
            message = json.loads(line)
        except ValueError as exc:
            raise BrokenAnswer(f"a stream message that is not JSON: {line[:80]!r}", self.request) from exc
        if not isinstance(message, dict):
            raise BrokenAnswer(f"a stream message that is not an object: {line[:80]!r}", self.request)
        return message


@dataclass
class Transcript:
    """What a stream said, as a person reads it: its lines in order, its `aux` results.

    A layer's progress ("Downloading 12MB/40MB") is one line, rewritten in its place as it
    moves, so `cat` during a pull shows one line per layer, as the CLI redraws them on a TTY.
    """

    entries: dict[object, str] = field(default_factory=dict)  # a line's key: its number, or its layer
    states: dict[str, str] = field(default_factory=dict)  # each layer's latest status word
    sizes: dict[str, tuple[int, int]] = field(default_factory=dict)  # each layer's bytes moved, of how many
    aux: list[Any] = field(default_factory=list)
    dropped: int = 0
    _count: int = 0
    _partial: str = ""  # build output arrives in pieces ("stream" values need not end lines)

    @property
    def lines(self) -> list[str]:
        """Every line kept, the last one too when the stream ended without its newline (podman's load)."""
        return [*self.entries.values(), *([self._partial] if self._partial else [])]

    def add(self, message: dict[str, Any]) -> None:
        if "aux" in message:
            self.aux.append(message["aux"])
        if isinstance(message.get("stream"), str):
            self._text(message["stream"])
        status = message.get("status")
        if not isinstance(status, str) or not status:
            return
        layer = message.get("id")
        line = f"{layer}: {status}" if layer else status
        detail = message.get("progressDetail") or {}
        if isinstance(detail, dict) and detail.get("total"):
            line += f" {detail.get('current', 0)}/{detail['total']} bytes"
        # A layer's status carries progressDetail (even empty), but "Already exists" none; "Pulling from x"
        # carries the tag as id.
        if layer and ("progressDetail" in message or status.startswith(_DONE)):
            self._line(line, ("layer", str(layer)))
            self._progress(str(layer), status, detail if isinstance(detail, dict) else {})
        else:
            self._line(line)

    def _progress(self, layer: str, status: str, detail: dict[str, Any]) -> None:
        self.states[layer] = status
        if status in _MOVING and detail.get("total"):
            total = int(detail["total"])  # a push's "current" can pass its "total"
            self.sizes[layer] = (min(int(detail.get("current") or 0), total), total)
        elif layer in self.sizes and status not in _MOVING:  # moved on: all of it was moved
            self.sizes[layer] = (self.sizes[layer][1],) * 2

    def facts(self) -> dict[str, str]:
        """Progress as `status` shows it: layers done of those named, bytes moved of those known."""
        if not self.states:
            return {}
        done = sum(state.startswith(_DONE) for state in self.states.values())
        facts = {"layers": f"{done}/{len(self.states)}"}
        if self.sizes:
            facts["bytes"] = "/".join(str(sum(size[i] for size in self.sizes.values())) for i in (0, 1))
        return facts

    def _text(self, text: str) -> None:
        *whole, self._partial = (self._partial + text).split("\n")
        for line in whole:
            self._line(line.rstrip("\r"))

    def _line(self, line: str, key: object = None) -> None:
        if key is None:
            key, self._count = self._count, self._count + 1
        self.entries[key] = line
        if len(self.entries) > MAX_LINES:
            del self.entries[next(iter(self.entries))]
            self.dropped += 1

    def text(self) -> str:
        shown = ([f"({self.dropped} earlier lines not kept)"] if self.dropped else []) + self.lines
        return "".join(f"{line}\n" for line in shown)
