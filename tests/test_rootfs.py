"""rootfs/ against the engine's own flattening: a created container's export, less what the engine adds.

The image is built here with layers that delete files, replace directories with
files and files with directories, recreate directories, hardlink (in a layer and
across layers), symlink (absolute, relative, dangling), chown, chmod, setuid,
`touch -d`, a fifo, a device node, and names with spaces and non-ASCII.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import re
import shutil
import stat
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from conftest import Engine, Mount, Proxy, mounted, wait_for
from rootfs_tars import M, compressed, layer, oci_archive

from imagefs.rootfs.save import GZIP, ZSTD

REF = "rfs/tricky:1"
MAGIC = {"gzip": GZIP, "zstd": ZSTD}
STEP1 = (
    "/bin/busybox --install -s /bin && mkdir -p /a/b /d1 /keep /opq /dirToFile && echo x > /a/b/f && "
    "echo y > /a/g && echo z > /d1/file && echo h > /hl1 && ln /hl1 /hl2 && ln -s /a/g /abs && ln -s a/g /rel && "
    "mkfifo /fifo && echo sp > '/name with spaces' && echo u > /ünïcødé && echo o1 > /opq/old1 && "
    "echo o2 > /opq/old2 && echo repl > /fileToDir && echo q > /dirToFile/inner && "
    "touch -d '2001-02-03 04:05:06' /a/g && chown 1234:5678 /a/b/f && chmod 0640 /a/b/f && echo s > /suid && "
    "chmod 4755 /suid && mknod /null0 c 1 3"
)
STEP2 = (
    "rm /a/g && rm -rf /d1 && rm /fileToDir && mkdir /fileToDir && echo new > /fileToDir/n && "
    "rm -rf /dirToFile && echo file > /dirToFile && rm -rf /opq && mkdir /opq && echo n > /opq/new && "
    "chmod 0600 /hl1 && ln -s /nonexistent /dangling && echo changed > /keep/c && ln /a/b/f /crosslink && "
    "touch -d '1999-12-31 23:59:59' /keep"
)
STEP3 = "rm /a/b/f /hl2 && echo later > /later && chown -h 7:8 /rel && mkdir -p /etc && echo img > /etc/own"
DOCKERFILE = (f'FROM scratch\nCOPY busybox /bin/busybox\nRUN ["/bin/busybox", "sh", "-c", {json.dumps(STEP1)}]\n'
              f"RUN {STEP2}\nRUN {STEP3}\n")
# What the engine adds to every container (and /etc's mtime, which it touches).
ADDED = frozenset({".dockerenv", "etc/hostname", "etc/hosts", "etc/resolv.conf", "etc/mtab", "dev", "proc", "sys"})


@pytest.fixture(scope="module")
def built() -> Iterator[Callable[[Engine], str]]:
    """Build the image once per engine (as that engine spells its reference), removed after the module."""
    refs: dict[Path, tuple[Engine, str]] = {}

    def build(engine: Engine) -> str:
        if engine.root not in refs:
            ctx = Path(tempfile.mkdtemp(prefix="ifs-rfs-", dir="/tmp"))
            try:
                shutil.copy("/bin/busybox", ctx / "busybox")
                (ctx / "Dockerfile").write_text(DOCKERFILE)
                if engine.flavor == "podman":  # its builds may not mknod unless told (podman 4.3)
                    engine.cli("build", "--cap-add", "MKNOD", "-q", "-t", REF, str(ctx))
                else:
                    engine.docker("build", "-q", "-t", REF, str(ctx))
            finally:
                shutil.rmtree(ctx, ignore_errors=True)
            refs[engine.root] = (engine, engine.sample(REF))
        return refs[engine.root][1]

    yield build
    for engine, ref in refs.values():
        engine.docker("rmi", ref, check=False)


@pytest.fixture
def tricky(engine: Engine, built: Callable[[Engine], str]) -> str:
    return built(engine)


@pytest.fixture
def on_every_engine(matrix_engine: Engine, built: Callable[[Engine], str], tmp: Path) -> Iterator[OnEngine]:
    """The image on each engine of the matrix, and a mount of that engine."""
    ref = built(matrix_engine)
    with mounted(matrix_engine, tmp) as m:
        yield OnEngine(matrix_engine, ref, m)


@dataclass(frozen=True)
class OnEngine:
    engine: Engine
    ref: str
    mount: Mount


Walk = dict[str, tuple[Any, ...]]


def engine_flattening(engine: Engine, ref: str) -> tuple[Walk, set[frozenset[str]]]:
    """A created container's export (never started), as (type, mode, uid, gid, size, mtime, link, hash)."""
    cid = engine.docker("create", ref, "/x").stdout.strip()
    try:
        status, body = engine.raw("GET", f"/containers/{cid}/export", timeout=120)
        assert status == 200
    finally:
        engine.docker("rm", cid)
    walk: Walk = {}
    links: dict[str, set[str]] = {}
    with tarfile.open(fileobj=io.BytesIO(body)) as tar:
        for m in tar:
            path = m.name.strip("/").removeprefix("./")
            if not path or path in ADDED or path.split("/")[0] in ADDED or path == "etc":
                continue
            if m.islnk():
                target = m.linkname.strip("/")
                walk[path] = walk[target]
                links.setdefault(target, {target}).add(path)
                continue
            kind = "dir" if m.isdir() else "link" if m.issym() else "fifo" if m.isfifo() else \
                "chr" if m.ischr() else "file"
            data = tar.extractfile(m).read() if m.isfile() else b""  # type: ignore[union-attr]
            walk[path] = (kind, m.mode & 0o7777 if kind != "link" else 0o777, m.uid, m.gid,
                          m.size if kind == "file" else 0, int(m.mtime), m.linkname if kind == "link" else "",
                          hashlib.sha256(data).hexdigest() if kind == "file" else "",
                          os.makedev(m.devmajor, m.devminor) if kind == "chr" else 0)
    return walk, {frozenset(group) for group in links.values()}


