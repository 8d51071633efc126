"""A compressed layer inflated into a side file, as the save brings its bytes or from a whole save.

The containerd image store saves layers as they were pulled, gzip or zstd.
Following such a save (`follow`), the layer's bytes are inflated as they land in
the spool — gzip by `zlib`, member after member as gzip readers do, zstd by the
`zstd -d` process fed as they arrive, its output straight into the side file —
and the walk reads the side file as it grows: a read of inflated bytes not there
yet feeds the inflater more of the save, waiting for the spool where it must. A
stream that is cut or is not what its magic says is `BadArchive` for that
member, and so is anything but another gzip member after one: zeros too, which
Go's gzip reader, the one the engines unpack layers with, refuses. The side
file is named by the layer's diff ID once the manifest gives it (`side_name`);
`build._inflate` inflates a whole save's layer the same way.

No zstd module is in the standard library before Python 3.14, and the `zstd`
command (Debian's package `zstd`, which `scripts/setup.sh` installs) inflates at
local-disk speed; it reads concatenated frames and skips skippable ones, as
zstd:chunked layers have.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import subprocess
import zlib
from pathlib import Path
from typing import IO

from .arriving import Arriving
from .members import BadArchive, Window

CHUNK = 1 << 20  # bytes of the save fed to the inflater at once
OUT = 16 << 20  # most bytes one gzip step inflates (a layer of zeros inflates a thousandfold)


def side_name(diff_id: str) -> str:
    """The inflated tar of a compressed layer, beside the indexes: one per diff ID, shared by every image."""
    return diff_id.removeprefix("sha256:") + ".tar"


def regular(path: Path) -> bool:
    """Is an inflated tar there? A link is not one (it is inflated again, in its place)."""
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


class Inflating(Arriving):
    """The tar of the compressed layer in `area[start:end]` (a save still arriving, or a whole one), as it is
    inflated into `side` (opened for reading and writing)."""

    def __init__(self, area: Window, start: int, end: int, member: str, side: IO[bytes]) -> None:
        super().__init__(side.fileno())
        self.what = f"layer {member}, inflated,"
        self.member, self.source, self.at, self.end, self.side = member, area, start, end, side

    def finish(self) -> None:
        """Inflate the rest (past the tar's end marker): the side file whole."""
        while not self.final:
            self._hear()
        if self.problem is not None:
            raise BadArchive(self.problem)

    def close(self) -> None:
        """Stop inflating (the side file is its owner's)."""

    def _input(self) -> bytes:
        """The next bytes of the compressed layer; b"" past its end."""
        if self.at >= self.end:
            return b""
        data = self.source.ahead(self.at, min(self.at + CHUNK, self.end))[: self.end - self.at]
        self.at += len(data)
        return data


class Gunzip(Inflating):
    def __init__(self, area: Window, start: int, end: int, member: str, side: IO[bytes]) -> None:
        super().__init__(area, start, end, member, side)
        self.inflater = zlib.decompressobj(wbits=31)

    def _hear(self) -> None:
        if self.inflater.eof:  # a gzip member ended: gzip readers go on to the next (eStargz writes one a file)
            data = self.inflater.unused_data or self._input()
            if not data:
                self.final = True
                return
            self.inflater = zlib.decompressobj(wbits=31)  # zeros or junk there fail its header check
        else:
            data = self.inflater.unconsumed_tail or self._input()
        try:
            out = self.inflater.decompress(data, OUT) if data else self.inflater.flush()
        except zlib.error as exc:
            self.final, self.problem = True, f"layer {self.member} is not the gzip stream it starts as: {exc}"
            return
        self.side.write(out)
        self.side.flush()
        self.size += len(out)
        if not data:
            self.final = True
            if not self.inflater.eof:
                self.problem = f"layer {self.member} is a gzip stream cut short"


class Unzstd(Inflating):
    """Fed to `zstd -d`, its output into `side`."""

    def __init__(self, area: Window, start: int, end: int, member: str, side: IO[bytes]) -> None:
        super().__init__(area, start, end, member, side)
        zstd = shutil.which("zstd")
        if zstd is None:
            raise BadArchive(f"layer {member} is zstd-compressed and this machine has no zstd command")
        self.proc = subprocess.Popen([zstd, "-d", "-c", "-q"], stdin=subprocess.PIPE, stdout=side,
                                     stderr=subprocess.PIPE)

    def _hear(self) -> None:
        assert self.proc.stdin is not None and self.proc.stderr is not None
        if self.at < self.end:
            data = self._input()
            try:
                self.proc.stdin.write(data)
                self.proc.stdin.flush()
            except BrokenPipeError:  # zstd stopped reading: its status and message say why
                self.at = self.end
        else:
            with contextlib.suppress(BrokenPipeError):
                self.proc.stdin.close()
            why = self.proc.stderr.read().decode(errors="replace").strip()
            self.final = True
            if self.proc.wait() != 0:
                self.problem = f"layer {self.member} is not the zstd stream it starts as: {why}"
        self.size = os.fstat(self.fd).st_size

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        for pipe in (self.proc.stdin, self.proc.stderr):
            if pipe is not None:
                with contextlib.suppress(BrokenPipeError):
                    pipe.close()
        self.proc.wait()


INFLATERS: dict[str, type[Inflating]] = {"gzip": Gunzip, "zstd": Unzstd}  # by `LayerRef.compression`
