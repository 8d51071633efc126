"""bench.py's rootfs/ measurements (section 6), on an image of --rootfs-files files and --rootfs-mb MiB.

  - the first `cat` of one small file in a never-exported image (fresh mount, fresh cache) against a
    raw ImageGet of the image, and against what a user does today: `docker create` + `docker export |
    tar -x` + `cat`;
  - warm `find rootfs -printf '%s %m'`, `grep -r` and `tar -c rootfs` against the same tree extracted
    on local disk, and over that tree mirrored by `floorfs.py` (the least a pyfuse3 filesystem does: what
    rootfs/ costs beyond it is imagefs's own); and warm `find` over what a user can mount today:
    ratarmount (PyPI, installed into a venv of the benchmark's own unless on PATH) over the image's
    `docker save` tar, its layer tars mounted too (--recursive; it applies no whiteouts), in the same interleaved runs
    (bimodal: its names and attributes live libfuse's default 1 s, so a find slower than that
    finds them gone), and the first find after mounting of each;
  - index build rate and bytes per row, from the daemon's log, and the daemon's peak RSS;
  - the index builder alone (`python -m imagefs.rootfs.build`) on a synthetic save of
    --index-entries entries, for rootfs/ and for the layer views: rows/s, bytes/row, and the builder's
    own peak RSS (the daemon's does not grow: the builder is a process of its own); and the rate of
    a second layer rewriting 100,000 files of the first;
  - the builder over a --rootfs-mb MiB layer stored plain, gzip'ed and zstd'ed (as the containerd
    image store keeps them): what inflating into the side file costs, against `gzip -d`/`zstd -d`.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from bench import DOCKER, Bench, Report, Row, Timing, fmt_time, log, run, sample, settle, timed, wait_for, write_random

ROOTFS_REF = "big/files:1"
REWRITTEN = 100_000  # files the upper layer of the rewrite measurement rewrites
BUILDS = 3  # runs of each builder-alone measurement
SMALL = "files/d000/f00000.txt"
NEEDLE = "imagefs-needle"
RATARMOUNT = "ratarmount"  # the PyPI package, and its command
FIND = ["find", "{}", "-printf", "%s %m\\n"]
INDEX_LOG = re.compile(r"index of \w+: built, (\d+) rows, (\d+) bytes, ([\d.]+) s")


def make_files(directory: Path, count: int) -> None:
    rng = random.Random(0)
    for i in range(count):
        sub = directory / f"d{i // 1000:03d}"
        sub.mkdir(parents=True, exist_ok=True)
        body = NEEDLE.encode() if i == 0 else rng.randbytes(rng.randint(10, 4000))
        (sub / f"f{i:05d}.txt").write_bytes(body)


def user_today(bench: Bench, out: Path) -> list[str]:
    """What a user does today to read one file: create a container, export it, untar, cat."""
    script = (f"cid=$({DOCKER} create {ROOTFS_REF} /x) && mkdir -p {out} && {DOCKER} export $cid | tar -x -C {out}"
              f" && cat {out}/{SMALL} >/dev/null; s=$?; {DOCKER} rm $cid >/dev/null; rm -rf {out}; exit $s")
    return ["sh", "-c", script]


def first_export(bench: Bench, get: list[str], beside_index: bool) -> float:
    """`cat export.tar` of a never-exported image (a fresh mount and cache), settled as the export section's
    are; with `beside_index`, while a `cat` inside its rootfs/ has the same export indexed as it arrives:
    the two together say what indexing costs the export's first reader."""
    bench.umount()
    bench.mount()
    settle(bench, get)
    inside = (subprocess.Popen(["cat", str(bench.path(ROOTFS_REF, "rootfs", SMALL))], stdout=subprocess.DEVNULL)
              if beside_index else None)
    try:
        return timed(["sh", "-c", f"cat '{bench.path(ROOTFS_REF, 'export.tar')}' >/dev/null"])
    finally:
        if inside is not None and inside.wait(timeout=600) != 0:
            raise RuntimeError("the cat inside rootfs/ beside the export failed")


def index_figures(log_file: Path) -> tuple[int, int, float] | None:
    found = INDEX_LOG.findall(log_file.read_text(errors="replace")) if log_file.exists() else []
    return (int(found[-1][0]), int(found[-1][1]), float(found[-1][2])) if found else None


