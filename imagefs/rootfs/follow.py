"""Indexing a save while the engine still sends it: layer members parsed as their bytes land in the spool.

The daemon tells the builder, on a pipe, how long the spool is (`LENGTH\\n`, as
it grows), then `end LENGTH\\n` once the export is verified or `broken\\n`.
Reads of bytes not there yet wait for the next line; a read past a cut or
broken export is `BadArchive`, so the build ends with no index, never a partial
one.

Which members are layers is known only from `manifest.json`, the last member of
a legacy save; so every member that starts like a tar is walked as it arrives
and its members staged (marshal batches, as `walks` keeps them), and the merge
runs once the save's end is in, in the layer order the manifest gives; each
staged layer's walk is then kept under its diff ID. A member that only looked
like a layer and is not one costs its walk; one that is a layer and is broken
fails the build only once the manifest says it is a layer. A member that starts
as gzip or zstd is inflated into a side file as it arrives and that walked as
it grows (`inflating`); the side file is named by the layer's diff ID at the end.

A layer walked before is skipped only where the member's name tells which layer
it is: OCI `blobs/sha256/<diff ID>` (an uncompressed layer) and podman's
`<diff ID>.tar` with a kept walk; a legacy save's `<v1 id>/layer.tar` whose v1
ID an earlier build recorded the diff ID of (`walks`), with a kept walk; and a
compressed blob whose digest was so recorded, with its inflated tar and walk
kept (neither inflated nor walked again). Any other layer is walked as it
arrives even when a kept walk would have served, since the manifest that would
say so comes last: the first save of a layer, and in a legacy save the image's
top layer, whose v1 ID digests the image's config too.
"""

from __future__ import annotations

import contextlib
import itertools
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from ..tarcheck import BLOCK, checksum_problem
from .arriving import ENDLESS, Growing
from .inflating import INFLATERS, Inflating, regular, side_name
from .members import ZERO, BadArchive, Member, Raw, entries, members
from .save import ZSTD, compression
from .walker import BATCH
from .walks import Keeper, Kept, Walks, named_digest, part_file


@dataclass
class Staged:
    """One save member's layer members, as `entries` gave them (staged here, or a kept walk), or why it is no tar."""

    kept: Kept | None = None
    keeper: Keeper | None = None  # it was staged here: what names the walk once the layer's diff ID is known
    problem: str | None = None
    side: IO[bytes] | None = None  # a compressed member's tar, inflated as it arrived
    diff_id: str = ""  # the layer whose kept walk it is, as the member's name said

    @property
    def whiteouts(self) -> bool:
        return self.kept is not None and self.kept.whiteouts

    def walk(self) -> Iterator[list[Raw]]:
        if self.problem is not None:
            raise BadArchive(self.problem)
        assert self.kept is not None
        return self.kept.walk()

    def name_side(self, directory: Path, diff_id: str) -> str:
        """The inflated tar, named by the layer's diff ID (unless another build named its own already)."""
        assert self.side is not None
        name = side_name(diff_id)
        if not regular(directory / name):
            os.rename(self.side.name, directory / name)
        return name


@dataclass
class Stage:
    """The save's members that look like layer tars, staged by their data's offset in the save."""

    area: Growing
    walks: Walks
    staged: dict[int, Staged] = field(default_factory=dict)

    def run(self) -> None:
        """Walk the save as it arrives, up to its end-of-archive marker, staging each member that looks like a tar
        (or a compressed one) and whose name gives no diff ID with a kept walk."""
        for m in members(self.area, 0, ENDLESS):
            head = bytes(self.area[m.offset : m.offset + BLOCK]) if m.size >= len(ZSTD) else b""
            if codec := compression(head):
                if not self._inflated_before(m.path):  # else `build._walk_layer` takes the tar and the walk kept
                    self.staged[m.offset] = self._inflated(m, INFLATERS[codec])
            elif m.size >= 2 * BLOCK and _looks_like_tar(head):
                diff_id = _named_diff_id(m.path) or self.walks.blob_diff_id(m.path.decode("ascii", "replace"))
                kept = self.walks.kept(diff_id) if diff_id else None
                self.staged[m.offset] = Staged(kept, diff_id=diff_id) if kept else self._stage(
                    entries(self.area, m.offset, m.offset + m.size), m)

    def _inflated_before(self, member: bytes) -> bool:
        """Is this compressed member a layer whose tar was inflated and walked before (`walks.remember_blobs`)?"""
        diff_id = self.walks.blob_diff_id(member.decode("ascii", "replace"))
        return bool(diff_id) and regular(self.walks.directory / side_name(diff_id)) and self.walks.has(diff_id)

    def _inflated(self, m: Member, how: type[Inflating]) -> Staged:
        side = part_file(self.walks.directory, ".inflated.")
        try:
            inflating = how(self.area, m.offset, m.offset + m.size, m.path.decode(errors="replace"), side)
        except BadArchive as exc:
            staged = Staged(problem=str(exc))
        else:
            try:
                staged = self._stage(entries(inflating, 0, ENDLESS), m, inflating.finish)
            finally:
                inflating.close()
        staged.side = side
        return staged

    def _stage(self, walked: Iterator[Raw], m: Member, then: Callable[[], None] | None = None) -> Staged:
        keeper = self.walks.keeper()
        try:
            while batch := list(itertools.islice(walked, BATCH)):
                keeper.add(batch)
            if then is not None:
                then()
        except BadArchive as exc:
            if self.area.problem is not None or (self.area.final and m.offset + m.size > self.area.size):
                raise  # the save itself is cut or broken: no member's problem
            return Staged(problem=str(exc))
        return Staged(keeper.finish(), keeper)

    def close(self) -> None:
        """The inflated files no layer took go."""
        for staged in self.staged.values():
            if staged.side is not None:
                staged.side.close()
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(staged.side.name)


def _named_diff_id(path: bytes) -> str:
    """The diff ID a member's name gives, where the layout names layers by it: OCI `blobs/sha256/<hex>` (the
    digest of the bytes as saved: the diff ID only of an uncompressed layer, and the caller saw a tar header)
    and podman's `<hex>.tar`."""
    layout, hexes = named_digest(path.decode("ascii", "replace"))
    return f"sha256:{hexes}" if layout in ("oci", "podman") else ""


def _looks_like_tar(header: bytes) -> bool:
    return header == ZERO or checksum_problem(header) is None
