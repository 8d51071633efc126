"""Never a wrong byte while names move: a tag moved in a loop while readers cat, tar and parse (SPEC §2).

The engine holds a few thousand references, so that each refresh of the image list
takes long enough to widen the window between a move and the kernel hearing of
it; half of the run is on a machine loaded by CPU burners. Every read that exits 0
must be a whole export or document of one of the two images.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Engine, _new_engine, mounted, pretty

REF = "race/app:1"
MANY = 2000
SECONDS = 8.0  # per phase: idle, then loaded


@pytest.fixture(scope="module")
def race_engine() -> Iterator[tuple[Engine, dict[str, bytes]]]:
    """An engine of its own: two images A and B, MANY more references, and the export of REF on each."""
    for engine in _new_engine("ifs-race-", samples=False):
        ids = {}
        with tempfile.TemporaryDirectory(prefix="ifs-race-ctx-") as ctx:
            for name, size in (("a", 300_000), ("b", 700_000)):
                Path(ctx, "data").write_bytes(os.urandom(size))
                Path(ctx, "Dockerfile").write_text(f"FROM scratch\nCOPY data /{name}.bin\n")
                engine.docker("build", "-q", "-t", f"race/{name}:1", ctx)
                ids[name] = engine.docker("image", "inspect", "-f", "{{.Id}}", f"race/{name}:1").stdout.strip()
        _load_many_tags(engine, "race/a:1", MANY)
        exports = {}
        for name in ("a", "b"):
            engine.docker("tag", f"race/{name}:1", REF)
            exports[ids[name].removeprefix("sha256:")] = engine.save(REF)
        yield engine, exports


def _load_many_tags(engine: Engine, source: str, count: int) -> None:
    """`docker load` of the source's export with `count` tags in its manifest: seconds, not minutes."""
    out = io.BytesIO()
    with tarfile.open(fileobj=io.BytesIO(engine.save(source))) as archive, tarfile.open(fileobj=out, mode="w") as new:
        for member in archive.getmembers():
            data = archive.extractfile(member).read() if member.isfile() else None  # type: ignore[union-attr]
            if member.name == "manifest.json":
                manifest = json.loads(data or b"")
                manifest[0]["RepoTags"] = [f"many/t{i % 40}:{i}" for i in range(count)]
                data = json.dumps(manifest).encode()
                member.size = len(data)
            elif member.name == "repositories":
                continue
            new.addfile(member, io.BytesIO(data) if data is not None else None)
    with tempfile.NamedTemporaryFile(suffix=".tar") as f:
        f.write(out.getvalue())
        f.flush()
        engine.docker("load", "-q", "-i", f.name)


class Checker:
    def __init__(self, exports: dict[str, bytes]) -> None:
        self.exports = exports
        self.ids = set(exports)
        self.ok = {"export": 0, "inspect": 0, "tar": 0}
        self.wrong: list[str] = []
        self.lock = threading.Lock()

    def export(self, data: bytes, how: str) -> None:
        matches = [i for i, e in self.exports.items() if e == data]
        self._count("export", bool(matches), f"{how}: {len(data)} bytes, neither image's export")

    def inspect(self, data: bytes, how: str) -> None:
        try:
            doc = json.loads(data)
            whole = pretty(doc) == data and doc["Id"].removeprefix("sha256:") in self.ids
        except (ValueError, KeyError, AttributeError):
            whole = False
        self._count("inspect", whole, f"{how}: {len(data)} bytes of inspect not whole: {data[-40:]!r}")

    def _count(self, kind: str, right: bool, problem: str) -> None:
        with self.lock:
            if right:
                self.ok[kind] += 1
            else:
                self.wrong.append(problem)


def _retag(engine: Engine, ids: list[str], stop: threading.Event) -> int:
    moves = 0
    while not stop.is_set():
        image = ids[moves % 2]
        status, body = engine.raw("POST", f"/images/{image}/tag?repo=race/app&tag=1")
        assert status == 201, body
        moves += 1
        time.sleep(0.01)
    return moves


def _reader(mnt: Path, kind: str, check: Checker, stop: threading.Event, scratch: Path) -> None:
    path = mnt / REF
    while not stop.is_set():
        if kind == "tar":
            out = scratch / "b.tar"
            done = subprocess.run(["tar", "-cf", str(out), "-C", str(mnt), REF], capture_output=True, timeout=60)
            if done.returncode == 0:
                with tarfile.open(out) as tar:
                    for name, verify in (("export.tar", check.export), ("inspect", check.inspect)):
                        member = tar.extractfile(f"{REF}/{name}")
                        verify(member.read() if member else b"", f"tar {name}")
                check._count("tar", True, "")
            continue
        name = "export.tar" if kind == "export" else "inspect"
        done = subprocess.run(["cat", str(path / name)], capture_output=True, timeout=60)
        if done.returncode == 0:
            (check.export if kind == "export" else check.inspect)(done.stdout, f"cat {name}")


def _burners(n: int) -> list[subprocess.Popen[bytes]]:
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]


def test_every_read_during_a_retag_loop_is_whole(race_engine: tuple[Engine, dict[str, bytes]], tmp: Path) -> None:
    engine, exports = race_engine
    check = Checker(exports)
    expect = [r"export of race/app:1 failed: .*a tag moved while the engine saved it",
              # tar -c of the image directory goes into rootfs/ too, whose index needs the export
              r"(open|getattr|opendir|lookup|readdir): ExportMoved: .*a tag moved",
              r"export of race/app:1: .*a tag moved while the engine saved it; exporting image \w+ by its ID instead"]
    with mounted(engine, tmp, expect=expect) as m:
        for loaded in (False, True):
            burners = _burners(2) if loaded else []
            stop = threading.Event()
            threads = [threading.Thread(target=_reader, args=(m.path, kind, check, stop, tmp / f"s{i}"))
                       for i, kind in enumerate(["export", "export", "inspect", "inspect", "tar"])]
            for i in range(len(threads)):
                (tmp / f"s{i}").mkdir(exist_ok=True)
            for t in threads:
                t.start()
            mover = threading.Thread(target=_retag, args=(engine, sorted(exports), stop))
            mover.start()
            time.sleep(SECONDS)
            stop.set()
            for t in [mover, *threads]:
                t.join(120)
            for b in burners:
                b.kill()
                b.wait()
    assert check.wrong == [], f"{len(check.wrong)} wrong reads exited 0, e.g. {check.wrong[:5]}"
    assert check.ok["export"] > 10 and check.ok["inspect"] > 10 and check.ok["tar"] > 2, check.ok
