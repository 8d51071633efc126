"""Indexing a save while the engine still sends it: layer members parsed as their bytes land in the spool.

The daemon tells the builder, on a pipe, how long the spool is (`LENGTH\\n`, as
it grows), then `end LENGTH\\n` once the export is verified or `broken\\n`.
Reads of bytes not there yet wait for the next line; a read past a cut or
broken export is `BadArchive`, so the build ends with no index, never a partial
one.

Which members are layers is known only from `manifest.json`, the last member of
a legacy save; so every member that starts like a tar is walked as it arrives
and its members staged (marshal batches in a temporary file), and the merge runs
once the save's end is in, in the layer order the manifest gives. A member that
only looked like a layer and is not one costs its walk; one that is a layer and
is broken fails the build only once the manifest says it is a layer.
Compressed layers are inflated at the end (`build._inflate`).
"""

from __future__ import annotations

import marshal
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO

from ..tarcheck import BLOCK, checksum_problem
from .members import SPAN, ZERO, BadArchive, Raw, Window, components, entries, members
from .merge import WHITEOUT

BATCH = 2048
ENDLESS = 1 << 62  # the end of a save whose length is not known yet


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
    """One save member's layer members, as `entries` gave them, or why it is no tar."""

    batches: IO[bytes] | None = None
    whiteouts: bool = False
    problem: str | None = None

    def walk(self) -> Iterator[list[Raw]]:
        if self.problem is not None:
            raise BadArchive(self.problem)
        assert self.batches is not None
        self.batches.seek(0)
        while True:
            try:
                yield marshal.load(self.batches)
            except EOFError:
                return


@dataclass
class Stage:
    """The save's members that look like layer tars, staged by their data's offset in the save."""

    area: Growing
    staged: dict[int, Staged] = field(default_factory=dict)

    def run(self) -> None:
        """Walk the save as it arrives, up to its end-of-archive marker, staging each member that looks like a tar."""
        for m in members(self.area, 0, ENDLESS):
            if m.size >= 2 * BLOCK and _looks_like_tar(bytes(self.area[m.offset : m.offset + BLOCK])):
                self.staged[m.offset] = self._stage(m.offset, m.offset + m.size)

    def _stage(self, start: int, end: int) -> Staged:
        staged = Staged(tempfile.TemporaryFile())  # noqa: SIM115 — read by the merge, closed by `close`
        assert staged.batches is not None
        batch: list[Raw] = []
        try:
            for m in entries(self.area, start, end):
                batch.append(m)
                if WHITEOUT in m[0] and not staged.whiteouts:
                    path = components(m[0])
                    staged.whiteouts = bool(path) and path[-1].startswith(WHITEOUT)  # type: ignore[index]
                if len(batch) == BATCH:
                    marshal.dump(batch, staged.batches)
                    batch = []
            marshal.dump(batch, staged.batches)
        except BadArchive as exc:
            staged.batches.close()
            if self.area.problem is not None or (self.area.final and end > self.area.size):
                raise  # the save itself is cut or broken: no member's problem
            return Staged(problem=str(exc))
        except BaseException:
            staged.batches.close()
            raise
        return staged

    def close(self) -> None:
        for staged in self.staged.values():
            if staged.batches is not None:
                staged.batches.close()


def _looks_like_tar(header: bytes) -> bool:
    return header == ZERO or checksum_problem(header) is None
