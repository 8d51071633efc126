"""Is what a writer has written so far one whole tar archive? The incremental twin of `tarcheck`.

An upload is committed only once its bytes are verified complete, because the engine
takes a tar cut at a member boundary as a whole, smaller archive (Go's archive/tar
reads EOF at a header's place as the end). Bytes arrive in write order and are
checked as they arrive, in constant memory: tar headers are walked and member data
skipped; a gzip, bzip2 or xz stream (what dockerd's DetectCompression accepts,
zstd aside) is inflated in bounded pieces and its own end required too. Streams of
the same codec may follow one another (`cat a.gz b.gz`), as dockerd's readers (Go's
gzip and bzip2, `xz -d`) read them: measured, dockerd 20.10 loads such a gzip, bzip2
or xz save, and refuses anything else after a gzip stream, zeros too. Pure: bytes in,
`complete` and `problem` out; `Malformed` as soon as the bytes cannot be an archive.
"""

from __future__ import annotations

import bz2
import lzma
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from ..tarcheck import (
    BLOCK,
    HEADER_ONLY,
    MAX_PAX,
    MAX_TAIL,
    checksum_problem,
    header_name,
    header_size,
    pax_records,
    pax_size,
)

PIECE = 4 << 20  # inflated bytes handled at a time: a small compressed write may inflate to gigabytes


class Malformed(ValueError):
    """The bytes written cannot be (the start of) one tar archive: the upload must be aborted."""


class _Inflater(Protocol):
    @property
    def eof(self) -> bool: ...

    @property
    def unused_data(self) -> bytes: ...

    def decompress(self, data: bytes, max_length: int = ...) -> bytes: ...


def _gzip() -> _Inflater:
    return zlib.decompressobj(wbits=31)  # type: ignore[return-value]


def _bzip2() -> _Inflater:
    return bz2.BZ2Decompressor()


def _xz() -> _Inflater:
    return lzma.LZMADecompressor(format=lzma.FORMAT_XZ)


# Magic numbers as dockerd's pkg/archive DetectCompression reads them.
CODECS = {b"\x1f\x8b\x08": ("gzip", _gzip), b"BZh": ("bzip2", _bzip2), b"\xfd7zXZ\x00": ("xz", _xz)}
ZSTD = b"\x28\xb5\x2f\xfd"
MAGIC_LENGTH = 6