def _raise(exc: OSError) -> None:
    raise exc


def mount_walk(root: Path, drop: frozenset[str] = frozenset()) -> tuple[Walk, set[frozenset[str]], dict[str, int]]:
    """The tree under `root`, less /etc itself (the engine touches it) and the paths under `drop`."""
    walk: Walk = {}
    by_ino: dict[int, set[str]] = {}
    nlinks: dict[str, int] = {}
    for dirpath, dirnames, filenames in os.walk(root, onerror=_raise):  # an EIO is never an empty tree
        for name in dirnames + filenames:
            full = Path(dirpath, name)
            path = str(full.relative_to(root))
            if path in drop or path.split("/")[0] in drop or path == "etc":
                continue
            s = full.lstat()
            kind = {stat.S_IFDIR: "dir", stat.S_IFLNK: "link", stat.S_IFIFO: "fifo", stat.S_IFCHR: "chr",
                    stat.S_IFREG: "file"}[stat.S_IFMT(s.st_mode)]
            data = full.read_bytes() if kind == "file" else b""
            walk[path] = (kind, stat.S_IMODE(s.st_mode), s.st_uid, s.st_gid, s.st_size if kind == "file" else 0,
                          int(s.st_mtime), os.readlink(full) if kind == "link" else "",
                          hashlib.sha256(data).hexdigest() if kind == "file" else "", s.st_rdev)
            if kind == "file":
                by_ino.setdefault(s.st_ino, set()).add(path)
                nlinks[path] = s.st_nlink
    return walk, {frozenset(g) for g in by_ino.values() if len(g) > 1}, nlinks


def test_rootfs_equals_the_engines_flattening(on_every_engine: OnEngine) -> None:
    engine, tricky, mount = on_every_engine.engine, on_every_engine.ref, on_every_engine.mount
    expected, expected_links = engine_flattening(engine, tricky)
    # podman's builds leave the engine's own entries in the image's layers
    got, links, nlinks = mount_walk(mount / tricky / "rootfs", ADDED if engine.flavor == "podman" else frozenset())
    if engine.flavor == "docker26c":
        # Measured: on the containerd image store the container's export carries the time of its
        # creation as the mtime of every top-level directory, whatever its layers say; the layers'
        # own times (STEP2's `touch -d` of /keep) are checked below instead.
        got, expected = (_top_dirs_untimed(w) for w in (got, expected))
    assert got == expected
    assert (mount / tricky / "rootfs/keep").stat().st_mtime == 946684799
    assert links == expected_links
    assert all(n == next((len(g) for g in links if p in g), 1) for p, n in nlinks.items())
    assert (mount / tricky / "rootfs/etc/own").read_text() == "img\n"
    # what a shell sees: no `.wh.` name, links verbatim, never followed on the host
    assert not any(".wh." in p for p in got)
    assert os.readlink(mount / tricky / "rootfs/abs") == "/a/g"
    assert not (mount / tricky / "rootfs/dangling").exists()


