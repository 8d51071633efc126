"""imagefs mounted the way FUSE file systems are mounted from /etc/fstab (sshfs, rclone): `mount -T
FSTAB MOUNTPOINT` with a line of type fuse.NAME runs `mount.fuse3`, which runs the command NAME as
`NAME SOURCE MOUNTPOINT -o OPTIONS`; `umount MOUNTPOINT` ends it.

mount(8) gives its helpers no PATH, so the command must sit in the shell's default path: the test
puts a launcher of this checkout's imagefs under a name of its own in /usr/local/sbin (the README
links the installed `imagefs` to /usr/local/bin instead) and removes it afterwards.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import ROOT, Engine, pretty, unexpected_lines, wait_for

from imagefs.cli import pidfile

SAMPLE = "hello:latest"


@pytest.fixture
def fs_type() -> Iterator[str]:
    """`fuse.NAME` whose command NAME runs this checkout's imagefs."""
    name = f"imagefs-test-{secrets.token_hex(4)}"
    launcher = Path("/usr/local/sbin") / name
    launcher.write_text(f'#!/bin/sh\nPYTHONPATH={ROOT} exec {sys.executable} -m imagefs "$@"\n')
    launcher.chmod(0o755)
    try:
        yield f"fuse.{name}"
    finally:
        launcher.unlink()


def _gone(pid: int) -> bool:
    stat = Path(f"/proc/{pid}/stat")
    return not stat.exists() or stat.read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X")


@pytest.mark.parametrize("address_as", ["host-option", "source"])
def test_an_fstab_line_mounts_and_umount_unmounts(engine: Engine, tmp: Path, fs_type: str, address_as: str) -> None:
    mnt, cache, log = tmp / "images", tmp / "cache", tmp / "imagefs.log"
    mnt.mkdir()
    generic = "noauto,_netdev,nofail,x-systemd.automount,x-systemd.idle-timeout=60"
    own = f"cache-dir={cache},log-file={log},cache-size=2G,allow_other,read_only"
    source, opts = ("imagefs", f"host={engine.host},{own},{generic}") if address_as == "host-option" else \
        (engine.host, f"{own},{generic}")
    (tmp / "fstab").write_text(f"# a test fstab\n{source} {mnt} {fs_type} {opts} 0 0\n")
    result = subprocess.run(["mount", "-T", str(tmp / "fstab"), str(mnt)], capture_output=True, text=True,
                            timeout=60, env=engine.env())
    try:
        assert result.returncode == 0, result.stderr + (log.read_text() if log.exists() else "(no log)")
        assert os.path.ismount(mnt)
        assert (mnt / f"{SAMPLE}/inspect").read_bytes() == pretty(engine.api(f"/images/{SAMPLE}/json"))
        with pytest.raises(OSError):  # read_only reached the daemon
            (mnt / f"{SAMPLE}/tag").write_text("x:1\n")
        assert any(line.split()[1] == str(mnt) and "allow_other" in line.split()[3]
                   for line in Path("/proc/mounts").read_text().splitlines())
        pid = int(pidfile(mnt).read_text())
        assert subprocess.run(["umount", str(mnt)], capture_output=True, timeout=60).returncode == 0
        assert not os.path.ismount(mnt)
        wait_for(lambda: _gone(pid), timeout=15)
        assert not pidfile(mnt).exists()  # the daemon saw the unmount and cleaned up after itself
        assert not unexpected_lines(log.read_text(), ()), log.read_text()
    finally:
        if os.path.ismount(mnt):
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_an_option_imagefs_does_not_know_fails_the_mount_in_one_line(engine: Engine, tmp: Path,
                                                                     fs_type: str) -> None:
    mnt = tmp / "images"
    mnt.mkdir()
    (tmp / "fstab").write_text(f"imagefs {mnt} {fs_type} host={engine.host},cache-size=2G,colour=blue 0 0\n")
    result = subprocess.run(["mount", "-T", str(tmp / "fstab"), str(mnt)], capture_output=True, text=True,
                            timeout=60, env=engine.env())
    assert result.returncode != 0 and not os.path.ismount(mnt)
    assert "imagefs: mount option 'colour=blue': not an imagefs option" in result.stderr, result.stderr
