"""The upload's archive check: whole archives pass in any write sizes, every cut is caught."""

from __future__ import annotations

import bz2
import gzip
import io
import itertools
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


def streams(codec: str, tar: bytes, cuts: list[int]) -> bytes:
    """The tar in several compressed streams one after another, as `cat a.gz b.gz` makes them."""
    bounds = [0, *sorted(cuts), len(tar)]
    return b"".join(COMPRESS[codec](tar[a:b]) for a, b in itertools.pairwise(bounds))


@settings(max_examples=60, deadline=None)
@given(members, hs.sampled_from(["gzip", "bzip2", "xz"]), hs.lists(hs.integers(0, 20000), max_size=3),
       hs.integers(1, 3000), hs.data())
def test_streams_one_after_another_are_one_archive(ms: list[tuple[str, bytes]], codec: str, cuts: list[int],
                                                   piece: int, data: hs.DataObject) -> None:
    tar = make_tar(ms)
    # Streams split before the end marker: a cut at the end of a stream is then never a whole archive.
    whole = streams(codec, tar, [min(c, len(tar.rstrip(b"\0"))) for c in cuts])
    archive = fed(whole, piece)
    assert archive.complete and archive.finish() is None
    cut = data.draw(hs.integers(0, len(whole) - 1))
    cut_off = fed(whole[:cut], piece)
    assert not cut_off.complete and cut_off.finish() is not None


@pytest.mark.parametrize("after", [b"junk", bytes(1024), gzip.compress(b"")[:2] + b"x", bz2.compress(b"")])
def test_after_a_gzip_stream_only_another_gzip_stream_may_follow(after: bytes) -> None:
    with pytest.raises(Malformed, match="after the end of the gzip stream"):
        fed(gzip.compress(make_tar([("a", b"1")])) + after, 7)


def test_a_next_stream_cut_in_its_magic_number_is_incomplete() -> None:
    archive = fed(gzip.compress(make_tar([("a", b"1")])) + b"\x1f\x8b", 100)
    assert not archive.complete
    assert "cut in its header" in (archive.finish() or "")
