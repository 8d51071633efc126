"""export.tar and all.tar with real tar, cp, cat, dd, rsync, pv and shutil, against the engine's own bytes (SPEC §3)."""

from __future__ import annotations

import errno
import io
import json
import os
import shutil
import signal
import subprocess
import tarfile
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Engine, Mount, Proxy, mount_imagefs, mounted, unmount, wait_for

REF = "localhost:5000/team/app:2"


def sh(cmd: str, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, timeout=300, **kw)  # type: ignore[call-overload]


COPIERS = {
    "cat": "cat {src} > {dst}",
    "cp": "cp {src} {dst}",
    "dd": "dd if={src} of={dst} bs=64k status=none",
    "rsync": "rsync {src} {dst}",
    "pv": "pv -q {src} > {dst}",
    "shutil": "python3 -c 'import shutil,sys; shutil.copyfile(sys.argv[1], sys.argv[2])' {src} {dst}",
}


@pytest.mark.parametrize("tool", sorted(COPIERS))
def test_first_export_is_byte_exact_with_every_copier(engine: Engine, tmp: Path, tool: str) -> None:
    expected = engine.save(REF)
    with mounted(engine, tmp) as m:  # a fresh cache: this image was never exported through it
        src = m / REF / "export.tar"
        assert os.stat(src).st_size == 0 and os.stat(src).st_mode & 0o777 == 0o440
        result = sh(COPIERS[tool].format(src=f"'{src}'", dst=tmp / "copy.tar"))
        assert result.returncode == 0, result.stderr
        assert (tmp / "copy.tar").read_bytes() == expected
        assert os.stat(src).st_size == len(expected)


def test_tar_of_a_never_exported_image_and_listing_starts_nothing(engine: Engine, tmp: Path) -> None:
    expected = engine.save("myorg/app:1.0")
    with mounted(engine, tmp) as m:
        since = time.time()
        sh(f"ls -l '{m.path}/myorg/app:1.0' '{m.path}' && stat '{m.path}/myorg/app:1.0/export.tar'")
        time.sleep(0.2)
        assert engine.events(since, "save") == []
        result = sh(f"tar -cf {tmp}/b.tar -C '{m.path}' myorg/app:1.0")
        assert result.returncode == 0 and result.stderr == "", result.stderr
        with tarfile.open(tmp / "b.tar") as tar:
            member = tar.extractfile("myorg/app:1.0/export.tar")
            assert member is not None and member.read() == expected


def test_backup_restores_into_an_empty_engine(mount: Mount, engine: Engine, second_engine: Engine, tmp: Path) -> None:
    result = sh(f"tar -cf {tmp}/b.tar -C '{mount.path}' myorg/app:1.0")
    assert result.returncode == 0, result.stderr
    sh(f"tar -xf {tmp}/b.tar -C {tmp}")
    loaded = second_engine.docker("load", "-i", str(tmp / "myorg/app:1.0/export.tar"))
    assert "myorg/app:1.0" in loaded.stdout
    original = engine.docker("image", "inspect", "-f", "{{.Id}}", "myorg/app:1.0").stdout
    assert second_engine.docker("image", "inspect", "-f", "{{.Id}}", "myorg/app:1.0").stdout == original
    second_engine.docker("rmi", "myorg/app:1.0")


def test_all_tar_restores_every_tag(mount: Mount, engine: Engine, second_engine: Engine, tmp: Path) -> None:
    assert ".imagefs" not in os.listdir(mount.path)
    result = sh(f"cp '{mount.path}/.imagefs/all.tar' {tmp}/all.tar")
    assert result.returncode == 0, result.stderr
    second_engine.docker("load", "-i", str(tmp / "all.tar"))
    try:
        assert second_engine.tags() == engine.tags()
    finally:
        for tag in second_engine.tags():
            second_engine.docker("rmi", "-f", tag, check=False)