@dataclass
class Tar:
    """A tar stream walked as it arrives: headers checked, data skipped, the end-of-archive marker found."""

    offset: int = 0  # bytes of the tar stream seen
    _header: bytearray = field(default_factory=bytearray)
    _skip: int = 0  # member data (and padding) still to pass over
    _extended: bytearray | None = None  # a PAX or GNU long-name member's data, gathered
    _extended_kind: int = 0
    _extended_length: int = 0
    _pax: dict[str, str] = field(default_factory=dict)
    _longname: str | None = None
    member: str = ""  # the last member begun, for messages
    tail: int = -1  # zero bytes from the end-of-archive marker on (-1: not reached)
    marker_at: int | None = None  # where in the tar stream the end-of-archive marker begins

    @property
    def complete(self) -> bool:
        return self.tail >= 2 * BLOCK

    def feed(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        while view:
            if self.tail >= 0:
                self._zeros(view)
                return
            if self._skip:
                view = self._pass(view)
                continue
            take = BLOCK - len(self._header)
            self._header += view[:take]
            view = view[take:]
            if len(self._header) == BLOCK:
                self._on_header(bytes(self._header), self.offset + len(self._header) - BLOCK)
                self._header.clear()

    def _pass(self, view: memoryview) -> memoryview:
        n = min(self._skip, len(view))
        if self._extended is not None and len(self._extended) < self._extended_length:
            self._extended += view[: min(n, self._extended_length - len(self._extended))]
        self._skip -= n
        self.offset += n
        if not self._skip and self._extended is not None:
            self._on_extended()
        return view[n:]

    def _zeros(self, view: memoryview) -> None:
        if any(view):
            raise Malformed(f"data after the end of the tar archive (at byte {self.offset})")
        self.tail += len(view)
        self.offset += len(view)
        if self.tail > MAX_TAIL:
            raise Malformed(f"more than {MAX_TAIL} zero bytes after the end of the tar archive")

    def _on_header(self, header: bytes, at: int) -> None:
        self.offset += BLOCK
        if header == bytes(BLOCK):
            self.tail, self.marker_at = BLOCK, at
            return
        problem = checksum_problem(header)
        if problem:
            raise Malformed(f"no tar header at byte {at}: {problem}")
        length = header_size(header[124:136]) if "size" not in self._pax else pax_size(self._pax["size"])
        if length is None:
            raise Malformed(f"the header at byte {at} has no readable size")
        kind = header[156]
        if kind in (ord("x"), ord("L")):
            if length > MAX_PAX:
                raise Malformed(f"the extended header at byte {at} is too long ({length} bytes)")
            self._extended, self._extended_kind, self._extended_length = bytearray(), kind, length
        else:
            self.member = self._pax.get("path") or self._longname or header_name(header)
            self._pax, self._longname = {}, None
            if kind in HEADER_ONLY:
                length = 0
        self._skip = -(-length // BLOCK) * BLOCK
        if not self._skip and self._extended is not None:
            self._on_extended()

    def _on_extended(self) -> None:
        data, self._extended = bytes(self._extended or b""), None
        if self._extended_kind == ord("L"):
            self._longname = data.split(b"\0", 1)[0].decode("utf-8", "replace")
            return
        records = pax_records(data)
        if records is None or ("size" in records and pax_size(records["size"]) is None):
            raise Malformed(f"a malformed extended header before byte {self.offset}")
        self._pax = records

    def where(self) -> str:
        if self.complete:
            return "the archive is complete"
        if self.offset == 0 and not self._header:
            return "nothing was written"
        inside = f", inside member {self.member!r}" if self._skip and self.member else ""
        return f"the tar archive ends after {self.offset + len(self._header)} bytes{inside}, before its end marker"


@dataclass
class Archive:
    """The bytes of one upload: a tar archive, maybe compressed, checked as they are written."""

    written: int = 0
    codec: str | None = None  # "gzip", "bzip2", "xz"; None for a plain tar (or not decided yet)
    tar: Tar = field(default_factory=Tar)
    _magic: bytearray | None = field(default_factory=bytearray)  # the first bytes, until the codec is known
    _inflater: _Inflater | None = None
    _stream: tuple[bytes, Callable[[], _Inflater]] = (b"", _gzip)  # the codec's magic and inflater
    _between: bytearray = field(default_factory=bytearray)  # after a stream: the next one's first bytes

    @property
    def complete(self) -> bool:
        return self.tar.complete and (self._inflater is None or (self._inflater.eof and not self._between))

    @property
    def plain(self) -> bool:
        """Known to be an uncompressed tar: checking its bytes is a walk over headers, no inflating."""
        return self._magic is None and self._inflater is None

    def feed(self, data: bytes) -> None:
        self.written += len(data)
        if self._magic is not None:
            self._magic += data
            if len(self._magic) < MAGIC_LENGTH:
                return
            data, self._magic = bytes(self._magic), None
            self._choose(data)
        if self._inflater is None:
            self.tar.feed(data)
        else:
            self._inflate(data)

    def _choose(self, head: bytes) -> None:
        if head.startswith(ZSTD):
            raise Malformed("a zstd-compressed upload cannot be verified complete; send it uncompressed")
        for magic, (name, make) in CODECS.items():
            if head.startswith(magic):
                self.codec, self._inflater, self._stream = name, make(), (magic, make)

    def _inflate(self, data: bytes) -> None:
        while data:
            inflater = self._inflater
            assert inflater is not None
            if inflater.eof:
                data = self._next_stream(data)
                continue
            try:
                self.tar.feed(inflater.decompress(data, PIECE))
                # The rest of what was given waits inside the inflater (zlib: unconsumed_tail).
                while not inflater.eof and _pending(inflater):
                    self.tar.feed(inflater.decompress(_take(inflater), PIECE))
            except (zlib.error, OSError, EOFError, lzma.LZMAError) as exc:
                raise Malformed(f"not a valid {self.codec} stream: {exc}") from exc
            data = bytes(inflater.unused_data) if inflater.eof else b""

    def _next_stream(self, data: bytes) -> bytes:
        """What follows a compressed stream: another of its codec (whose bytes are returned, to
        inflate with a new inflater; none until its magic number is whole), or junk."""
        magic, make = self._stream
        self._between += data
        if bytes(self._between[: len(magic)]) != magic[: len(self._between)]:
            raise Malformed(f"data after the end of the {self.codec} stream")
        if len(self._between) < len(magic):
            return b""
        data, self._between = bytes(self._between), bytearray()
        self._inflater = make()
        return data

    def finish(self) -> str | None:
        """Why these bytes are not one whole archive, or None when they are."""
        if self._magic is not None and self.written:
            return f"only {self.written} bytes were written: not an archive"
        if self._between:
            return f"the {self.codec} stream after byte {self.written - len(self._between)} is cut in its header"
        if self._inflater is not None and self.tar.complete and not self._inflater.eof:
            return f"the {self.codec} stream ends after {self.written} bytes, before its end"
        if self._inflater is not None and not self.tar.complete:
            return f"{self.tar.where()} (inflated from {self.written} {self.codec} bytes)"
        return None if self.tar.complete else self.tar.where()


def _pending(inflater: _Inflater) -> bool:
    tail = getattr(inflater, "unconsumed_tail", None)
    if tail is not None:  # zlib keeps unread input here
        return bool(tail)
    return not getattr(inflater, "needs_input", True)  # bz2, lzma: more output waits without input


def _take(inflater: _Inflater) -> bytes:
    tail = getattr(inflater, "unconsumed_tail", None)
    return bytes(tail) if tail is not None else b""
