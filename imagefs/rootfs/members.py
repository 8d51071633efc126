"""The members of a tar archive held in a buffer: header by header, data never copied.

A struct-level walk (ustar, PAX `x` records, GNU `L`/`K` long names, base-256
numbers) rather than `tarfile`: it is several times faster on layers of a
million members, and it gives each member's data offset, so a read of a file in
the image is one `pread` at that offset. PAX `SCHILY.xattr.*` records become
the member's extended attributes, byte for byte.
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Iterator
from dataclasses import dataclass

from ..tarcheck import BLOCK, checksum_problem, header_size, member_name, pax_records_raw

REGULAR, HARDLINK, SYMLINK, CHAR, BLOCKDEV, DIRECTORY, FIFO = b"0123456"
XATTR = b"SCHILY.xattr."
MAX_META = 1 << 20  # an extended header's or long name's length

ZERO = bytes(BLOCK)


class Window:
    """A file read through a window of `pread`s: a walk brings only the headers it reads into memory,
    never the data it skips (a mapping would count every page it touched in the builder's RSS)."""

    def __init__(self, fd: int, span: int = 1 << 20) -> None:
        self.fd, self.span = fd, span
        self.size = os.fstat(fd).st_size
        self.start, self.data = 0, b""

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, where: slice) -> bytes:
        start, stop = where.start, min(where.stop, self.size)
        if start < self.start or stop > self.start + len(self.data):
            self.start, self.data = start, os.pread(self.fd, max(self.span, stop - start), start)
        return self.data[start - self.start : stop - self.start]


Buffer = bytes | memoryview | mmap.mmap | Window


class BadArchive(Exception):
    """The bytes are not the tar archive they must be; the text says where."""


@dataclass(slots=True)
class Member:
    path: bytes  # as written, not normalized
    kind: int  # the type flag, b"0" to b"6" (b"\0" and b"7" count as regular files)
    mode: int  # permission bits only: some writers put the file type into the mode field too
    uid: int
    gid: int
    mtime: int
    size: int
    offset: int  # of its data, from the archive's start
    link: bytes  # a symlink's target, or a hardlink's
    rdev: tuple[int, int] = (0, 0)
    xattrs: dict[bytes, bytes] | None = None


def members(buf: Buffer, start: int = 0, end: int | None = None) -> Iterator[Member]:
    """The members of the archive in `buf[start:end]`, in archive order, up to its end marker."""
    end = len(buf) if end is None else end
    offset = start
    pax: dict[bytes, bytes] = {}
    longname = longlink = None
    while offset + BLOCK <= end:
        header = bytes(buf[offset : offset + BLOCK])  # a copy from a memoryview, a slice of an mmap already
        if header == ZERO:
            return
        problem = checksum_problem(header)
        if problem:
            raise BadArchive(f"no tar header at byte {offset - start} of the archive: {problem}")
        kind = header[156]
        size = _number(header[124:136], pax.get(b"size"), offset)
        data = offset + BLOCK
        offset = data + -(-size // BLOCK) * BLOCK
        if kind in (ord("x"), ord("L"), ord("K"), ord("g")):
            if size > MAX_META or data + size > end:
                raise BadArchive(f"extended header at byte {data - BLOCK - start} is cut or too long")
            meta = bytes(buf[data : data + size])
            if kind == ord("x"):
                records = pax_records_raw(meta)
                if records is None:
                    raise BadArchive(f"malformed extended header at byte {data - BLOCK - start}")
                pax = records
            elif kind == ord("L"):
                longname = meta.split(b"\0", 1)[0]
            elif kind == ord("K"):
                longlink = meta.split(b"\0", 1)[0]
            continue  # a global header (g) holds nothing Docker's or podman's writers use
        if kind in (0, ord("7")):
            kind = REGULAR
        if kind in (HARDLINK, SYMLINK, CHAR, BLOCKDEV, DIRECTORY, FIFO):
            size, offset = 0, data  # no data follows their header, whatever the size field says
        if data + size > end:
            raise BadArchive(f"member at byte {data - BLOCK - start} ends after the archive")
        yield Member(
            path=pax.get(b"path") or longname or member_name(header),
            kind=kind,
            mode=_number(header[100:108], None, data) & 0o7777,
            uid=_number(header[108:116], pax.get(b"uid"), data),
            gid=_number(header[116:124], pax.get(b"gid"), data),
            mtime=int(float(pax[b"mtime"])) if b"mtime" in pax else _number(header[136:148], None, data),
            size=size,
            offset=data - start,
            link=pax.get(b"linkpath") or longlink or header[157:257].split(b"\0", 1)[0],
            rdev=_device(header) if kind in (CHAR, BLOCKDEV) else (0, 0),
            xattrs={k[len(XATTR) :]: v for k, v in pax.items() if k.startswith(XATTR)} or None,
        )
        pax, longname, longlink = {}, None, None
    raise BadArchive(f"the archive ends at byte {end - start} with no end-of-archive marker")


def _device(header: bytes) -> tuple[int, int]:
    return header_size(header[329:337]) or 0, header_size(header[337:345]) or 0


def _number(field: bytes, override: bytes | None, at: int) -> int:
    if override is None:
        try:  # the common case, octal digits, at C speed
            return int(field.strip(b" \0") or b"0", 8)
        except ValueError:
            pass
    value = header_size(field) if override is None else int(override) if override.isdigit() else None
    if value is None:
        raise BadArchive(f"unreadable number {field!r} in the header before byte {at}")
    return value


def components(path: bytes) -> tuple[bytes, ...] | None:
    """A member's path as its names below the root (`./a//b/` is a, b); None for one that climbs out."""
    names = tuple(n for n in path.split(b"/") if n and n != b".")
    return None if b".." in names else names
