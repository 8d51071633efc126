"""Control files against the real engine, and coherence with changes made by others (SPEC §4, §5)."""

from __future__ import annotations

import errno
import os
import random
import re
import subprocess
import time
from pathlib import Path

import pytest
from conftest import Engine, Mount, Proxy, mounted, settled, wait_for

from imagefs import controls
from imagefs.errors import BadCommand


def write(path: Path, text: str | bytes) -> int:
    """One write(2) after open(O_WRONLY|O_TRUNC), as `echo … > file` does: 0 or the errno.

    An empty write never reaches the file system: `echo > file` writes "\n".
    """
    assert text, "a zero-length write is no command"
    fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
    try:
        os.write(fd, text.encode() if isinstance(text, str) else text)
    except OSError as exc:
        return exc.errno or -1
    finally:
        os.close(fd)
    return 0


def build(engine: Engine, tmp: Path, dockerfile: str, *tags: str) -> None:
    """Build an image offline from a context of its own: tmp holds the mount, which must not be sent."""
    context = tmp / "context"
    context.mkdir(exist_ok=True)
    (context / "Dockerfile").write_text(dockerfile)
    engine.docker("build", "-q", *(a for tag in tags for a in ("-t", tag)), str(context))


def engine_requests(m: Mount) -> list[str]:
    """The engine requests a --debug mount has logged so far."""
    return [line for line in m.log_text().splitlines() if "engine request " in line]


