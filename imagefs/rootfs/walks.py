"""Each layer's member walk, kept once per diff ID beside the indexes: a layer shared by images is walked once.

Walking a layer (`members.entries`: every tar header parsed and checked, about
2.7 µs a member) is the part of a build that depends on the layer alone; the
merge depends on the layers below it too. So a walk's result — the `Raw`
member batches, marshalled in frames as `follow.Stage` stages them, and whether the layer
holds whiteouts — is kept as `<diff ID>.walk<WALK>` in the index directory, and
every later build that has the layer (another image, the layer views, a rebuild
after a bump of the index `FORMAT`, which changes the merge, not the walk)
merges from it instead. Offsets in it are from the layer's own start, so any
save of the layer (another engine, another layout) serves the same walk.

A kept walk is written as a hidden `.part`, `0600`, then renamed; it ends in a
trailer giving its batch and member counts and its payload's length, so a file
cut short (a crash, a full disk) is never trusted: it is walked again and
replaced. It counts against `--cache-size` with the indexes (`trim`).

A save's compressed blob is named by the digest of its compressed bytes, and a
legacy save's layer by its v1 ID (a digest of the layer's chain, and of the
image's config for the top layer), neither of them a diff ID; so a build
records each such layer's diff ID, as the manifest gave it, in
`<digest>.blob1`, and a later save followed as it arrives knows the layer by
its member's name (`follow`).
"""

from __future__ import annotations

import contextlib
import marshal
import os
import struct
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, NoReturn

from ..references import is_image_id
from .members import BadArchive, Raw, components
from .merge import WHITEOUT
from .save import LayerRef
from .walker import Batch

WALK = 1  # the kept walk's own format: bumped when `members.entries` gives other tuples
SUFFIX = f".walk{WALK}"
BLOB = ".blob1"  # a compressed blob's diff ID, as the manifest of a save that held it said
_TRAILER = struct.Struct("<8sQQQ?7x")  # magic, batches, members, payload bytes, holds whiteouts
_MAGIC = b"ifswalk1"
_FRAME = struct.Struct("<I")  # a batch's length, before its marshal bytes


def part_file(directory: Path, prefix: str) -> IO[bytes]:
    """A new hidden `.part` file in `directory` for a build to write and then name: read and written, 0600, made
    with O_EXCL (never through a link), named by the builder's pid so that `trim` knows one it left."""
    return tempfile.NamedTemporaryFile(dir=directory, prefix=prefix, suffix=f".{os.getpid()}.part", delete=False)


def name(diff_id: str) -> str:
    """The kept walk's file name for a layer."""
    return diff_id.removeprefix("sha256:") + SUFFIX


def named_digest(member: str) -> tuple[str, str]:
    """The digest a save's member is named by, and by which layout: ("oci", hex) for `blobs/sha256/<hex>` (of the
    bytes as saved), ("v1", hex) for a legacy save's `<v1 id>/layer.tar`, ("podman", hex) for podman's
    `<diff ID hex>.tar`; ("", "") for any other name."""
    path = member.removeprefix("./")
    if path.startswith("blobs/sha256/"):
        layout, hexes = "oci", path.removeprefix("blobs/sha256/")
    elif path.endswith("/layer.tar"):
        layout, hexes = "v1", path.removesuffix("/layer.tar")
    elif path.endswith(".tar") and "/" not in path:
        layout, hexes = "podman", path.removesuffix(".tar")
    else:
        return "", ""
    return (layout, hexes) if is_image_id(hexes) else ("", "")


def blob_name(member: str) -> str:
    """Where the diff ID of the layer a save's member is gets recorded, for a member named by a digest that is no
    diff ID (OCI's, v1's); "" for any other name."""
    layout, hexes = named_digest(member)
    return hexes + BLOB if layout in ("oci", "v1") else ""


@dataclass
class Kept:
    """A whole walk on disk (kept, or being staged): `walk()` gives its batches again, as often as asked."""

    file: IO[bytes]
    path: Path  # where it was opened (a part file that was kept since is no longer there)
    batches: int
    members: int
    payload: int
    whiteouts: bool

    def walk(self) -> Iterator[list[Raw]]:
        self.file.seek(0)
        counted = 0
        for _ in range(self.batches):
            try:  # `marshal.loads` of a frame: `marshal.load` of a file reads it a few bytes a call
                (length,) = _FRAME.unpack(self.file.read(_FRAME.size))
                if self.file.tell() + length > self.payload:
                    raise ValueError(f"a batch of {length} bytes runs past the walk's end")
                batch = marshal.loads(self.file.read(length))
            except (EOFError, ValueError, TypeError, struct.error) as exc:
                self._damaged(str(exc))
            counted += len(batch)
            yield batch
        if counted != self.members or self.file.tell() != self.payload:
            self._damaged(f"{counted} members, not {self.members}")

    def _damaged(self, why: str) -> NoReturn:
        """Whole in length, not in content (the disk's fault): this build fails, the next walks the layer."""
        with contextlib.suppress(OSError):
            os.unlink(self.path)
        raise BadArchive(f"the kept walk {self.path} is damaged: {why}")

    def close(self) -> None:
        self.file.close()


