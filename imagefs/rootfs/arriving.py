"""Files read while they are still being written: the spool of a running export, a layer being inflated.

A read of bytes not there yet waits for more (`_hear`); a read past the end of
a file that is whole, or of one whose writer gave up, is `BadArchive`, so a walk
of a cut file ends with an error, never with part of its members.
"""

from __future__ import annotations

from typing import IO

from ..tarcheck import BLOCK
from .members import SPAN, BadArchive, Window

ENDLESS = 1 << 62  # the end of a file whose length is not known yet


class Arriving(Window):
    """A file still being written: `len` is what is there now; a read waits for its bytes."""

    what = "the file"  # for the error of a read past its end

    def __init__(self, fd: int, span: int = SPAN) -> None:
        super().__init__(fd, span)
        self.size, self.final = 0, False
        self.problem: str | None = None  # its writer broke: every read is refused

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
            raise BadArchive(f"{self.what} ends at byte {self.size}, before byte {stop}")

    def _hear(self) -> None:
        """Wait for more of the file: `size` grows, or `final` (and `problem`, if it broke) is set."""
        raise NotImplementedError


class Growing(Arriving):
    """A spool still being written, its length told on a pipe (`follow`)."""

    what = "the save"

    def __init__(self, fd: int, lengths: IO[bytes], span: int = SPAN) -> None:
        super().__init__(fd, span)
        self.lengths = lengths

    def _hear(self) -> None:
        line = self.lengths.readline().split()
        if not line or line == [b"broken"]:
            self.final, self.problem = True, "the export broke off" if line else "no word on the export's length"
        else:
            self.final, self.size = line[0] == b"end", max(self.size, int(line[-1]))
