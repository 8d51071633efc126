"""Indexing a save while the engine still sends it: layer members parsed as their bytes land in the spool.

The daemon tells the builder, on a pipe, how long the spool is (`LENGTH\\n`, as
it grows), then `end LENGTH\\n` once the export is verified or `broken\\n`.
Reads of bytes not there yet wait for the next line; a read past a cut or
broken export is `BadArchive`, so the build ends with no index, never a partial
one.

Which members are layers is known only from `manifest.json`, the last member of
a legacy save; so every member that starts like a tar is walked as it arrives
and its members staged (marshal batches, as `walks` keeps them), and the merge runs
once the save's end is in, in the layer order the manifest gives; a staged
layer's walk is then kept under its diff ID. A member is not walked again when
its name gives its diff ID and that layer's walk is kept: OCI
`blobs/sha256/<diff ID>` (uncompressed layers) and podman's `<diff ID>.tar`.
A legacy save's `<v1 id>/layer.tar` names no diff ID, and neither does a
compressed blob's digest, so those are walked as they arrive even when a kept
walk would have served (the manifest naming them comes last). A member that
only looked like a layer and is not one costs its walk; one that is a layer and
is broken fails the build only once the manifest says it is a layer.
Compressed layers are inflated at the end (`build._inflate`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO

from ..tarcheck import BLOCK, checksum_problem
from .members import SPAN, ZERO, BadArchive, Raw, Window, entries, members
from .walks import Keeper, Kept, Walks

BATCH = 2048
ENDLESS = 1 << 62  # the end of a save whose length is not known yet
HEX = frozenset("0123456789abcdef")


class Growing(Window):
    """A spool still being written: `len` is what is there now; a read waits for its bytes."""

    def __init__(self, fd: int, lengths: IO[bytes], span: int = SPAN) -> None:
        super().__init__(fd, span)
        self.size, self.final, self.lengths = 0, False, lengths
        self.problem: str | None = None  # the export broke: every read is refused

    def __getitem__(self, where: slice) -> bytes:
        self._wait(where.stop)
        return super().__getitem__(where)

    def ahead(self, start: int, stop: int) -> bytes:
        """What is there up to `stop`, once a header's worth is."""
        self._wait(start + BLOCK)
        return super().__getitem__(slice(start, min(stop, max(self.size, start + BLOCK))))

    def _wait(self, stop: int) -> None:
        while stop > self.size and not self.final:
            self._hear()
        if self.problem is not None:
            raise BadArchive(self.problem)
        if stop > self.size and stop != ENDLESS:
            raise BadArchive(f"the save ends at byte {self.size}, before byte {stop}")

    def _hear(self) -> None:
        line = self.lengths.readline().split()
        if not line or line == [b"broken"]:
            self.final, self.problem = True, "the export broke off" if line else "no word on the export's length"
        else:
            self.final, self.size = line[0] == b"end", max(self.size, int(line[-1]))


@dataclass
class Staged:
    """One save member's layer members, as `entries` gave them (staged here, or a kept walk), or why it is no tar."""

    kept: Kept | None = None
    keeper: Keeper | None = None  # it was staged here: what names the walk once the layer's diff ID is known
    problem: str | None = None

    @property
    def whiteouts(self) -> bool:
        return self.kept is not None and self.kept.whiteouts

    def walk(self) -> Iterator[list[Raw]]:
        if self.problem is not None:
            raise BadArchive(self.problem)
        assert self.kept is not None
        return self.kept.walk()


@dataclass
class Stage:
    """The save's members that look like layer tars, staged by their data's offset in the save."""

    area: Growing
    walks: Walks
    staged: dict[int, Staged] = field(default_factory=dict)

    def run(self) -> None:
        """Walk the save as it arrives, up to its end-of-archive marker, staging each member that looks like a tar
        and whose name gives no diff ID with a kept walk."""
        for m in members(self.area, 0, ENDLESS):
            if m.size >= 2 * BLOCK and _looks_like_tar(bytes(self.area[m.offset : m.offset + BLOCK])):
                diff_id = _named_diff_id(m.path)
                kept = self.walks.kept(diff_id) if diff_id else None
                self.staged[m.offset] = Staged(kept) if kept else self._stage(m.offset, m.offset + m.size)

    def _stage(self, start: int, end: int) -> Staged:
        keeper = self.walks.keeper()
        batch: list[Raw] = []
        try:
            for m in entries(self.area, start, end):
                batch.append(m)
                if len(batch) == BATCH:
                    keeper.add(batch)
                    batch = []
            keeper.add(batch)
        except BadArchive as exc:
            if self.area.problem is not None or (self.area.final and end > self.area.size):
                raise  # the save itself is cut or broken: no member's problem
            return Staged(problem=str(exc))
        return Staged(keeper.finish(), keeper)


def _named_diff_id(path: bytes) -> str:
    """The diff ID a member's name gives, where the layout names layers by it: OCI `blobs/sha256/<hex>` (the
    digest of the bytes as saved: the diff ID only of an uncompressed layer, and the caller saw a tar header)
    and podman's `<hex>.tar`."""
    name = path.decode("ascii", "replace").removeprefix("./")
    if name.startswith("blobs/sha256/"):
        hexes = name.removeprefix("blobs/sha256/")
    elif "/" not in name and name.endswith(".tar"):
        hexes = name.removesuffix(".tar")
    else:
        return ""
    if len(hexes) == 64 and HEX.issuperset(hexes):
        return f"sha256:{hexes}"
    return ""


def _looks_like_tar(header: bytes) -> bool:
    return header == ZERO or checksum_problem(header) is None
