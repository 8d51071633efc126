"""zstd-compressed layers (the containerd image store keeps layers as pulled), inflated by the `zstd` CLI.

No zstd module is in the standard library before Python 3.14, and the `zstd`
command (Debian's package `zstd`) inflates at local-disk speed: the layer's bytes
are spliced from the save into its stdin and its output goes straight to the
side file, so nothing of the layer passes through this process. It reads
concatenated frames and skips skippable ones, as zstd:chunked layers have.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from .members import BadArchive, Window
from .save import LayerRef

CHUNK = 1 << 20


def inflate_zstd(area: Window, ref: LayerRef, target: Path) -> str:
    """Write the layer's tar to `target` (which appears only once whole); its name."""
    zstd = shutil.which("zstd")
    if zstd is None:
        raise BadArchive(f"layer {ref.member} is zstd-compressed and this machine has no zstd command")
    part = target.with_name(f".{target.name}.{os.getpid()}.part")
    try:
        with open(part, "wb") as out, subprocess.Popen([zstd, "-d", "-c", "-q"], stdin=subprocess.PIPE, stdout=out,
                                                       stderr=subprocess.PIPE) as proc:
            assert proc.stdin is not None and proc.stderr is not None
            _feed(area.fd, ref, proc.stdin.fileno())
            proc.stdin.close()
            why = proc.stderr.read().decode(errors="replace").strip()
            if proc.wait() != 0:
                raise BadArchive(f"layer {ref.member} is not the zstd stream it starts as: {why}")
        part.rename(target)
    finally:
        part.unlink(missing_ok=True)
    return target.name


def _feed(fd: int, ref: LayerRef, pipe: int) -> None:
    """The layer's bytes from the save into the pipe by splice(2): from the page cache, never through here."""
    at, end = ref.offset, ref.offset + ref.size
    try:
        while at < end:
            moved = os.splice(fd, pipe, min(CHUNK, end - at), offset_src=at)
            if moved == 0:
                raise BadArchive(f"layer {ref.member} runs past the end of the save")
            at += moved
    except BrokenPipeError:  # zstd stopped reading: its status and message say why
        pass
