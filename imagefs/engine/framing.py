"""HTTP/1 response framing without I/O: the head, and which received bytes of a body are payload.

In h11's shape: the caller receives, the `Decoder` says what of it is payload and what the
body's state is; it never touches a socket, so it is tested by feeding it bytes. A body is
sized (Content-Length), chunked, or ended by the engine closing the connection. Only what a
Docker engine sends is understood: HTTP/1.x, no compression (the request asks for none);
chunk extensions and trailers are skipped.
"""

from __future__ import annotations

import enum
import re

from ..errors import BrokenAnswer, EngineUnreachable

MAX_HEAD = 64 * 1024  # status line and headers
MAX_LINE = 1024  # a chunk-size line or a trailer line
_HEX = re.compile(rb"[0-9A-Fa-f]{1,16}")
_DIGITS = re.compile(r"[0-9]{1,19}")
_STATUS = re.compile(r"[2-5][0-9][0-9]")


class State(enum.Enum):
    SIZED = enum.auto()  # payload until Content-Length bytes have come
    UNTIL_CLOSE = enum.auto()  # payload until the engine closes the connection
    CHUNK_SIZE = enum.auto()  # a chunk-size line is next
    CHUNK_DATA = enum.auto()  # inside a chunk's data
    CHUNK_END = enum.auto()  # the empty line after a chunk's data is next
    TRAILERS = enum.auto()  # after the last chunk: trailer lines, then an empty one
    DONE = enum.auto()


_PAYLOAD = frozenset({State.SIZED, State.UNTIL_CLOSE, State.CHUNK_DATA})
_WHOLE = {State.SIZED: State.DONE, State.CHUNK_DATA: State.CHUNK_END}  # what follows all of a payload's bytes


def parse_head(head: bytes, request: str) -> tuple[int, dict[str, str]]:
    """The status and the headers (names in lower case) of a response head, without its blank line."""
    status_line, *lines = head.decode("latin-1").split("\r\n")
    parts = status_line.split(" ", 2)
    # 1xx is never asked for, so it is not the answer.
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not _STATUS.fullmatch(parts[1]):
        raise BrokenAnswer(f"not an HTTP/1 status line: {status_line[:80]!r}", request)
    headers: dict[str, str] = {}
    for line in lines:
        name, sep, value = line.partition(":")
        if not sep:
            raise BrokenAnswer(f"bad header line {line[:80]!r}", request)
        headers[name.strip().lower()] = value.strip()
    return int(parts[1]), headers


class Decoder:
    """Where the payload of one response body is, from its headers and the bytes fed to it."""

    def __init__(self, headers: dict[str, str], request: str) -> None:
        self.request = request
        self.received = 0  # payload bytes taken so far
        self._left: int | None = None  # of the sized body, or of the current chunk
        encoding = headers.get("transfer-encoding", "").lower()
        length = headers.get("content-length")
        self.chunked = encoding == "chunked"
        if encoding and not self.chunked:
            raise BrokenAnswer(f"unsupported transfer-encoding {encoding!r}", request)
        if self.chunked:
            self.state = State.CHUNK_SIZE
        elif length is not None:
            if not _DIGITS.fullmatch(length.strip()):
                raise BrokenAnswer(f"bad Content-Length {length[:40]!r}", request)
            self._left = int(length)
            self.state = State.SIZED if self._left else State.DONE
        else:
            self.state = State.UNTIL_CLOSE

    @property
    def done(self) -> bool:
        return self.state is State.DONE

    def want(self, limit: int) -> int:
        """How many of the next bytes may be taken as payload, at most `limit` (in a payload state)."""
        return limit if self._left is None else min(limit, self._left)

    def take(self, n: int) -> None:
        """`n` payload bytes (as `want` allowed) were taken: the one place payload is counted."""
        self.received += n
        if self._left is not None:
            self._left -= n
            if self._left == 0:
                self.state = _WHOLE.get(self.state, self.state)

    def closed(self) -> None:
        """The engine closed the connection: the end of a body that ends so, else a broken one."""
        if self.state is not State.UNTIL_CLOSE:
            raise EngineUnreachable(f"{self.request}: the engine closed the connection "
                                    f"{self.received} bytes into the body")
        self.state = State.DONE

    def feed(self, view: memoryview, pos: int, end: int, out: int) -> tuple[int, int]:
        """Decode view[pos:end], moving its payload down to view[out:] in place (out <= pos);
        return the new (pos, out).

        Stops at the body's end, or at a framing line that has not fully arrived: what is left
        at the returned pos is for the next call, with more bytes after it.
        """
        while pos < end and self.state is not State.DONE:
            if self.state in _PAYLOAD:
                n = self.want(end - pos)
                if out != pos:
                    view[out : out + n] = view[pos : pos + n]  # memmove: the regions may overlap
                self.take(n)
                pos, out = pos + n, out + n
                continue
            line_end = bytes(view[pos : min(end, pos + MAX_LINE + 2)]).find(b"\r\n")
            if line_end < 0:
                if end - pos >= MAX_LINE:
                    raise BrokenAnswer("a chunk framing line longer than 1 KiB", self.request)
                break
            self._framing(bytes(view[pos : pos + line_end]))
            pos += line_end + 2
        return pos, out

    def _framing(self, line: bytes) -> None:
        match self.state:
            case State.CHUNK_END:
                if line:
                    raise BrokenAnswer("chunk data longer than its size", self.request)
                self.state = State.CHUNK_SIZE
            case State.CHUNK_SIZE:
                digits = line.split(b";", 1)[0].strip()
                if not _HEX.fullmatch(digits):
                    raise BrokenAnswer(f"bad chunk size line {line[:40]!r}", self.request)
                self._left = int(digits, 16)
                self.state = State.CHUNK_DATA if self._left else State.TRAILERS
            case State.TRAILERS if not line:  # the empty line after the trailers ends the body
                self.state = State.DONE
