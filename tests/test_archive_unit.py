"""The upload's archive check: whole archives pass in any write sizes, every cut is caught."""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import tarfile

import pytest
from hypothesis import given, settings
from hypothesis import strategies as hs

from imagefs.uploads.archive import Archive, Malformed

pytestmark = pytest.mark.unit

COMPRESS = {"plain": lambda b: b, "gzip": gzip.compress, "bzip2": bz2.compress, "xz": lzma.compress}


def make_tar(members: list[tuple[str, bytes]], fmt: int = tarfile.PAX_FORMAT) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        tar.addfile(tarfile.TarInfo("d" * 150 + "/dir"))  # a long name: PAX or GNU L, ustar prefix
    return buf.getvalue()


def fed(data: bytes, piece: int) -> Archive:
    archive = Archive()
    for i in range(0, len(data), piece):
        archive.feed(data[i:i + piece])
    return archive


members = hs.lists(hs.tuples(hs.text("abcé ", min_size=1, max_size=120), hs.binary(max_size=3000)), max_size=5)


@settings(max_examples=60, deadline=None)
@given(members, hs.sampled_from(sorted(COMPRESS)), hs.integers(1, 5000),
       hs.sampled_from([tarfile.PAX_FORMAT, tarfile.GNU_FORMAT, tarfile.USTAR_FORMAT]))
def test_a_whole_archive_is_complete_in_any_pieces(ms: list[tuple[str, bytes]], codec: str, piece: int,
                                                   fmt: int) -> None:
    if fmt == tarfile.USTAR_FORMAT:  # ASCII names that fit its name field
        ms = [(name.encode("ascii", "replace").decode()[:90], data) for name, data in ms]
    data = COMPRESS[codec](make_tar(ms, fmt))
    archive = fed(data, piece)
    assert archive.complete and archive.finish() is None


@settings(max_examples=60, deadline=None)
@given(members, hs.sampled_from(sorted(COMPRESS)), hs.data())
def test_every_cut_is_incomplete(ms: list[tuple[str, bytes]], codec: str, data: hs.DataObject) -> None:
    whole = COMPRESS[codec](make_tar(ms))
    tar_end = len(whole) if codec != "plain" else len(make_tar(ms).rstrip(b"\0")) + 1024
    cut = data.draw(hs.integers(0, min(len(whole), tar_end) - 1))
    try:
        archive = fed(whole[:cut], 777)
    except Malformed:
        raise AssertionError("a prefix of a whole archive was refused outright") from None
    assert not archive.complete and archive.finish() is not None


def test_a_cut_at_a_member_boundary_is_incomplete() -> None:
    whole = make_tar([("a", b"x" * 600), ("b", b"y" * 10)])
    boundary = 512 + 1024  # after a's header and padded data
    archive = fed(whole[:boundary], 100)
    assert not archive.complete
    assert "before its end marker" in (archive.finish() or "")


@pytest.mark.parametrize("junk", [b"hello world, not a tar" * 40, b"\x28\xb5\x2f\xfd" + bytes(600)])
def test_junk_is_refused_at_once(junk: bytes) -> None:
    with pytest.raises(Malformed):
        fed(junk, 4096)


def test_data_after_the_end_is_refused() -> None:
    with pytest.raises(Malformed):
        fed(make_tar([("a", b"1")]) + b"more", 512)
    with pytest.raises(Malformed):
        fed(gzip.compress(make_tar([("a", b"1")])) + b"x", 512)


def test_gnu_tar_padding_is_accepted() -> None:
    archive = fed(make_tar([("a", b"1")]) + bytes(8192), 10240)
    assert archive.complete


def test_a_bomb_inflates_in_bounded_pieces() -> None:
    archive = fed(gzip.compress(make_tar([("zeros", bytes(64 << 20))])), 1 << 20)
    assert archive.complete
