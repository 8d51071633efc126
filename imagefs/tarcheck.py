"""Is a byte stream one whole tar archive? What tells an export that ended from one that broke.

The engine sends an export without a length and ends it by closing the connection
(the request is HTTP/1.0, which spares the chunk framing: see bulkget), so a crash
mid-stream looks like an end. A whole archive is one whose headers, each found
where the one before says its data ends, lead to the end-of-archive marker (a
zero block at a header's place, then nothing but zeros). A stream cut short ends
before the marker; an error message the engine wrote into the stream stands where
a header must be and fails the header's checksum. Ending with zero blocks is not
enough: a member's own data (a layer.tar) ends with zeros too.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

BLOCK = 512
HEADER_ONLY = frozenset(b"123456")  # links, devices, directories, FIFOs: no data follows their header
MAX_TAIL = 1 << 20  # zeros allowed after the marker (GNU tar pads to its record size, 10 KiB by default)
MAX_PAX = 1 << 20  # an extended header's records
MAX_KEPT = 16 << 20  # a member kept whole (manifest.json)

Read = Callable[[int, int], bytes]


@dataclass
class Walk:
    """What a walk found: `problem` (None for one whole archive) and the kept members' bytes."""

    problem: str | None
    kept: dict[str, bytes] = field(default_factory=dict)


def walk(read: Read, size: int, keep: frozenset[str] = frozenset()) -> Walk:
    """Walk the `size` bytes that `read(offset, n)` returns; keep the data of small regular members
    named in `keep` (an export's manifest.json: which image it holds)."""
    offset = 0
    kept: dict[str, bytes] = {}
    pax: dict[str, str] = {}  # the extended header's records, for the member after it
    longname: str | None = None
    while True:
        if offset + BLOCK > size:
            return Walk(f"the stream ends at byte {size}, inside the archive (a header was due at {offset})")
        header = read(offset, BLOCK)
        if header == bytes(BLOCK):
            return Walk(_tail(read, offset, size), kept)
        problem = checksum_problem(header)
        if problem:
            return Walk(f"no tar header at byte {offset}: {problem}")
        length = header_size(header[124:136]) if "size" not in pax else pax_size(pax["size"])
        if length is None:
            return Walk(f"the header at byte {offset} has no readable size")
        kind = header[156]
        name = pax.get("path") or longname or header_name(header)
        pax, longname = {}, None
        if kind in HEADER_ONLY:
            length = 0
        elif kind == ord("x"):
            if length > MAX_PAX or offset + BLOCK + length > size:
                return Walk(f"the extended header at byte {offset} is cut or too long ({length} bytes)")
            records = pax_records(read(offset + BLOCK, length))
            if records is None or ("size" in records and pax_size(records["size"]) is None):
                return Walk(f"the extended header at byte {offset} is malformed")
            pax = records
        elif kind == ord("L"):  # GNU's long name, for the member after it
            if length > MAX_PAX or offset + BLOCK + length > size:
                return Walk(f"the long name at byte {offset} is cut or too long ({length} bytes)")
            longname = read(offset + BLOCK, length).split(b"\0", 1)[0].decode("utf-8", "replace")
        elif name in keep and kind in (0, ord("0")) and length <= MAX_KEPT and offset + BLOCK + length <= size:
            kept[name] = read(offset + BLOCK, length)
        offset += BLOCK + -(-length // BLOCK) * BLOCK


def header_name(header: bytes) -> str:
    name = header[:100].split(b"\0", 1)[0]
    if header[257:262] == b"ustar":
        prefix = header[345:500].split(b"\0", 1)[0]
        if prefix:
            name = prefix + b"/" + name
    return name.decode("utf-8", "replace")


def pax_size(value: str) -> int | None:
    return int(value) if value.isascii() and value.isdigit() else None


def pax_records(data: bytes) -> dict[str, str] | None:
    """The "LENGTH KEY=VALUE\n" records of an extended header (the last of a key wins), or None if malformed.

    Each record is found by its length: a value may itself hold newlines and "size=".
    """
    records: dict[str, str] = {}
    pos = 0
    data = data.rstrip(b"\0")
    while pos < len(data):
        space = data.find(b" ", pos, pos + 21)
        if space <= pos or not data[pos:space].isdigit():
            return None
        end = pos + int(data[pos:space])
        if end > len(data) or end <= space + 1 or data[end - 1 : end] != b"\n":
            return None
        key, sep, value = data[space + 1 : end - 1].partition(b"=")
        if not sep:
            return None
        records[key.decode("utf-8", "replace")] = value.decode("utf-8", "replace")
        pos = end
    return records


def _tail(read: Read, offset: int, size: int) -> str | None:
    rest = size - offset
    if rest < 2 * BLOCK:
        return f"the end-of-archive marker at byte {offset} is cut short"
    if rest > MAX_TAIL or read(offset, rest) != bytes(rest):
        return f"{rest} bytes after the end-of-archive marker at byte {offset} are not all zeros"
    return None


def checksum_problem(header: bytes) -> str | None:
    field = header[148:156].replace(b"\0", b" ").strip()
    if not field or field.strip(b"01234567"):
        return f"checksum field {header[148:156]!r}"
    stated = int(field, 8)
    unsigned = sum(header) - sum(header[148:156]) + 8 * ord(" ")
    signed = unsigned - 2 * sum(b for b in header if b > 127)  # some writers sum signed bytes
    if stated not in (unsigned, signed):
        return f"checksum {stated} does not match the header ({unsigned})"
    return None


def header_size(field: bytes) -> int | None:
    if field[0] & 0x80:  # base-256, for sizes of 8 GiB and more
        if field[0] != 0x80:
            return None  # negative
        return int.from_bytes(field[1:], "big")
    digits = field.replace(b"\0", b" ").strip()
    if digits.strip(b"01234567"):
        return None
    return int(digits, 8) if digits else 0