def open_kept(directory: Path, diff_id: str) -> Kept | None:
    """The layer's kept walk, if there is a whole one (one cut short is removed)."""
    path = directory / name(diff_id)
    try:  # never through a link: the cache directory is the mounting user's, the daemon may be root
        file = os.fdopen(os.open(path, os.O_RDONLY | os.O_NOFOLLOW), "rb")
    except OSError:
        return None
    size = os.fstat(file.fileno()).st_size
    magic, batches, members, payload, whiteouts = (
        _TRAILER.unpack(os.pread(file.fileno(), _TRAILER.size, size - _TRAILER.size)) if size >= _TRAILER.size
        else (b"", 0, 0, -1, False))
    if magic != _MAGIC or payload != size - _TRAILER.size:
        file.close()
        with contextlib.suppress(OSError):
            path.unlink()
        return None
    return Kept(file, path, batches, members, payload, whiteouts)


class Keeper:
    """A walk being written to a hidden part file in `directory`; `finish` makes it whole, `keep` names it."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.file = part_file(directory, ".walk.")
        self.batches = self.members = 0
        self.whiteouts = False

    def add(self, batch: list[Raw]) -> None:
        body = batch.frame if isinstance(batch, Batch) else marshal.dumps(batch)
        self.file.write(_FRAME.pack(len(body)))
        self.file.write(body)
        self.batches += 1
        self.members += len(batch)
        # marshal keeps bytes as they are: a batch whose frame has no `.wh.` has no whiteout, at C speed
        if not self.whiteouts and WHITEOUT in body:
            self.whiteouts = any(WHITEOUT in m[0] and _is_whiteout(m[0]) for m in batch)

    def finish(self) -> Kept:
        """The walk is whole: its trailer written, readable again (`walk`)."""
        payload = self.file.tell()
        self.file.write(_TRAILER.pack(_MAGIC, self.batches, self.members, payload, self.whiteouts))
        self.file.flush()
        return Kept(self.file, Path(self.file.name), self.batches, self.members, payload, self.whiteouts)

    def keep(self, diff_id: str) -> None:
        """Name the whole walk (`finish` first) by the layer's diff ID (once: the first build to finish it keeps it)."""
        with contextlib.suppress(FileNotFoundError):
            os.rename(self.file.name, self.directory / name(diff_id))

    def close(self) -> None:
        """Done with it: the part file goes unless it was kept."""
        self.file.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.file.name)


class Walks:
    """The kept walks one build reads and writes, all closed by `close`; `told` says which layers it walked."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.held: list[Kept | Keeper] = []
        self.told: list[str] = []

    def has(self, diff_id: str) -> bool:
        """Is a walk of the layer kept (whole or not: `kept` tells)?"""
        return (self.directory / name(diff_id)).exists()

    def kept(self, diff_id: str) -> Kept | None:
        """The layer's whole kept walk, held open for this build (a trim may remove its name meanwhile)."""
        kept = open_kept(self.directory, diff_id)
        if kept is not None:
            self.held.append(kept)
            self.told.append(f"layer {diff_id}: merged from its kept walk")
        return kept

    def keeper(self) -> Keeper:
        keeper = Keeper(self.directory)
        self.held.append(keeper)
        return keeper

    def keeping(self, diff_id: str, walk: Callable[[], Iterator[list[Raw]]]) -> Callable[[], Iterator[list[Raw]]]:
        """`walk` for a merge: its first whole pass kept under the layer's diff ID, later passes read from that."""
        self.told.append(f"layer {diff_id}: walked")
        done: list[Kept] = []

        def again() -> Iterator[list[Raw]]:
            if done:
                yield from done[0].walk()
                return
            keeper = self.keeper()
            for batch in walk():
                keeper.add(batch)
                yield batch
            done.append(keeper.finish())
            keeper.keep(diff_id)

        return again

    def remember_blobs(self, layers: list[LayerRef]) -> None:
        """Record the diff ID of each layer whose member's name is no diff ID (a compressed blob's digest, a v1
        ID): a later save followed as it arrives, which names the member long before its manifest says what
        layer it is, then knows the layer by its name."""
        for ref in layers:
            record = blob_name(ref.member) if ref.compression or not ref.member.startswith("blobs/") else ""
            if record and not (self.directory / record).exists():
                with part_file(self.directory, f".{record}.") as out:
                    out.write(ref.diff_id.encode())
                os.rename(out.name, self.directory / record)

    def blob_diff_id(self, member: str) -> str:
        """The diff ID recorded for the layer a save's member is (`remember_blobs`), or ""."""
        record = blob_name(member)
        if not record:
            return ""
        try:
            fd = os.open(self.directory / record, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            return ""
        with os.fdopen(fd, "rb") as text:
            diff_id = text.read(80).decode("ascii", "replace")
        return diff_id if diff_id.startswith("sha256:") and is_image_id(diff_id[7:]) else ""

    def close(self) -> None:
        for held in self.held:
            held.close()


def _is_whiteout(path: bytes) -> bool:
    names = components(path)
    return bool(names) and names[-1].startswith(WHITEOUT)  # type: ignore[index]