def bench_rootfs(bench: Bench, report: Report) -> None:
    files, mib = bench.args.rootfs_files, bench.args.rootfs_mb
    report.section(f"6. rootfs/ of a {files}-file, {mib} MiB image")
    if not bench.api.exists(ROOTFS_REF):
        log(f"building {ROOTFS_REF} ({files} files and {mib} MiB, offline)")
        bench.build(ROOTFS_REF, "FROM scratch\nCOPY files /files\nCOPY big.bin /big.bin\n",
                    {"files": lambda p: make_files(p, files), "big.bin": lambda p: write_random(p, mib)})
    get = bench.api.curl(f"/images/{ROOTFS_REF}/get")
    raw, first, today, beside, alone = Timing([]), Timing([]), Timing([]), Timing([]), Timing([])
    figures = None
    for r in range(max(1, bench.args.export_rounds)):
        log(f"rootfs round {r + 1}: raw ImageGet, first cat through a fresh mount, docker create+export+cat, "
            "first export.tar with and without indexing")
        bench.umount()
        settle(bench, get)
        raw.values.append(timed([*get, "-o", "/dev/null"], bench.env))
        bench.mount()
        first.values.append(timed(["cat", str(bench.path(ROOTFS_REF, "rootfs", SMALL))]))
        assert bench.cache_dir is not None
        figures = index_figures(bench.cache_dir / "imagefs.log") or figures
        today.values.append(timed(user_today(bench, bench.work / "today"), bench.env))
        beside.values.append(first_export(bench, get, beside_index=True))
        alone.values.append(first_export(bench, get, beside_index=False))
    report.add(Row("first cat in a cold image vs raw ImageGet", fmt_time(first.median), fmt_time(raw.median),
                   f"{first.median / raw.median:.2f}× time", "≤ 1.25×", first.median / raw.median <= 1.25,
                   (first, raw)))
    report.add(Row("first cat in a cold image vs docker create+export|tar -x+cat", fmt_time(first.median),
                   fmt_time(today.median), f"{first.median / today.median:.2f}× time", "≤ 1×",
                   first.median <= today.median, (first, today)))
    report.add(Row("first export.tar read while rootfs/ indexes it vs raw ImageGet", fmt_time(beside.median),
                   fmt_time(raw.median), f"{raw.median / beside.median:.2f}× throughput", "≥ 0.9×",
                   raw.median / beside.median >= 0.9, (beside, raw)))
    report.add(Row("  the same vs the first export.tar read with nothing indexing", fmt_time(beside.median),
                   fmt_time(alone.median), f"{alone.median / beside.median:.2f}× throughput", timings=(beside, alone)))
    if figures is not None:
        rows, size, seconds = figures
        report.add(Row("index build in the daemon, after the export (rows/s; B/row)", f"{rows / seconds:,.0f} rows/s",
                       f"{size / rows:.0f} B/row", f"{rows} rows in {seconds:.2f} s", "≥ 200,000/s; ≤ 100 B",
                       rows / seconds >= 200_000 and size / rows <= 100))
    with ratarmounted(bench) as saved:
        warm_trees(bench, report, saved)
        report.add(Row("daemon peak RSS (VmHWM) after rootfs/ reads", f"{bench.peak_rss_kib() / 1024:.1f} MiB",
                       "—", goal="≤ 100 MiB", ok=bench.peak_rss_kib() / 1024 <= 100))
        first_finds(bench, report, saved)
    bench.umount()
    index_alone(bench, report)
    compressed_layers(bench, report)


@dataclass
class Saved:
    """The saved tar under ratarmount, and its first find, timed right after it mounted."""

    path: Path
    first_find: float


