"""tarcheck: a whole archive passes; a cut one, or one with anything where a header must be, does not."""

from __future__ import annotations

import io
import json
import random
import tarfile

from hypothesis import given, settings
from hypothesis import strategies as stg

from imagefs import tarcheck


def check(data: bytes) -> str | None:
    return tarcheck.walk(lambda offset, n: data[offset : offset + n], len(data)).problem


def build(members: list[tuple[str, str, int]], fmt: int, seed: int) -> tuple[bytes, list[int], int]:
    """An archive of (name, kind, size) members, the offsets where its members' headers start, and
    where its end-of-archive marker ends (zeros pad it up to tar's record size after that)."""
    rng = random.Random(seed)
    out = io.BytesIO()
    starts = []
    with tarfile.open(fileobj=out, mode="w", format=fmt) as archive:
        for name, kind, size in members:
            starts.append(out.tell())
            info = tarfile.TarInfo(name)
            if kind == "dir":
                info.type = tarfile.DIRTYPE
                archive.addfile(info)
            elif kind == "link":
                info.type, info.linkname = tarfile.SYMTYPE, "../" + name
                archive.addfile(info)
            else:
                info.size = size
                archive.addfile(info, io.BytesIO(rng.randbytes(size)))
        end = archive.offset + 2 * tarfile.BLOCKSIZE
    return out.getvalue(), starts, end


members = stg.lists(
    stg.tuples(stg.text("abcxyz/._-é", min_size=1, max_size=150), stg.sampled_from(["file", "dir", "link"]),
               stg.integers(0, 5000)),
    max_size=6,
)
formats = stg.sampled_from([tarfile.GNU_FORMAT, tarfile.PAX_FORMAT, tarfile.USTAR_FORMAT])


@settings(max_examples=100, deadline=None)
@given(members=members, fmt=formats, seed=stg.integers(), cut=stg.integers(0, 10**6))
def test_whole_archives_pass_and_every_cut_fails(members: list[tuple[str, str, int]], fmt: int, seed: int,
                                                  cut: int) -> None:
    # USTAR has room for 100 bytes of name and of link target ("../" + name) only.
    members = [m for m in members if fmt != tarfile.USTAR_FORMAT or len(m[0].encode()) < 97]
    data, _, end = build(members, fmt, seed)
    assert check(data) is None
    assert check(data[: cut % end]) is not None
    assert check(data[: end + cut % (len(data) - end + 1)]) is None  # the record's padding may go or stay


@settings(max_examples=60, deadline=None)
@given(members=members.filter(bool), fmt=formats, seed=stg.integers(), which=stg.integers(0, 100))
def test_an_error_message_where_a_header_must_be_fails(members: list[tuple[str, str, int]], fmt: int, seed: int,
                                                       which: int) -> None:
    data, starts, _ = build(members, fmt, seed)
    at = starts[which % len(starts)]
    message = json.dumps({"errorDetail": {"message": "write: broken pipe"}, "error": "write: broken pipe"}).encode()
    assert check(data[:at] + message) is not None  # what the engine writes when a save fails mid-way
    assert check(data[:at] + message.ljust(512, b"\0") + data[at + 512 :]) is not None


def test_ending_with_zeros_is_not_enough() -> None:
    # A layer.tar inside the export ends with its own zero blocks: cut right after it, the stream
    # still ends with zeros, on a block boundary (what the old trailer check accepted).
    inner, _, _ = build([("big.bin", "file", 3000)], tarfile.GNU_FORMAT, 1)
    outer = io.BytesIO()
    with tarfile.open(fileobj=outer, mode="w", format=tarfile.GNU_FORMAT) as archive:
        info = tarfile.TarInfo("layer/layer.tar")
        info.size = len(inner)
        archive.addfile(info, io.BytesIO(inner))
        cut = outer.tell()
        info = tarfile.TarInfo("manifest.json")
        info.size = 2
        archive.addfile(info, io.BytesIO(b"[]"))
    data = outer.getvalue()
    assert check(data) is None
    assert data[:cut].endswith(bytes(1024)) and cut % 512 == 0
    assert check(data[:cut]) is not None


def test_anything_but_zeros_after_the_end_fails() -> None:
    data, _, _ = build([("a", "file", 10)], tarfile.GNU_FORMAT, 2)
    assert check(data + bytes(512)) is None
    assert check(data + b"{}") is not None
    assert check(data + bytes(tarfile.BLOCKSIZE) + b"x") is not None


def test_sizes_in_base_256_and_in_extended_headers() -> None:
    assert tarcheck.header_size(b"\x80" + (9 << 30).to_bytes(11, "big")) == 9 << 30
    assert tarcheck.header_size(b"\xff" * 12) is None
    assert tarcheck.header_size(b"00000000012\0") == 10
    # A PAX size record stands for the next member's size (as for members of 8 GiB and more):
    # with the header's own field zeroed, only the record leads the walk to the marker.
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as archive:
        info = tarfile.TarInfo("data.bin")
        info.size, info.pax_headers = 700, {"size": "700"}
        archive.addfile(info, io.BytesIO(bytes(range(256)) * 3))
    data = bytearray(out.getvalue())
    member = 512 + -(-int(bytes(data[124:136]).strip(b"\0 "), 8) // 512) * 512  # after the extended header
    data[member + 124 : member + 136] = b"00000000000\0"
    data[member + 148 : member + 156] = b" " * 8
    data[member + 148 : member + 156] = b"%06o\0 " % sum(data[member : member + 512])
    with tarfile.open(fileobj=io.BytesIO(bytes(data))) as archive:
        assert archive.getmembers()[0].size == 700
    assert check(bytes(data)) is None
    assert check(bytes(data[: member + 512 + 300])) is not None  # cut inside the member


def test_extended_records_are_read_by_their_lengths() -> None:
    # A name may hold what looks like a size record; only the record's own length says where it ends.
    name = "a\n11 size=0\nb" * 3
    data, _, _ = build([(name, "file", 1500)], tarfile.PAX_FORMAT, 4)
    assert check(data) is None
    assert tarcheck.pax_records(b"13 size=1500\n10 path=x\n") == {"size": "1500", "path": "x"}
    for bad in [b"12 size=1500\n", b"x size=1\n", b"5 a=b\n", b"9 nokey\n", b"99 size=1\n"]:
        assert tarcheck.pax_records(bad) is None, bad


@settings(max_examples=50, deadline=None)
@given(stg.sampled_from([tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT]),
       stg.sampled_from(["manifest.json", "d/" * 60 + "manifest.json", "ü/manifest.json"]))
def test_kept_members_are_found_by_their_whole_name(fmt: int, name: str) -> None:
    out = io.BytesIO()
    body = json.dumps([{"Config": "a" * 64 + ".json"}]).encode()
    with tarfile.open(fileobj=out, mode="w", format=fmt) as archive:
        for member, data in (("layer.tar", bytes(3000)), (name, body)):
            info = tarfile.TarInfo(member)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    data = out.getvalue()
    walk = tarcheck.walk(lambda offset, n: data[offset : offset + n], len(data), frozenset({name}))
    assert walk.problem is None and walk.kept == {name: body}