def _top_dirs_untimed(walk: Walk) -> Walk:
    return {p: (*v[:5], 0, *v[6:]) if v[0] == "dir" and "/" not in p else v for p, v in walk.items()}


def saves(engine: Engine, since: float) -> int:
    """The engine's own count of the saves since then."""
    if engine.flavor != "podman":
        return len(engine.events(since, "save"))
    # podman 4.3 logs its saves but its /events endpoint passes none of them on; its CLI reads that
    # log, whole seconds only (the times in the log have nanoseconds).
    lines = engine.cli("events", "--since", str(int(since)), "--until", str(int(time.time()) + 1),
                       "--filter", "event=save", "--format", "json").stdout.splitlines()
    times = [datetime.fromisoformat(re.sub(r"(\.\d{6})\d*", r"\1", json.loads(line)["Time"]))
             for line in lines]
    return sum(t.timestamp() >= since for t in times)


def test_one_export_serves_ls_rootfs_and_export_tar(on_every_engine: OnEngine) -> None:
    engine, tricky, mount = on_every_engine.engine, on_every_engine.ref, on_every_engine.mount
    since = time.time() - 0.01
    image = mount / tricky
    subprocess.run(["ls", "-l", str(image)], check=True, capture_output=True)
    subprocess.run(["ls", "-l", str(image) + "/"], check=True, capture_output=True)
    subprocess.run(["ls", "-l", str(image / "layers")], check=True, capture_output=True)
    assert saves(engine, since) == 0
    assert "later" in os.listdir(image / "rootfs")
    assert (image / "export.tar").read_bytes()[:512]
    wait_for(lambda: saves(engine, since) >= 1)
    assert saves(engine, since) == 1


def test_the_index_outlives_the_mount(engine: Engine, tricky: str, tmp: Path) -> None:
    with mounted(engine, tmp) as m:
        assert (m / tricky / "rootfs/later").read_text() == "later\n"
    since = time.time() - 0.01
    with mounted(engine, tmp) as m:  # same cache: the index and the spool are there
        assert sorted(os.listdir(m / tricky / "rootfs/opq")) == ["new"]
        assert (m / tricky / "rootfs/keep/c").read_text() == "changed\n"
    assert saves(engine, since) == 0


def test_a_broken_export_is_eio_inside_rootfs(engine: Engine, tricky: str, tmp: Path) -> None:
    proxy = Proxy(engine.sock, tmp / "proxy.sock", cut_exports=100_000)
    try:
        with mounted(engine, tmp, "-H", f"unix://{proxy.address}",
                     expect=[r"export of rfs/tricky:1 (failed: )?.*is not a whole tar archive"]) as m:
            for _ in range(2):  # and again: a failure is never remembered as an empty tree
                with pytest.raises(OSError) as info:
                    os.listdir(m / tricky / "rootfs")
                assert info.value.errno == errno.EIO
    finally:
        proxy.close()


def test_layers_show_changes_own_files_and_what_was_removed(on_every_engine: OnEngine) -> None:
    engine, tricky, mount = on_every_engine.engine, on_every_engine.ref, on_every_engine.mount
    layers = mount / tricky / "layers"
    names = os.listdir(layers)
    diff_ids = engine.api(f"/images/{tricky}/json")["RootFS"]["Layers"]
    assert sorted(names) == [f"{n:02d}-{d[7:19]}" for n, d in enumerate(diff_ids)]
    last, middle = layers / sorted(names)[-1], layers / sorted(names)[-2]
    changes = (last / "changes").read_text().splitlines()
    assert changes == sorted(changes, key=lambda line: line[2:])  # by path, as docker diff
    assert {"D /a/b/f", "D /hl2", "A /later", "C /rel", "A /etc/own"} <= set(changes)
    assert (last / "removed/a/b/f").read_text() == "x\n"  # what the last RUN deleted, as it was
    assert sorted(os.listdir(middle / "removed/opq")) == ["old1", "old2"]
    assert (last / "files/later").read_text() == "later\n"
    info = json.loads((last / "layer.json").read_text())
    assert info["created_by"] == f"/bin/sh -c {STEP3}" and info["diff_id"] == diff_ids[-1]
    assert json.loads((middle / "layer.json").read_text())["wasted_bytes"] > 0