def warm_trees(bench: Bench, report: Report, saved: Saved | None) -> None:
    local = bench.work / "local"
    cid = run([DOCKER, "create", ROOTFS_REF, "/x"], env=bench.env).strip()
    try:
        local.mkdir()
        subprocess.run(f"{DOCKER} export {cid} | tar -x -C {local}", shell=True, check=True, env=bench.env)
    finally:
        run([DOCKER, "rm", cid], env=bench.env)
    mounted = bench.path(ROOTFS_REF, "rootfs")
    runs = max(5, bench.args.runs // 20)
    with floor_mounted(bench, local) as floor:
        for what, argv, goal in (("find -printf '%s %m'", FIND, 3.0),
                                 ("grep -r", ["grep", "-r", "-l", NEEDLE, "{}/files"], None),
                                 ("tar -c | cat", ["sh", "-c", "tar -c -C {} files | cat >/dev/null"], None)):
            trees = {"mount": mounted, "local": local, "floor": floor}
            if saved is not None and argv is FIND:  # ratarmount lists slowly: its figure is the find's
                trees["saved"] = saved.path
            t = sample({name: [a.replace("{}", str(tree)) for a in argv] for name, tree in trees.items()}, runs)
            ratio = t["mount"].median / t["local"].median
            report.add(Row(f"warm {what}: rootfs/ vs local disk (n={runs})", fmt_time(t["mount"].median),
                           fmt_time(t["local"].median), f"{ratio:.2f}× time", f"≤ {goal}×" if goal else "—",
                           ratio <= goal if goal else None, (t["mount"], t["local"])))
            report.add(Row("  the same, a bare pyfuse3 filesystem mirroring the local tree (the stack's floor)",
                           fmt_time(t["floor"].median), fmt_time(t["local"].median),
                           f"{t['floor'].median / t['local'].median:.2f}× time; rootfs/ "
                           f"{t['mount'].median / t['floor'].median:.2f}× it", timings=(t["floor"], t["local"])))
            if "saved" in t:
                report.add(Row(f"  the same, ratarmount -r over the saved tar vs local disk (n={runs})",
                               fmt_time(t["saved"].median), fmt_time(t["local"].median),
                               f"{t['saved'].median / t['local'].median:.2f}× time", "—", None,
                               (t["saved"], t["local"])))
    shutil.rmtree(local, ignore_errors=True)


def unmount(mnt: Path, proc: subprocess.Popen[bytes]) -> None:
    """Unmount a FUSE mount that `proc` serves, and see `proc` end (killed if it does not)."""
    subprocess.run(["fusermount3", "-u", str(mnt)], capture_output=True, check=False)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextmanager
def floor_mounted(bench: Bench, local: Path) -> Iterator[Path]:
    """`scripts/floorfs.py` mirroring `local`: what a filesystem on pyfuse3 and trio cannot do faster."""
    mnt = bench.work / "floor"
    mnt.mkdir()
    proc = subprocess.Popen([sys.executable, str(Path(__file__).with_name("floorfs.py")), str(local), str(mnt)])
    try:
        wait_for("floorfs's mount", lambda: os.path.ismount(mnt) or proc.poll() is not None, timeout=120)
        if not os.path.ismount(mnt):
            raise RuntimeError(f"floorfs exited ({proc.returncode}) before it mounted")
        yield mnt
    finally:
        unmount(mnt, proc)
        mnt.rmdir()


def compressed_layers(bench: Bench, report: Report) -> None:
    mib, raw = bench.args.rootfs_mb, bench.work / "layer.tar"
    log(f"writing a {mib} MiB layer of words, then the builder over it plain, gzip'ed and zstd'ed")
    rng = random.Random(0)
    words = [bytes(rng.choices(b"abcdefghijklmnop", k=rng.randint(3, 10))) for _ in range(5000)]
    with tarfile.open(raw, "w") as tar:
        for i in range(mib):
            body = b" ".join(rng.choices(words, k=150_000))[: 1 << 20]
            info = tarfile.TarInfo(f"text/{i:04d}.txt")
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))
    tar = raw.read_bytes()
    for how, level in (("plain", ""), ("gzip", "-6"), ("zstd", "-3")):
        blob = tar if how == "plain" else subprocess.run(
            [how, level, "-q", "-c", str(raw)], capture_output=True, check=True).stdout
        local = "—"
        if how != "plain":  # the same inflation by its own command, into a file on this disk
            start = time.perf_counter()
            with open(bench.work / "inflated.tar", "wb") as out:
                subprocess.run([how, "-d", "-q", "-c"], input=blob, stdout=out, check=True)
            local = f"{how} -d: {mib / (time.perf_counter() - start):,.0f} MiB/s"
            (bench.work / "inflated.tar").unlink()
        write_save(bench.work / "compressed.tar", tar, blob)
        seconds = build_alone(bench, bench.work / "compressed.tar")[1]
        report.add(Row(f"index builder over a {mib} MiB layer, {how} ({len(blob) >> 20} MiB)",
                       f"{mib / seconds:,.0f} MiB/s", local, f"{seconds:.2f} s"))
        (bench.work / "compressed.tar").unlink()
    raw.unlink()


