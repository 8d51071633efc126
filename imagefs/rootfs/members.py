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
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from zlib import adler32

from ..tarcheck import BLOCK, checksum_problem, header_size, member_name, pax_records_raw

REGULAR, HARDLINK, SYMLINK, CHAR, BLOCKDEV, DIRECTORY, FIFO = b"0123456"
XATTR = b"SCHILY.xattr."
MAX_META = 1 << 20  # an extended header's or long name's length

ZERO = bytes(BLOCK)
SPAN = 4 << 20  # bytes read at once by a walk
# name, mode, uid, gid, size, mtime, checksum, type flag, link name: the fields every member needs
_HEADER = struct.Struct("100s8s8s8s12s12s8sc100s")
_META = frozenset((b"x", b"L", b"K", b"g"))
_NO_DATA = frozenset((HARDLINK, SYMLINK, CHAR, BLOCKDEV, DIRECTORY, FIFO))
_CHECK_TAILS = frozenset((b"\0 ", b"\0\0", b" \0", b"  "))
MAX_NUMBERS = 4096  # distinct (mode, uid, gid) fields remembered by a walk

# A member as `entries` yields it: the fields of `Member`, in its order (a tuple costs a tenth of the time)
Raw = tuple[bytes, int, int, int, int, int, int, int, bytes, tuple[int, int], dict[bytes, bytes] | None]


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

    def ahead(self, start: int, stop: int) -> bytes:
        """Up to `stop`, at least a header's worth: a walk's read-ahead."""
        return self[start:stop]


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
    for raw in entries(buf, start, end):
        yield Member(*raw)


def entries(buf: Buffer, start: int = 0, end: int | None = None) -> Iterator[Raw]:
    """The members of the archive in `buf[start:end]` as `Raw` tuples, in archive order, up to its end marker."""
    end = len(buf) if end is None else end
    offset = start
    pax: dict[bytes, bytes] = {}
    longname = longlink = None
    base, chunk = offset, b""
    view = memoryview(chunk)
    owners: dict[tuple[bytes, bytes, bytes], tuple[int, int, int]] = {}  # fields that repeat, parsed once
    mtimes: dict[bytes, int] = {}  # the same: a layer's files are mostly of a few build times
    while offset + BLOCK <= end:
        at = offset - base
        if at + BLOCK > len(chunk):
            base, at, chunk = offset, 0, _ahead(buf, offset, min(end, offset + SPAN))
            view = memoryview(chunk)
        name, mode, uid, gid, size_f, mtime_f, check, kind, link = _HEADER.unpack_from(chunk, at)
        try:  # the common checksum field at C speed: each half's byte sum (and the field's) is below Adler-32's
            # modulus, so Adler-32's low half is that sum plus one
            ok = (check[6:] in _CHECK_TAILS and check[:6].isdigit() and int(check[:6], 8) ==
                  (adler32(view[at : at + 256]) & 0xFFFF) + (adler32(view[at + 256 : at + BLOCK]) & 0xFFFF)
                  - (adler32(check) & 0xFFFF) + 255)
        except ValueError:  # an 8 or a 9
            ok = False
        if not ok:  # `checksum_problem` decides
            header = chunk[at : at + BLOCK]
            if header == ZERO:
                return
            problem = checksum_problem(header)
            if problem:
                raise BadArchive(f"no tar header at byte {offset - start} of the archive: {problem}")
        try:
            size = _number(size_f, pax.get(b"size"), offset) if pax else int(size_f.strip(b" \0") or b"0", 8)
        except ValueError:
            size = _number(size_f, None, offset)
        data = offset + BLOCK
        offset = data + -(-size // BLOCK) * BLOCK
        if kind in _META:
            if size > MAX_META or data + size > end:
                raise BadArchive(f"extended header at byte {data - BLOCK - start} is cut or too long")
            meta = bytes(buf[data : data + size])
            if kind == b"x":
                records = pax_records_raw(meta)
                if records is None:
                    raise BadArchive(f"malformed extended header at byte {data - BLOCK - start}")
                pax = records
            elif kind == b"L":
                longname = meta.split(b"\0", 1)[0]
            elif kind == b"K":
                longlink = meta.split(b"\0", 1)[0]
            continue  # a global header (g) holds nothing Docker's or podman's writers use
        flag = kind[0]
        if flag in (0, 0x37):
            flag = REGULAR
        elif flag in _NO_DATA:
            size, offset = 0, data  # no data follows their header, whatever the size field says
        if data + size > end:
            raise BadArchive(f"member at byte {data - BLOCK - start} ends after the archive")
        fields = (mode, uid, gid)
        owner = owners.get(fields) if not pax else None
        if owner is None:
            owner = _owner(owners, fields, pax, data)
        if pax:
            path = pax.get(b"path") or longname or member_name(chunk[at : at + BLOCK])
            link = pax.get(b"linkpath") or longlink or link.split(b"\0", 1)[0]
            xattrs = {k[len(XATTR) :]: v for k, v in pax.items() if k.startswith(XATTR)} or None
            mtime = int(float(pax[b"mtime"])) if b"mtime" in pax else _number(mtime_f, None, data)
            pax = {}
        else:
            path = longname or (member_name(chunk[at : at + BLOCK]) if chunk[at + 345] else name.split(b"\0", 1)[0])
            link = longlink or (link.split(b"\0", 1)[0] if link[0] else b"")
            xattrs = None
            known = mtimes.get(mtime_f)
            mtime = _remember_mtime(mtimes, mtime_f, data) if known is None else known
        longname = longlink = None
        yield (path, flag, *owner, mtime, size, data - start, link,
               _device(chunk[at : at + BLOCK]) if flag in (CHAR, BLOCKDEV) else (0, 0), xattrs)
    raise BadArchive(f"the archive ends at byte {end - start} with no end-of-archive marker")


def _ahead(buf: Buffer, start: int, stop: int) -> bytes:
    return buf.ahead(start, stop) if isinstance(buf, Window) else bytes(buf[start:stop])


def _remember_mtime(mtimes: dict[bytes, int], field: bytes, at: int) -> int:
    if len(mtimes) >= MAX_NUMBERS:
        mtimes.clear()
    mtime = mtimes[field] = _number(field, None, at)
    return mtime


def _owner(owners: dict[tuple[bytes, bytes, bytes], tuple[int, int, int]], fields: tuple[bytes, bytes, bytes],
           pax: dict[bytes, bytes], at: int) -> tuple[int, int, int]:
    """A member's mode, uid and gid; remembered for the next members with the same fields and no PAX values."""
    mode, uid, gid = fields
    owner = (_number(mode, None, at) & 0o7777, _number(uid, pax.get(b"uid"), at), _number(gid, pax.get(b"gid"), at))
    if not pax:
        if len(owners) >= MAX_NUMBERS:
            owners.clear()
        owners[fields] = owner
    return owner


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
