"""Compressed uploads in several streams one after another (`cat a.gz b.gz`), loaded as dockerd loads them."""

from __future__ import annotations

import bz2
import gzip
import lzma
from pathlib import Path

import pytest
from conftest import Engine, mounted
from test_uploads import sh

COMPRESS = {"gzip": gzip.compress, "bzip2": bz2.compress, "xz": lzma.compress}


@pytest.mark.parametrize("codec", sorted(COMPRESS))
def test_a_save_in_two_compressed_streams_loads(engine: Engine, tmp: Path, codec: str) -> None:
    ref = f"streams/{codec}:1"
    engine.docker("tag", "hello:latest", ref)
    save = engine.save(ref)
    engine.docker("rmi", ref)  # the image stays (hello tags it): the load brings back the tag
    half = len(save) // 2 + 123  # inside a member: neither stream holds a tar of its own
    (tmp / "a").write_bytes(COMPRESS[codec](save[:half]))
    (tmp / "b").write_bytes(COMPRESS[codec](save[half:]))
    try:
        with mounted(engine, tmp) as m:
            record = m.path / ".imagefs/load/two"
            done = sh(f"cat {tmp}/a {tmp}/b > {record}")
            assert done.returncode == 0, done.stderr + record.read_text()
            assert f"Loaded image: {ref}" in record.read_text()
        assert ref in engine.tags()
    finally:
        engine.docker("rmi", ref, check=False)