def write_save(path: Path, raw: bytes, blob: bytes, *upper: bytes) -> None:
    """A save whose first layer member is `blob`, the stored form of the tar `raw`; then the `upper` tars."""
    diff_ids = ["sha256:" + hashlib.sha256(tar).hexdigest() for tar in (raw, *upper)]
    config = json.dumps({"rootfs": {"type": "layers", "diff_ids": diff_ids},
                         "history": [{"created_by": "x"} for _ in diff_ids]})
    members = [f"layer{n}/layer.tar" for n in range(len(diff_ids))]
    manifest = json.dumps([{"Config": "config.json", "RepoTags": ["x:1"], "Layers": members}])
    with tarfile.open(path, "w") as tar:
        for name, body in (*zip(members, (blob, *upper), strict=True), ("config.json", config.encode()),
                           ("manifest.json", manifest.encode())):
            info = tarfile.TarInfo(name)
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))


def first_finds(bench: Bench, report: Report, saved: Saved | None) -> None:
    """The first find after mounting, the index on disk (a fresh mount with the same cache), against
    ratarmount's first right after it mounted its index of the saved tar."""
    bench.umount(drop_cache=False)
    bench.mount(fresh_cache=False)
    first = timed([a.replace("{}", str(bench.path(ROOTFS_REF, "rootfs"))) for a in FIND])
    if saved is not None:
        report.add(Row("first find after mounting (index on disk): rootfs/ vs ratarmount -r", fmt_time(first),
                       fmt_time(saved.first_find), f"{first / saved.first_find:.2f}× time"))


def ratarmount_command(bench: Bench) -> list[str] | None:
    """ratarmount from PATH, or installed into a venv of the benchmark's own (never the project's)."""
    found = shutil.which(RATARMOUNT)
    if found:
        return [found]
    venv = bench.work / "ratarmount-venv"
    log(f"installing {RATARMOUNT} from PyPI into {venv}")
    try:
        run([shutil.which("python3") or sys.executable, "-m", "venv", str(venv)])
        run([str(venv / "bin/pip"), "install", "--quiet", RATARMOUNT], timeout=900)
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
        log(f"skipping ratarmount: it could not be installed ({str(exc)[-300:]})")
        return None
    return [str(venv / "bin" / RATARMOUNT)]


@contextmanager
def ratarmounted(bench: Bench) -> Iterator[Saved | None]:
    """The image's `docker save` tar under ratarmount, its layer tars mounted inside it (indexed before
    the first find); None when ratarmount is not to be had."""
    command = ratarmount_command(bench)
    if command is None:
        yield None
        return
    save, mnt, errors = bench.work / "saved.tar", bench.work / "ratarmount", bench.work / "ratarmount.log"
    run([DOCKER, "save", "-o", str(save), ROOTFS_REF], env=bench.env)
    mnt.mkdir()
    with open(errors, "wb") as out:
        proc = subprocess.Popen([*command, "-f", "--recursive", "--index-file", str(bench.work / "saved.index"),
                                 str(save), str(mnt)], stdout=out, stderr=subprocess.STDOUT)
    try:
        try:
            wait_for("ratarmount's mount", lambda: os.path.ismount(mnt) or proc.poll() is not None, timeout=600)
        except TimeoutError:
            log("skipping ratarmount: not mounted after 600 s")
        if os.path.ismount(mnt):
            yield Saved(mnt, timed([a.replace("{}", str(mnt)) for a in FIND]))
        else:
            log(f"skipping ratarmount: it exited ({proc.returncode}): {errors.read_text()[-500:]}")
            yield None
    finally:
        unmount(mnt, proc)
        save.unlink(missing_ok=True)


