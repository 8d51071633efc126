"""ssh:// engines (SPEC §9) through a real sshd on 127.0.0.1 whose key runs `docker system dial-stdio`
against the private engine: the tree, inspect and export byte-exact to the engine's API, others'
changes within a second, a refused host in one line, and the daemon's return after ssh drops.

imagefs runs plain `ssh`; `private_sshd` puts a wrapper first on PATH that gives it this sshd's
client config (key, known_hosts), the way a user's ~/.ssh/config would.
"""

from __future__ import annotations

import errno
import os
import signal
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import private_sshd
import pytest
from conftest import IMAGEFS, Client, Engine, mounted, pretty, wait_for
from test_control_files import write

SAMPLE = "localhost:5000/team/app:2"


@dataclass
class SshClient(Client):
    """The engine as an ssh:// client sees it: `ssh` on PATH reaches it through `sshd`."""

    sshd: private_sshd.Sshd | None = None


def _serving(engine: Engine) -> Iterator[SshClient]:
    root = Path(tempfile.mkdtemp(prefix="ifs-ssh-", dir="/tmp"))
    try:
        sshd = private_sshd.start(root, engine.host)
        yield SshClient(engine.root, extra={"PATH": sshd.path}, sshd=sshd)
    finally:
        private_sshd.stop(root)


@pytest.fixture(scope="module")
def over_ssh(engine: Engine) -> Iterator[SshClient]:
    yield from _serving(engine)


@pytest.fixture
def own_sshd(engine: Engine) -> Iterator[SshClient]:
    """An sshd of this test's own, which it may stop and start again."""
    yield from _serving(engine)


def _address(client: SshClient) -> str:
    assert client.sshd is not None
    return client.sshd.address


def _ssh_children(pid: int) -> list[int]:
    """The ssh processes the daemon `pid` runs (one per connection)."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
            comm = (proc / "comm").read_text().strip()
        except (OSError, IndexError):
            continue
        if fields[1] == str(pid) and comm == "ssh":
            found.append(int(proc.name))
    return found


def test_an_ssh_engine_serves_the_tree_exports_and_changes(over_ssh: SshClient, tmp: Path) -> None:
    with mounted(over_ssh, tmp, "-H", _address(over_ssh)) as m:
        assert over_ssh.tags() <= {str(p.relative_to(m.path)) for p in m.path.glob("**/*:*")}
        assert (m / f"{SAMPLE}/inspect").read_bytes() == pretty(over_ssh.api(f"/images/{SAMPLE}/json"))
        assert (m / f"{SAMPLE}/export.tar").read_bytes() == over_ssh.save(SAMPLE)
        try:
            over_ssh.docker("tag", SAMPLE, "over/ssh:1")
            wait_for(lambda: (m / "over/ssh:1").exists(), timeout=1.0)  # the events stream, through ssh
            assert write(m / f"{SAMPLE}/tag", "over/ssh:2\n") == 0 and "over/ssh:2" in over_ssh.tags()
        finally:
            over_ssh.docker("rmi", "over/ssh:1", "over/ssh:2", check=False)
        assert f"engine {_address(over_ssh)}" in m.log_text()
        assert _ssh_children(m.pid)  # each connection its own ssh, kept while the pool keeps it


@pytest.mark.parametrize(
    ("user", "said"),
    [("root", "ssh: connect to host 127.0.0.1 port {port}: Connection refused"),
     ("nobody", "ssh: nobody@127.0.0.1: Permission denied (publickey).")],
    ids=["no-sshd", "login-refused"],
)
def test_a_host_that_refuses_is_ssh_s_own_line_at_mount(over_ssh: SshClient, tmp: Path, user: str,
                                                         said: str) -> None:
    assert over_ssh.sshd is not None
    port = over_ssh.sshd.port if user != "root" else _closed_port()
    (tmp / "mnt").mkdir()
    address = f"ssh://{user}@127.0.0.1:{port}"
    result = subprocess.run([*IMAGEFS, "mount", "-H", address, "--cache-dir", str(tmp / "cache"), str(tmp / "mnt")],
                            capture_output=True, text=True, timeout=60, env=over_ssh.env())
    assert result.returncode == 1 and not os.path.ismount(tmp / "mnt")
    assert result.stderr == (f"imagefs: cannot reach the Docker engine at {address}: GET /version: "
                             f"{said.format(port=port)}\n"), result.stderr


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_after_ssh_drops_the_daemon_fails_with_eio_then_comes_back(own_sshd: SshClient, tmp: Path) -> None:
    assert own_sshd.sshd is not None
    expect = [r"events stream down .*ssh: ", r"cannot follow engine events .*ssh: ", r"GET .*: ssh: "]
    with mounted(own_sshd, tmp, "-H", _address(own_sshd), "--list-ttl", "0", "--cache-ttl", "0",
                 expect=expect) as m:
        assert (m / SAMPLE).is_dir()
        private_sshd.stop(own_sshd.sshd.root, keep=True)  # new logins are refused; live sessions go on
        for pid in _ssh_children(m.pid):
            os.kill(pid, signal.SIGKILL)  # the connections drop, the events stream with them
        with pytest.raises(OSError) as info:
            (m / f"{SAMPLE}/inspect").read_bytes()
        assert info.value.errno == errno.EIO
        private_sshd.listen(own_sshd.sshd)
        try:
            own_sshd.docker("tag", SAMPLE, "back/ssh:1")
            wait_for(lambda: (m / "back/ssh:1").exists(), timeout=10)
        finally:
            own_sshd.docker("rmi", "back/ssh:1", check=False)
        assert (m / f"{SAMPLE}/inspect").read_bytes() == pretty(own_sshd.api(f"/images/{SAMPLE}/json"))
