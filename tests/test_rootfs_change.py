"""rootfs/ while the engine changes underneath (SPEC §2, §5, §8): a tag moving to another image mid-walk,
the image removed while a file in it is open, the engine stopped before the first look inside.

What holds: an inode is content (a file or directory opened in one image keeps that image's bytes
whatever the reference later names), a read is never the wrong image's, mixed, short or hung, and
an engine that is down is EIO, never ENOENT or an empty tree.
"""

from __future__ import annotations

import errno
import functools
import os
import random
import re
import socket
import socketserver
import tempfile
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from conftest import Engine, Mount, Proxy, mount_imagefs, mounted, unmount, wait_for

REF = "rfs/moving:1"
FILES = 40
BIG = 4 << 20  # read in pieces: a read that spans the move
MOVED = r"export of rfs/moving:1.*: it holds image\(s\) \w+, not \w+: a tag moved while the engine saved it"


Images = dict[str, dict[str, bytes]]  # each image's files


@functools.cache
def contents(name: str) -> dict[str, bytes]:
    """The files of image `name`: same paths in every image, bytes of their own (random: no two alike)."""
    rng = random.Random(name)
    files = {f"data/f{i:02d}": rng.randbytes(100 + 37 * i) for i in range(FILES)}
    files["big"] = rng.randbytes(BIG)
    return files


def build(engine: Engine, name: str, ref: str) -> dict[str, bytes]:
    files = contents(name)
    with tempfile.TemporaryDirectory(prefix="ifs-rfc-", dir="/tmp") as ctx:
        for path, data in files.items():
            Path(ctx, "tree", path).parent.mkdir(parents=True, exist_ok=True)
            Path(ctx, "tree", path).write_bytes(data)
        Path(ctx, "Dockerfile").write_text("FROM scratch\nCOPY tree /\n")
        engine.docker("build", "-q", "-t", ref, ctx)
    return files


@pytest.fixture(scope="module")
def images() -> Iterator[Callable[[Engine], Images]]:
    """rfs/a:1 and rfs/b:1 on an engine, each as `contents` says, built once per engine; REF names neither."""
    made: dict[Path, Engine] = {}

    def on(engine: Engine) -> Images:
        if engine.root not in made:
            for name in ("a", "b"):
                build(engine, name, f"rfs/{name}:1")
            made[engine.root] = engine
        return {name: contents(name) for name in ("a", "b")}

    yield on
    for engine in made.values():
        for ref in ("rfs/a:1", "rfs/b:1", REF):
            engine.docker("rmi", ref, check=False)


def whose(data: bytes, path: str, images: Images) -> str | None:
    return next((name for name, files in images.items() if files[path] == data), None)


def test_a_tag_moved_mid_walk_never_mixes_the_images(matrix_engine: Engine, images: Callable[[Engine], Images],
                                                     tmp: Path) -> None:
    engine, files = matrix_engine, images(matrix_engine)
    engine.docker("tag", "rfs/a:1", REF)
    with mounted(engine, tmp) as mount:
        rootfs = mount / engine.sample(REF) / "rootfs"
        # Both indexed first (through their own names: the index is per image ID), so what is timed
        # below is the coherence window, not an export.
        for name in ("a", "b"):
            assert (mount / engine.sample(f"rfs/{name}:1") / "rootfs/data/f00").read_bytes() == files[name]["data/f00"]
        _walk_across_moves(engine, rootfs, files)


def _walk_across_moves(engine: Engine, rootfs: Path, images: Images) -> None:
    big = os.open(rootfs / "big", os.O_RDONLY)
    data_dir = os.open(rootfs / "data", os.O_RDONLY | os.O_DIRECTORY)
    try:
        head = os.read(big, 1 << 20)
        wrong: list[str] = []
        stop = threading.Event()
        seen: set[str] = set()
        reader = threading.Thread(target=_walk_until, args=(rootfs, images, stop, seen, wrong))
        reader.start()
        try:
            for flip in ("b", "a", "b"):
                engine.docker("tag", f"rfs/{flip}:1", REF)
                wait_for(lambda flip=flip: whose((rootfs / "data/f07").read_bytes(), "data/f07", images) == flip,
                         timeout=1)  # SPEC §5: within 1 s
        finally:
            stop.set()
            reader.join(60)
        assert not reader.is_alive() and not wrong, wrong[:5]
        assert seen == {"a", "b"}  # the walk did run across the moves
        # What was opened in image a is a's: a file mid-read, and new lookups under a directory of it.
        rest = b"".join(iter(lambda: os.read(big, 1 << 20), b""))
        assert head + rest == images["a"]["big"]
        with open(os.open("f03", os.O_RDONLY, dir_fd=data_dir), "rb") as f:
            assert f.read() == images["a"]["data/f03"]
        assert sorted(os.listdir(data_dir)) == sorted(p.split("/")[1] for p in images["a"] if "/" in p)
    finally:
        os.close(big)
        os.close(data_dir)