def synthetic_layer(entries: int, data: bytes = b"0123456789") -> bytes:
    """A layer of `entries` small files holding `data`, in directories of 1,000."""
    layer = io.BytesIO()
    with tarfile.open(fileobj=layer, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for i in range(entries):
            if i % 1000 == 0:
                info = tarfile.TarInfo(f"data/d{i // 1000:05d}")
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            info = tarfile.TarInfo(f"data/d{i // 1000:05d}/file{i % 1000:03d}.txt")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return layer.getvalue()


def build_alone(bench: Bench, save: Path, *mode: str, side: Path | None = None) -> tuple[int, float, float, int]:
    """The index builder run on `save`: its rows, seconds, own peak RSS (MiB) and index bytes. Its side files
    and kept layer walks go to `side`, by default a directory of its own (cold: no layer's walk kept)."""
    db = bench.work / "synthetic.sqlite"
    fd = os.open(save, os.O_RDONLY)
    cold = side is None
    side = Path(tempfile.mkdtemp(dir=bench.work)) if side is None else side
    try:
        start = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "imagefs.rootfs.build", str(fd), str(db), str(side),
                                 *mode], pass_fds=(fd,), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        out, err = proc.communicate()
        seconds = time.perf_counter() - start
    finally:
        os.close(fd)
        if cold:
            shutil.rmtree(side)
    if proc.returncode != 0:
        raise RuntimeError(f"the index builder exited with status {proc.returncode}: {err[-500:]!r}")
    size = db.stat().st_size
    db.unlink()
    # The builder's own figure: this process's ru_maxrss of it would count this process's peak (a vfork).
    peak = re.search(rb"peak RSS (\d+) KiB", err)
    return int(out), seconds, int(peak.group(1)) / 1024 if peak else float("nan"), size


def best_build(bench: Bench, save: Path, *mode: str) -> tuple[int, float, float, int]:
    """`build_alone`'s fastest of BUILDS cold runs (a rate's best case: what the machine's other work left out),
    with the highest peak RSS of them."""
    runs = [build_alone(bench, save, *mode) for _ in range(BUILDS)]
    rows, seconds, _, size = min(runs, key=lambda run: run[1])
    return rows, seconds, max(run[2] for run in runs), size


def index_alone(bench: Bench, report: Report) -> None:
    """The builder alone: the rootfs and the layer views of a one-layer save, and a second layer rewriting
    REWRITTEN of its files (its rate: the time it adds to the build of the first layer alone)."""
    entries = bench.args.index_entries
    save = bench.work / "synthetic.tar"
    log(f"writing a synthetic save of {entries:,} entries")
    base = synthetic_layer(entries)
    write_save(save, base, base)
    for mode, name in (((), "rootfs"), (("views",), "layer views")):
        rows, seconds, rss, size = best_build(bench, save, *mode)
        per_entry = size / (entries + entries // 1000)
        report.add(Row(f"index builder alone, {name}, {entries:,} entries: rate (entries/s), best of {BUILDS}",
                       f"{entries / seconds:,.0f}/s", "—", f"{rows:,} rows, {seconds:.1f} s", "≥ 200,000/s",
                       entries / seconds >= 200_000))
        report.add(Row("  its index bytes per entry", f"{per_entry:.0f} B/entry", "—", goal="≤ 100 B",
                       ok=per_entry <= 100))
        report.add(Row("  the builder's own peak RSS (its walker's too; not the daemon's)", f"{rss:.0f} MiB", "—",
                       goal="≤ 100 MiB", ok=rss <= 100))
    kept = bench.work / "kept"
    kept.mkdir()
    cold = build_alone(bench, save, side=kept)[1]
    warm = build_alone(bench, save, side=kept)[1]  # as another image on the same base layer would
    shutil.rmtree(kept)
    report.add(Row(f"  rootfs again, the layer's walk kept ({entries:,} entries): rate (entries/s)",
                   f"{entries / warm:,.0f}/s", f"{entries / cold:,.0f}/s walked", f"{cold / warm:.2f}× faster",
                   "> 1×", warm < cold))
    rewritten = min(REWRITTEN, entries)
    base = synthetic_layer(rewritten)
    write_save(save, base, base)
    alone = best_build(bench, save)[1]
    write_save(save, base, base, synthetic_layer(rewritten, b"9876543210"))
    both = best_build(bench, save)[1]
    rate = rewritten / max(both - alone, 1e-9)
    report.add(Row(f"  rootfs: an upper layer rewriting {rewritten:,} files: rate (members/s), best of {BUILDS}",
                   f"{rate:,.0f}/s",
                   "—", f"{both - alone:.2f} s over {alone:.2f} s", "≥ 200,000/s", rate >= 200_000))
    save.unlink()
