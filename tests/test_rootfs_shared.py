"""Layers shared between images are walked once (SPEC §8): each layer's walk is kept by diff ID and merged from.

Three images on one big base layer: the first look inside each builds its index
as its export arrives. A legacy save (Docker 20.10) names its layers by v1 IDs,
known by the diff IDs an earlier build recorded, but the top layer's digests
its image's config: the base image's top layer is walked again as it arrives in
an image on it, and taken from its kept walk by a build once the export is in;
an OCI save (Docker 26) names them by digest, and the base is never walked
again; on the containerd image store (docker26c) the blobs are gzip, known by
the diff ID the first build recorded, and neither inflated nor walked again.
The daemon's log says which walks each build took.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Engine, mounted
from test_rootfs import Walk, _top_dirs_untimed, engine_flattening, mount_walk

from imagefs.rootfs import walks

BASE = "rfs/shared-base:1"
FILES = ("/bin/busybox --install -s /bin && mkdir /data && i=0 && while [ $i -lt 3000 ]; do "
         "echo file $i > /data/f$i; i=$((i+1)); done")
TOPS = {"rfs/shared-b:1": "rm /data/f1 && echo b > /b", "rfs/shared-c:1": "rm -r /data/f2 && echo c > /c"}


@pytest.fixture
def images(matrix_engine: Engine) -> Iterator[dict[str, list[str]]]:
    """The base and the two images on it, with each one's layers' diff IDs."""
    ctx = Path(tempfile.mkdtemp(prefix="ifs-shared-", dir="/tmp"))
    engine = matrix_engine
    try:
        shutil.copy("/bin/busybox", ctx / "busybox")
        (ctx / "Dockerfile").write_text(f'FROM scratch\nCOPY busybox /bin/busybox\n'
                                        f'RUN ["/bin/busybox", "sh", "-c", "{FILES}"]\n')
        engine.docker("build", "-q", "-t", BASE, str(ctx))
        for ref, step in TOPS.items():
            (ctx / "Dockerfile").write_text(f"FROM {BASE}\nRUN {step}\n")
            engine.docker("build", "-q", "-t", ref, str(ctx))
        yield {ref: engine.api(f"/images/{ref}/json")["RootFS"]["Layers"] for ref in (BASE, *TOPS)}
    finally:
        shutil.rmtree(ctx, ignore_errors=True)
        engine.docker("rmi", *TOPS, BASE, check=False)


def walks_told(log: str, top: str) -> dict[str, str]:
    """What the last rootfs build of the image whose top layer is `top` told of each layer's walk."""
    line = [line for line in log.splitlines() if "index of" in line and "(layers)" not in line
            and f"layer {top}:" in line][-1]
    return dict(re.findall(r"layer (sha256:[0-9a-f]{64}): ([a-z ]+)", line))


def flattened_alike(engine: Engine, got: Walk, expected: Walk) -> bool:
    if engine.flavor == "docker26c":  # its container export dates the top directories (see test_rootfs)
        got, expected = _top_dirs_untimed(got), _top_dirs_untimed(expected)
    return got == expected


@pytest.mark.parametrize("matrix_engine", ["docker20", "docker26", "docker26c"], indirect=True)
def test_a_base_layer_is_walked_once(matrix_engine: Engine, images: dict[str, list[str]], tmp: Path) -> None:
    engine, (bottom, files) = matrix_engine, images[BASE]
    (b, c), (top_b, top_c) = TOPS, (images[ref][-1] for ref in TOPS)
    kept, arrived, walked = "merged from its kept walk", "walked as it arrived", "walked"
    with mounted(engine, tmp) as m:
        assert "data" in os.listdir(m / BASE / "rootfs")  # walks the base, as it arrives, and keeps it
        assert "b" in os.listdir(m / b / "rootfs")
        # An OCI save names its layers by digest (a compressed one, docker26c's, by the one recorded for it);
        # a legacy one by v1 IDs, the top layer's (here the base image's own) digesting the image's config.
        shared = kept if engine.flavor != "docker20" else arrived
        assert walks_told(m.log_text(), top_b) == {bottom: kept, files: shared, top_b: arrived}
        (m / c / "export.tar").read_bytes()  # the export in first: the build knows the layers before walking
        assert "c" in os.listdir(m / c / "rootfs")
        assert walks_told(m.log_text(), top_c) == {bottom: kept, files: kept, top_c: walked}
        assert flattened_alike(engine, mount_walk(m / c / "rootfs")[0], engine_flattening(engine, c)[0])
    kept_files = m.cache_dir / "rootfs" / walks.name(files)
    os.truncate(kept_files, kept_files.stat().st_size - 100)  # cut: never used
    for index in (m.cache_dir / "rootfs").glob("*.sqlite"):
        index.unlink()
    with mounted(engine, tmp) as m:
        assert sorted(os.listdir(m / c / "rootfs/data"))[:3] == ["f0", "f1", "f10"]
        assert walks_told(m.log_text(), top_c) == {bottom: kept, files: walked, top_c: kept}
        assert flattened_alike(engine, mount_walk(m / c / "rootfs")[0], engine_flattening(engine, c)[0])