def test_a_tag_moved_during_the_first_export_never_mislabels_an_image(
        engine: Engine, images: Callable[[Engine], Images], tmp: Path) -> None:
    """The export of a reference started for image a, and held back until the tag has moved to b: the
    save then holds b, and must never be indexed (or read) as a's; a's own export, by its ID, is."""
    files = images(engine)
    ids = {name: engine.api(f"/images/rfs/{name}:1/json")["Id"].removeprefix("sha256:") for name in files}
    engine.docker("tag", "rfs/a:1", REF)
    proxy = HoldingProxy(engine.sock, tmp / "proxy.sock")
    try:
        with mounted(engine, tmp, "-H", f"unix://{proxy.address}", expect=[MOVED]) as mount:
            with ThreadPoolExecutor(1) as pool:
                first = pool.submit((mount / REF / "rootfs/big").read_bytes)
                wait_for(lambda: proxy.held == 1, timeout=10)
                engine.docker("tag", "rfs/b:1", REF)
                proxy.release.set()
                # Opened as a's: a's bytes, from a's own export by ID once the reference's held b.
                assert first.result(timeout=30) == files["a"]["big"]
            for name, image_id in ids.items():  # each image's tree is its own
                assert (mount / f".imagefs/ids/{image_id}/rootfs/big").read_bytes() == files[name]["big"]
            assert (mount / REF / "rootfs/big").read_bytes() == files["b"]["big"]
    finally:
        proxy.close()


class HoldingProxy(Proxy):
    """A Proxy that holds each export request back until `release` is set, counting them in `held`."""

    def __init__(self, upstream: str, listen: Path) -> None:
        self.release, self.held = threading.Event(), 0
        super().__init__(upstream, listen)

    def _handler(self, *args: Any) -> type[socketserver.BaseRequestHandler]:  # type: ignore[override]
        proxy, base = self, Proxy._handler(*args)

        class Holding(base):  # type: ignore[valid-type,misc]
            def handle(self) -> None:
                head = b""
                for _ in range(100):  # the request line, left in the socket for the proxy to pass on
                    head = self.request.recv(8192, socket.MSG_PEEK)
                    if not head or b"\r\n" in head:
                        break
                if re.match(rb"GET \S*/get[?\s]", head):
                    proxy.held += 1
                    proxy.release.wait(30)
                super().handle()

        return Holding


def _walk_until(rootfs: Path, images: Images, stop: threading.Event, seen: set[str],
                wrong: list[str]) -> None:
    """Read every file of the reference again and again: each read is one image's file, whole, with the
    size its own fstat gives."""
    while not stop.is_set():
        for i in range(FILES):
            path = f"data/f{i:02d}"
            try:
                with open(rootfs / path, "rb") as f:
                    size, data = os.fstat(f.fileno()).st_size, f.read()
            except OSError as exc:
                wrong.append(f"{path}: {exc}")
                continue
            name = whose(data, path, images)
            if name is None or size != len(data):
                wrong.append(f"{path}: {len(data)} bytes (fstat {size}), neither image's")
            else:
                seen.add(name)


def test_rmi_while_a_file_is_open_reads_on_or_fails_with_eio(matrix_engine: Engine, tmp: Path) -> None:
    engine = matrix_engine
    big = build(engine, "c", REF)["big"]  # REF is its one name: rmi removes the image
    ref = engine.sample(REF)
    # podman's image list fails (500, "image not known") while an rmi it is doing is under way
    racing = [r"refresh after events failed: GET \S+/images/json\S*: 500 "] if engine.flavor == "podman" else []
    with mounted(engine, tmp, expect=racing) as mount:
        _read_across_rmi(engine, mount, ref, big)


def _read_across_rmi(engine: Engine, mount: Mount, ref: str, big: bytes) -> None:
    fd = os.open(mount / ref / "rootfs/big", os.O_RDONLY)
    try:
        head = os.read(fd, 1 << 20)
        engine.docker("rmi", ref)
        wait_for(lambda: not (mount / ref).exists(), timeout=2)

        def rest() -> bytes:
            return b"".join(iter(lambda: os.read(fd, 1 << 20), b""))

        with ThreadPoolExecutor(1) as pool:
            try:
                data = head + pool.submit(rest).result(timeout=30)  # never a hang
            except OSError as exc:
                assert exc.errno == errno.EIO
            else:
                assert data == big
    finally:
        os.close(fd)
        engine.docker("rmi", ref, check=False)


def test_an_engine_stopped_before_the_first_look_inside_is_eio(matrix_engine: Engine,
                                                               images: Callable[[Engine], Images], tmp: Path) -> None:
    engine, files = matrix_engine, images(matrix_engine)
    image = engine.sample("rfs/a:1")
    # its socket refuses, or is gone, as the engine's exit is further on
    down = r"(export of \S+ failed|EngineUnreachable): .*(No such file or directory|Connect)"
    m = mount_imagefs(engine, tmp, expect=[r"events stream down", r"engine .*unreachable|Connect", down])
    try:
        assert (m / image).is_dir()  # the image is known; nothing inside it was looked at
        engine.kill(hard=True)  # as a crash would: the test is not about a graceful exit
        for _ in range(2):  # and again: a failure is never remembered
            for look, path in ((os.listdir, "rootfs"), (os.stat, "rootfs/data/f00"), (os.listdir, "layers")):
                with pytest.raises(OSError) as info:
                    look(m / image / path)
                assert info.value.errno == errno.EIO, (path, info.value)
    finally:
        engine.start()  # no-op when it answers
        unmount(m)
    with mounted(engine, tmp) as again:  # the same cache: nothing of the failure was kept
        assert (again / image / "rootfs/data/f00").read_bytes() == files["a"]["data/f00"]