def test_tag_then_delete_show_at_once(mount: Mount, engine: Engine) -> None:
    result = subprocess.run(["bash", "-c", f"echo team/new:1 > '{mount.path}/myorg/app:1.0/tag'"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert os.listdir(mount / "team") == ["new:1"]  # no wait: the write returned after the tree changed
    assert "team/new:1" in engine.tags()
    assert "tagged myorg/app:1.0 as team/new:1" in (mount / "myorg/app:1.0/tag").read_text()
    assert write(mount / "team/new:1/delete", "\n") == 0
    assert not (mount / "team").exists()
    assert "team/new:1" not in engine.tags()
    assert write(mount / "hello:latest/tag", "hello") == 0  # the tag defaults to latest: tagging onto itself
    assert "hello:latest" in engine.tags()


@pytest.mark.mount("--debug")
def test_bad_reference_is_einval_and_sends_nothing(mount: Mount, engine: Engine) -> None:
    settled(mount)
    os.stat(mount / "myorg/app:1.0/tag")
    os.stat(mount / "myorg/app:1.0/delete")
    os.stat(mount / ".imagefs/prune")  # resolved now: what follows may ask the engine nothing at all
    before = engine_requests(mount)
    tags = engine.tags()
    for bad in ("Bad Name!", "x@sha256:" + "a" * 64, "a:b:c", "two\nlines", "\n"):
        assert write(mount / "myorg/app:1.0/tag", bad) == errno.EINVAL
    result = subprocess.run(["bash", "-c", f"echo 'Bad Name!' > '{mount.path}/myorg/app:1.0/tag'"],
                            capture_output=True, text=True)
    assert "Invalid argument" in result.stderr
    assert "invalid reference format" in (mount / "myorg/app:1.0/tag").read_text()
    assert write(mount / "myorg/app:1.0/delete", "forcefully") == errno.EINVAL
    assert write(mount / "myorg/app:1.0/tag", "x" * 5000) == errno.EINVAL
    # Every request is logged before it is sent, so the log has them all by now.
    assert engine_requests(mount) == before
    assert engine.tags() == tags


# The engine refuses the delete (409): the daemon warns of it as of any engine error.
@pytest.mark.mount(expect=[r"^write: Conflict: DELETE /v1\.41/images/inuse/box:1\?.* container \w+ is using"])
def test_delete_of_an_image_in_use_is_ebusy_with_the_reason(mount: Mount, engine: Engine) -> None:
    engine.docker("tag", "busybox:latest", "inuse/box:1")
    container = engine.docker("create", "inuse/box:1").stdout.strip()
    try:
        assert write(mount / "busybox:latest/delete", "\n") == 0  # another tag remains: just an untag
        assert write(mount / "inuse/box:1/delete", "\n") == errno.EBUSY
        assert "container" in (mount / "inuse/box:1/delete").read_text()
        assert "inuse/box:1" in engine.tags()
    finally:
        engine.docker("rm", container)
        engine.docker("tag", "inuse/box:1", "busybox:latest")
        engine.docker("rmi", "inuse/box:1")


# The unforced delete of an image with two tags is refused (409), and warned of.
@pytest.mark.mount(expect=[r"^write: Conflict: DELETE /v1\.41/images/[0-9a-f]{64}\?force=false&.*"
                           r" \(must be forced\) - image is referenced in multiple repositories$"])
def test_delete_by_id_and_force(mount: Mount, engine: Engine, tmp: Path) -> None:
    build(engine, tmp, "FROM scratch\nLABEL purpose=delete-by-id\nCOPY Dockerfile /x\n", "gone/one:1", "gone/two:1")
    hexid = engine.docker("image", "inspect", "-f", "{{.Id}}", "gone/one:1").stdout.strip().removeprefix("sha256:")
    assert write(mount / f".imagefs/ids/{hexid}/delete", "\n") == errno.EBUSY  # two tags: must force
    assert write(mount / f".imagefs/ids/{hexid}/delete", "force") == 0
    assert not (mount / "gone").exists() and not (mount / f".imagefs/ids/{hexid}").exists()
    assert not {"gone/one:1", "gone/two:1"} & engine.tags()


def test_prune_removes_dangling_and_reports(mount: Mount, engine: Engine, tmp: Path) -> None:
    build(engine, tmp, "FROM scratch\nCOPY Dockerfile /v1\n", "prune/me:1")
    old = engine.docker("image", "inspect", "-f", "{{.Id}}", "prune/me:1").stdout.strip()
    build(engine, tmp, "FROM scratch\nCOPY Dockerfile /v2\n", "prune/me:1")  # the first build is now dangling
    assert old.removeprefix("sha256:") in os.listdir(mount / ".imagefs/ids")
    before = engine.tags()
    assert write(mount / ".imagefs/prune", "\n") == 0
    report = (mount / ".imagefs/prune").read_text()
    assert old in report and "reclaimed" in report
    assert old not in engine.image_ids() and engine.tags() == before
    assert old.removeprefix("sha256:") not in os.listdir(mount / ".imagefs/ids")
    assert write(mount / ".imagefs/prune", "label=nothing-has-this") == 0
    assert "0 entries removed" in (mount / ".imagefs/prune").read_text()
    assert write(mount / ".imagefs/prune", "everything") == errno.EINVAL
    engine.docker("rmi", "prune/me:1")


# The restart below ends the events stream under the mount.
@pytest.mark.mount(expect=[r"^events stream down \(GET /events: .*\); [\d.]+ s TTLs until it is back$"])
def test_changes_by_others_show_within_a_second(mount: Mount, engine: Engine) -> None:
    assert not (mount / "others").exists()
    engine.docker("tag", "hello:latest", "others/x:1")
    assert wait_for(lambda: "others" in os.listdir(mount.path), timeout=1.0) < 1.0
    engine.docker("rmi", "others/x:1")
    assert wait_for(lambda: "others" not in os.listdir(mount.path), timeout=1.0) < 1.0
    # the same once the engine was restarted under the mount
    engine.kill()
    engine.start()
    wait_for(lambda: os.path.exists(mount / "hello:latest"), timeout=10)
    engine.docker("tag", "hello:latest", "others/y:1")
    try:
        assert wait_for(lambda: (mount / "others/y:1").exists(), timeout=1.5) < 1.5
    finally:
        engine.docker("rmi", "others/y:1")


def test_moved_tag_shows_the_new_image(mount: Mount, engine: Engine) -> None:
    engine.docker("tag", "hello:latest", "moving/tag:1")
    try:
        wait_for(lambda: (mount / "moving/tag:1").exists(), timeout=1.0)  # made by another: within 1 s
        first = (mount / "moving/tag:1/inspect").read_text()
        engine.docker("tag", "busybox:latest", "moving/tag:1")
        busybox_id = engine.docker("image", "inspect", "-f", "{{.Id}}", "busybox:latest").stdout.strip()
        wait_for(lambda: busybox_id in (mount / "moving/tag:1/inspect").read_text(), timeout=1.0)
        assert (mount / "moving/tag:1/inspect").read_text() != first
        assert os.stat(mount / "moving/tag:1/inspect").st_size == len((mount / "moving/tag:1/inspect").read_bytes())
    finally:
        engine.docker("rmi", "moving/tag:1")


def test_read_only_refuses_every_write(engine: Engine, tmp: Path) -> None:
    with mounted(engine, tmp, "--read-only") as m:
        result = subprocess.run(["bash", "-c", f"echo x:1 > '{m.path}/hello:latest/tag'"],
                                capture_output=True, text=True)
        assert "Read-only file system" in result.stderr
        for op in (lambda: os.rmdir(m / "hello:latest"), lambda: os.unlink(m / "hello:latest/tag"),
                   lambda: os.rename(m / "hello:latest", m / "x:1")):
            with pytest.raises(OSError) as info:
                op()
            assert info.value.errno == errno.EROFS
        assert "x:1" not in engine.tags()


def test_dry_run_logs_and_changes_nothing(engine: Engine, tmp: Path) -> None:
    # Dry-run warns of each request it holds back, and each outcome says nothing was sent.
    with mounted(engine, tmp, "--dry-run", expect=[r"^dry-run: would send (POST|DELETE) /v1\.41/images/"]) as m:
        before = engine.tags()
        assert write(m / "hello:latest/tag", "dry/run:1") == 0
        assert write(m / "hello:latest/delete", "force\n") == 0
        assert write(m / ".imagefs/prune", "all until=24h\n") == 0
        assert engine.tags() == before
        assert (m / "hello:latest/tag").read_text().endswith(
            "last: dry-run: would tag hello:latest as dry/run:1; nothing sent\n")
        assert (m / "hello:latest/delete").read_text().endswith(
            "last: dry-run: would delete hello:latest (force); nothing sent\n")
        assert (m / ".imagefs/prune").read_text().endswith(
            "last: dry-run: would prune images (filters dangling=false until=24h); nothing sent\n")
        log = m.log_text()
        assert "dry-run: would send POST /v1.41/images/hello:latest/tag?repo=dry%2Frun&tag=1" in log
        assert "dry-run: would send DELETE /v1.41/images/hello:latest?force=true&noprune=false" in log
        assert "dry-run: would send POST /v1.41/images/prune" in log


def test_fuzzed_writes_change_nothing_and_the_daemon_answers(mount: Mount, engine: Engine) -> None:
    rng = random.Random(1234)
    before = (engine.tags(), engine.image_ids())
    files = [mount / "hello:latest/tag", mount / "hello:latest/delete", mount / ".imagefs/prune",
             mount / "myorg/app:1.0/tag", mount / "myorg/app:1.0/delete"]
    sent = 0
    while sent < 300:
        data = rng.randbytes(rng.choice([1, 2, 5, 17, 64, 300, 5000]))
        if _valid_anywhere(data):
            continue  # a real command for some control file (b"0" tags as 0:latest): not fuzz
        target = rng.choice(files)
        assert write(target, data) == errno.EINVAL, (target, data)
        sent += 1
    assert (engine.tags(), engine.image_ids()) == before
    assert (mount / "hello:latest/inspect").read_bytes()


def _valid_anywhere(data: bytes) -> bool:
    for command in controls.COMMANDS.values():
        try:
            command.parse(controls.decode(data))
            return True
        except BadCommand:
            pass
    return False


def test_without_events_ttls_keep_it_coherent_and_lookups_never_hang(engine: Engine, tmp: Path) -> None:
    list_ttl = 1.0
    proxy = Proxy(engine.sock, tmp / "proxy.sock", refuse_events=True)
    try:
        with mounted(engine, tmp, "-H", f"unix://{tmp}/proxy.sock", "--list-ttl", str(list_ttl), "--debug",
                     expect=[r"^cannot follow engine events \(GET /v1\.41/events\?\S+: 500 events are off"]) as m:
            for _ in range(3):
                subprocess.run(["ls", "-l", str(m.path)], capture_output=True, timeout=10, check=True)
                engine.docker("tag", "busybox:latest", "noevents/x:1")
                time.sleep(list_ttl + 0.2)  # past the list TTL: the next lookup refreshes and invalidates
                # A lookup in the root whose refresh must drop root entries: it must not wait for that.
                subprocess.run(["stat", str(m / "nosuch:1")], capture_output=True, timeout=10)
                wait_for(lambda: "noevents" in os.listdir(m.path), timeout=2.5)
                engine.docker("rmi", "noevents/x:1")
                wait_for(lambda: "noevents" not in os.listdir(m.path), timeout=2.5)
            # Coherent above through TTLs alone: the follower asked for events again and again and
            # never got a stream (it would have logged that it follows them).
            log = m.log_text()
            assert len(re.findall(r"engine request GET /v1\.41/events\?", log)) >= 2
            assert "following engine events" not in log
    finally:
        proxy.close()