def test_file_capabilities_reach_the_reader(engine: Engine, mount: Mount, tmp: Path) -> None:
    """security.capability, the one xattr the engine keeps in a layer, read through the mount."""
    cap = bytes.fromhex("0100000200200000000000000000000000000000")  # VFS_CAP_REVISION_2, cap_net_raw=ep
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("ping")
        info.size, info.mode = 4, 0o755
        info.pax_headers = {"SCHILY.xattr.security.capability": cap.decode("ascii")}
        tar.addfile(info, io.BytesIO(b"ping"))
    (tmp / "layer.tar").write_bytes(data.getvalue())
    engine.docker("import", str(tmp / "layer.tar"), "rfs/xattr:1")
    try:
        ping = mount / "rfs/xattr:1/rootfs/ping"
        wait_for(lambda: (mount / "rfs/xattr:1").exists())  # the mount hears of the import
        assert os.listxattr(ping) == ["security.capability"]
        assert os.getxattr(ping, "security.capability") == cap
        assert os.listxattr(mount / "rfs/xattr:1/inspect") == []
    finally:
        engine.docker("rmi", "rfs/xattr:1")


def test_no_xattrs_turns_them_off_everywhere(engine: Engine, tricky: str, tmp: Path) -> None:
    with mounted(engine, tmp, "--no-xattrs") as m:
        for path in (m / tricky / "rootfs/hl1", m / tricky / "inspect"):
            with pytest.raises(OSError) as info:
                os.listxattr(path)
            assert info.value.errno == errno.EOPNOTSUPP


@pytest.mark.parametrize("compress", ["zstd:chunked", "gzip:members"])
@pytest.mark.parametrize("matrix_engine", ["docker26c"], indirect=True)
def test_a_compressed_layer_reads_as_the_engine_flattens_it(matrix_engine: Engine, compress: str, tmp: Path) -> None:
    """The containerd image store keeps a loaded layer compressed as it came (zstd:chunked, or gzip in a member
    a part as eStargz writes it), and saves it so."""
    engine, ref, codec = matrix_engine, "rfs/compressed:1", compress.split(":")[0]
    big = os.urandom(3 << 20)  # more than one window of the inflater
    layers = [layer(M("srv", "dir", mode=0o755), M("srv/big", data=big), M("srv/link", "symlink", b"big")),
              layer(M("srv/small", data=b"zstd\n", uid=3, mode=0o600), M("srv/.wh.big"))]
    (tmp / "z.tar").write_bytes(oci_archive(layers, f"docker.io/{ref}", compress))
    engine.docker("load", "-i", str(tmp / "z.tar"))
    try:
        with tarfile.open(fileobj=io.BytesIO(engine.save(ref))) as save:
            blobs = [save.extractfile(name).read() for name in  # type: ignore[union-attr]
                     json.loads(save.extractfile("manifest.json").read())[0]["Layers"]]  # type: ignore[union-attr]
        assert [blob[: len(MAGIC[codec])] for blob in blobs] == [MAGIC[codec]] * 2
        assert blobs == [compressed(raw, compress) for raw in layers]  # as loaded: gzip members and all
        with mounted(engine, tmp) as m:
            got, _, _ = mount_walk(m / ref / "rootfs")
            assert _top_dirs_untimed(got) == _top_dirs_untimed(engine_flattening(engine, ref)[0])
            assert sorted(got) == ["srv", "srv/link", "srv/small"]
            bottom = m / ref / "layers" / sorted(os.listdir(m / ref / "layers"))[0]
            assert hashlib.sha256((bottom / "files/srv/big").read_bytes()).digest() == hashlib.sha256(big).digest()
            assert json.loads((bottom / "layer.json").read_text())["compression"] == codec
        # A trim after another build can remove an inflated layer that a build running then found and named in
        # its index: a read finds it gone, and the image is indexed (the layer inflated) again.
        side = m.cache_dir / "rootfs" / f"{hashlib.sha256(layers[1]).hexdigest()}.tar"
        side.unlink()
        with mounted(engine, tmp, expect=[r"inflated layer .* is gone"]) as m:
            assert (m / ref / "rootfs/srv/small").read_bytes() == b"zstd\n"
        assert side.read_bytes() == layers[1]
    finally:
        engine.docker("rmi", ref, check=False)