def test_sixteen_readers_share_one_export(engine: Engine, tmp: Path) -> None:
    expected = engine.save("busybox:latest")
    with mounted(engine, tmp) as m:
        since = time.time()
        results: list[bytes] = []

        def read() -> None:
            results.append((m / "busybox:latest/export.tar").read_bytes())

        threads = [threading.Thread(target=read) for _ in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert len(results) == 16 and all(r == expected for r in results)
        time.sleep(0.3)
        assert len(engine.events(since, "save")) == 1


def test_the_mount_reads_ahead_one_mebibyte(mount: Mount) -> None:
    # The kernel lowers the readahead to what the INIT reply allows: raising it before INIT is lost,
    # and every export read is then a 128 KiB round trip instead of 1 MiB.
    with open("/proc/self/mountinfo") as f:
        device = next(line.split()[2] for line in f if line.split()[4] == str(mount.path))
    wait_for(lambda: Path(f"/sys/class/bdi/{device}/read_ahead_kb").read_text().strip() == "1024")


def test_export_files_ask_cat_and_cp_for_one_mebibyte_reads(mount: Mount) -> None:
    # The first reader of an export reads with direct I/O, one round trip per read call.
    assert os.stat(mount.path / "busybox:latest" / "export.tar").st_blksize == 1 << 20
    assert os.stat(mount.path / ".imagefs" / "all.tar").st_blksize == 1 << 20


def test_random_access_and_remembered_size(engine: Engine, tmp: Path) -> None:
    expected = engine.save("busybox:latest")
    with mounted(engine, tmp) as m:
        path = m / "busybox:latest/export.tar"
        with open(path, "rb") as f:
            f.seek(len(expected) // 2)
            assert f.read(4096) == expected[len(expected) // 2 : len(expected) // 2 + 4096]
        listing = sh(f"tar -tvf '{path}'")
        assert listing.returncode == 0 and "manifest.json" in listing.stdout
    with mounted(engine, tmp) as again:  # same cache dir: the size is known before any export
        since = time.time()
        assert os.stat(again / "busybox:latest/export.tar").st_size == len(expected)
        assert engine.events(since, "save") == []
        assert (again / "busybox:latest/export.tar").read_bytes() == expected


@pytest.fixture(scope="module")
def blob(engine: Engine) -> Iterator[str]:
    """An image of 96 MiB of random bytes, built offline: its export takes a noticeable time."""
    ctx = Path(tempfile.mkdtemp(prefix="ifs-blob-", dir="/tmp"))
    try:
        with open(ctx / "blob", "wb") as f:
            for _ in range(96):
                f.write(os.urandom(1 << 20))
        (ctx / "Dockerfile").write_text("FROM scratch\nCOPY blob /blob\n")
        engine.docker("build", "-q", "-t", "big/blob:1", str(ctx))
    finally:
        shutil.rmtree(ctx)
    yield "big/blob:1"
    engine.docker("rmi", "big/blob:1", check=False)


def test_engine_stopping_mid_export_is_eio_then_exports_afresh(engine: Engine, tmp: Path, blob: str) -> None:
    m = mount_imagefs(engine, tmp, expect=[
        r"^(export of big/blob:1 failed|open): .*/images/big/blob:1/get: ",
        r"^events stream down \(GET /events: .*\); [\d.]+ s TTLs until it is back$",
        r"^(lookup|getattr|read): EngineUnreachable: GET /v1\.41/images/\S+: Connect(Error|ionRefusedError): ",
    ])
    try:
        failures: list[int] = []

        def reader() -> None:
            try:
                os.open(m / "big/blob:1/export.tar", os.O_RDONLY)  # returns once the export is verified
            except OSError as exc:
                failures.append(exc.errno or 0)

        opener = threading.Thread(target=reader)
        opener.start()
        wait_for(lambda: "export of big/blob:1: started" in m.log_text(), timeout=10)
        engine.kill(hard=True)  # dockerd's graceful stop would finish the export first
        opener.join(30)
        assert failures == [errno.EIO]
        engine.start()
        expected = engine.save("big/blob:1")
        assert (m / "big/blob:1/export.tar").read_bytes() == expected  # afresh
        assert "export of big/blob:1 failed" in m.log_text()
    finally:
        if not os.path.exists(engine.sock):
            engine.start()
        unmount(m)


def test_reads_of_a_complete_export_leave_no_pages_in_the_daemons_memory(engine: Engine, tmp: Path, blob: str) -> None:
    # They are answered from the mapped spool; each answer's pages are unmapped at the next read.
    def rss_file_kib(pid: int) -> int:
        status = Path(f"/proc/{pid}/status").read_text()
        return int(next(line.split()[1] for line in status.splitlines() if line.startswith("RssFile:")))

    with mounted(engine, tmp) as m:
        pid = m.daemon_pid()
        before = rss_file_kib(pid)
        data = (m / "big/blob:1/export.tar").read_bytes()  # waits for the export, then the daemon serves it all
        assert len(data) > 96 << 20
        assert rss_file_kib(pid) - before < 16 << 10
        assert "/spool/" in Path(f"/proc/{pid}/maps").read_text()  # it was served from the mapping


def test_an_export_cut_where_a_member_ends_is_eio(engine: Engine, tmp: Path) -> None:
    # The engine ends an export by closing the connection, so a crash looks like an end. Cut right
    # after the layer.tar member, the stream even ends with zero blocks on a block boundary.
    data = engine.save(REF)
    with tarfile.open(fileobj=io.BytesIO(data)) as archive:
        layer = next(m for m in archive.getmembers() if m.name.endswith("/layer.tar") and m.isfile())
    cut = layer.offset_data + -(-layer.size // 512) * 512
    assert cut < len(data) and data[:cut].endswith(bytes(1024))
    proxy = Proxy(engine.sock, tmp / "proxy.sock", cut_exports=cut)
    try:
        with mounted(engine, tmp, "-H", f"unix://{proxy.address}",
                     expect=[rf"^(export of {REF} failed|open): (ExportBroken: )?export of "
                             rf"{REF} is not a whole tar archive after {cut} bytes: "]) as m:
            with pytest.raises(OSError) as info:
                (m / REF / "export.tar").read_bytes()
            assert info.value.errno == errno.EIO
            assert "not a whole tar archive" in m.log_text()
    finally:
        proxy.close()


def test_an_export_over_tcp_is_spliced_whole(engine: Engine, tmp: Path) -> None:
    proxy = Proxy(engine.sock)  # on 127.0.0.1: the body is spliced from a TCP socket
    try:
        with mounted(engine, tmp, "-H", f"tcp://{proxy.address}") as m:
            assert (m / REF / "export.tar").read_bytes() == engine.save(REF)
    finally:
        proxy.close()


def test_an_export_framed_in_chunks_is_read_whole(engine: Engine, tmp: Path) -> None:
    # An engine (or a proxy) that answers in chunks, as over HTTP/1.1: the body cannot be spliced
    # and goes through the reader's buffers instead (as over TLS).
    proxy = Proxy(engine.sock, tmp / "proxy.sock", http11=True)
    try:
        with mounted(engine, tmp, "-H", f"unix://{proxy.address}") as m:
            assert (m / REF / "export.tar").read_bytes() == engine.save(REF)
    finally:
        proxy.close()


def test_sigterm_during_an_export_unmounts_at_once(engine: Engine, tmp: Path, blob: str) -> None:
    dockerd = int((engine.root / "docker.pid").read_text())
    aborted = r"^open: Closing: export of big/blob:1 aborted: the mount is closing$"
    with mounted(engine, tmp, expect=[aborted]) as m:
        pid = m.daemon_pid()
        failures: list[int] = []

        def reader() -> None:
            try:
                os.open(m / "big/blob:1/export.tar", os.O_RDONLY)  # waits for the export's verdict
            except OSError as exc:
                failures.append(exc.errno or 0)

        os.kill(dockerd, signal.SIGSTOP)  # the export now waits for the engine for as long as it is stopped
        try:
            opener = threading.Thread(target=reader)
            opener.start()
            wait_for(lambda: "export of big/blob:1: started" in m.log_text(), timeout=10)
            os.kill(pid, signal.SIGTERM)
            # Not held up by the reader waiting for an export that cannot end: it fails instead.
            wait_for(lambda: not os.path.ismount(m.path), timeout=3)
            opener.join(3)
            assert failures and failures[0] in (errno.EIO, errno.ENOTCONN, errno.ECONNABORTED), failures
            assert "aborted: the mount is closing" in m.log_text()
        finally:
            os.kill(dockerd, signal.SIGCONT)


def test_spool_is_bounded_and_evicted_when_nobody_reads(engine: Engine, tmp: Path) -> None:
    expected = engine.save("busybox:latest")  # about 2 MB: over a 1 MiB bound once complete
    with mounted(engine, tmp, "--cache-size", "1M") as m:
        with open(m / "busybox:latest/export.tar", "rb") as f:
            assert f.read() == expected
            assert sum(p.stat().st_size for p in m.cache_dir.glob("spool/*")) == len(expected)  # held while open
        wait_for(lambda: list(m.cache_dir.glob("spool/*")) == [], timeout=2)  # release(2) is asynchronous
        assert (m / "busybox:latest/export.tar").read_bytes() == expected  # exported afresh, same size


def test_listing_during_an_export_never_truncates_a_reader(engine: Engine, tmp: Path, blob: str) -> None:
    with mounted(engine, tmp) as m:
        expected = (m / blob / "export.tar").read_bytes()  # now its size is remembered
    for _ in range(2):
        with mounted(engine, tmp) as m:  # same cache: a re-export whose size is known
            reader = subprocess.Popen(["bash", "-c", f"cat '{m.path}/{blob}/export.tar' > {tmp}/copy.tar"])
            deadline = time.monotonic() + 1.0
            while reader.poll() is None and time.monotonic() < deadline:
                sh(f"ls -l '{m.path}/big/blob:1' '{m.path}/big'")
            assert reader.wait(60) == 0
            assert (tmp / "copy.tar").read_bytes() == expected


def test_a_wrong_remembered_size_is_eio_never_a_short_copy(engine: Engine, tmp: Path) -> None:
    with mounted(engine, tmp) as m:
        expected = (m / "busybox:latest/export.tar").read_bytes()
    sizes_file = m.cache_dir / "sizes.json"
    sizes = json.loads(sizes_file.read_text())
    key = next(k for k in sizes if k.endswith(" busybox:latest"))
    for wrong in (len(expected) - 4096, len(expected) + 4096):
        for kept in m.cache_dir.glob("spool/*.tar"):  # only the remembered size is left to go by
            kept.unlink()
        sizes[key] = wrong
        sizes_file.write_text(json.dumps(sizes))
        with mounted(engine, tmp, expect=[rf"^(export of busybox:latest failed|open): (ExportBroken: )?"
                                          rf"export of busybox:latest is {len(expected)} bytes, {wrong} before$"]) as m:
            path = m / "busybox:latest/export.tar"
            assert os.stat(path).st_size == wrong
            outcomes: list[int | bytes] = []
            readers = [threading.Thread(target=_open_fails, args=(path, outcomes)) for _ in range(3)]
            for t in readers:
                t.start()
            for t in readers:
                t.join(60)
            # No reader saw a byte of it, let alone an end-of-file. A reader slow enough to open after
            # the failure starts a new export, which the contradicted size no longer binds: whole bytes.
            assert len(outcomes) == 3 and errno.EIO in outcomes
            assert all(o == errno.EIO or o == expected for o in outcomes), [o for o in outcomes if o != errno.EIO]
            assert sh(f"ls '{m.path}/busybox:latest'").returncode == 0
            result = sh(f"cat '{path}' > {tmp}/copy.tar")  # a new open never joins a failed export
            assert result.returncode == 0, result.stderr
            assert (tmp / "copy.tar").read_bytes() == expected
            assert os.stat(path).st_size == len(expected) and path.read_bytes() == expected


def _open_fails(path: Path, outcomes: list[int | bytes]) -> None:
    """Open (joining the export, which the remembered size contradicts): its errno, or all it read."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as exc:
        outcomes.append(exc.errno or 0)
        return
    with os.fdopen(fd, "rb") as f:
        outcomes.append(f.read())


def test_cache_dir_on_tmpfs(engine: Engine, tmp: Path) -> None:
    (tmp / "tmpfs").mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(tmp / "tmpfs")], check=True)
    try:
        with mounted(engine, tmp, "--cache-dir", str(tmp / "tmpfs/cache")) as m:
            assert (m / "busybox:latest/export.tar").read_bytes() == engine.save("busybox:latest")
    finally:
        subprocess.run(["umount", str(tmp / "tmpfs")], check=True)


def test_an_open_export_keeps_its_size_when_the_tags_change(mount: Mount, engine: Engine) -> None:
    fd = os.open(mount / ".imagefs/all.tar", os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        data = os.pread(fd, size + 1, 0)
        assert len(data) == size > 0
        engine.docker("tag", "hello:latest", "while/open:1")  # all.tar of the new tag set is another export
        wait_for(lambda: (mount / "while/open:1").exists(), timeout=1.0)
        assert os.fstat(fd).st_size == size  # what tar re-stats after open: never 0 for what it reads
        assert os.pread(fd, size + 1, 0) == data
    finally:
        os.close(fd)
        engine.docker("rmi", "while/open:1")


def test_a_file_whose_image_moves_while_open_stays_whole(mount: Mount, engine: Engine) -> None:
    hello, busybox = engine.save("hello:latest"), engine.save("busybox:latest")
    engine.docker("tag", "hello:latest", "moving/exp:1")
    path = mount / "moving/exp:1/export.tar"
    try:
        wait_for(path.exists, timeout=1.0)
        first = os.open(path, os.O_RDONLY)
        try:
            size = os.fstat(first).st_size
            old = os.pread(first, size + 1, 0)
            assert len(old) == size > 0
            engine.docker("tag", "busybox:latest", "moving/exp:1")
            wait_for(lambda: "busybox" in (mount / "moving/exp:1/inspect").read_text(), timeout=1.0)
            # The name leads to the other image's export, whole, with its own size ...
            now = path.read_bytes()
            assert len(now) == os.stat(path).st_size and len(now) > len(busybox) // 2 and now != old
            # ... while the open file reads on what it opened, whole, with the size it had.
            assert os.fstat(first).st_size == size and os.pread(first, size + 1, 0) == old
            assert len(old) > len(hello) // 2 and len(old) < len(busybox) // 2
        finally:
            os.close(first)
    finally:
        engine.docker("rmi", "moving/exp:1")


def test_an_export_does_not_make_imagefs_list_the_images_again(engine: Engine, tmp: Path) -> None:
    # The engine's `save` event comes mid-export; a save changes no image, and listing a long
    # image list then would slow the export's readers.
    with mounted(engine, tmp, "--debug") as m:
        os.listdir(m.path)
        wait_for(lambda: "following engine events" in m.log_text())
        before = m.log_text().count("engine request GET /v1.41/images/json")
        assert (m / "hello:latest/export.tar").read_bytes() == engine.save("hello:latest")
        wait_for(lambda: m.log_text().count("event save") >= 2)  # ours and the test's own
        time.sleep(0.5)
        assert m.log_text().count("engine request GET /v1.41/images/json") == before
