#!/usr/bin/env python3
"""Start and stop a private sshd on 127.0.0.1 that serves a private engine to `ssh://` clients.

Shared by the tests and the benchmark. Everything lives under one directory: the sshd's own
host key and config, a client key whose authorized_keys line sets DOCKER_HOST (so the remote
`docker system dial-stdio` reaches the private engine), and a client config. imagefs and the
docker CLI run plain `ssh`, which reads the config of the user's passwd home, not $HOME: a
directory with an `ssh` wrapper that adds `-F` that config is put first on PATH instead
(`Sshd.env`), so nothing of the machine's own ssh setup is touched.

    python3 scripts/private_sshd.py start DIR DOCKER_HOST   # prints the ssh:// address and PATH
    python3 scripts/private_sshd.py stop DIR

Only the standard library is used.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"
SSH = shutil.which("ssh") or "/usr/bin/ssh"


@dataclass(frozen=True)
class Sshd:
    root: Path
    port: int

    @property
    def address(self) -> str:
        return f"ssh://root@127.0.0.1:{self.port}"

    @property
    def path(self) -> str:
        """A PATH whose `ssh` uses this server's client config."""
        return f"{self.root / 'bin'}:{os.environ.get('PATH', '/usr/bin:/bin')}"

    def env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        return dict(os.environ if base is None else base, PATH=self.path)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _keygen(path: Path) -> str:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "imagefs-test", "-f", str(path)],
                   check=True, stdout=subprocess.DEVNULL)
    return (path.parent / (path.name + ".pub")).read_text().strip()


def start(root: Path, docker_host: str) -> Sshd:
    """An sshd on a free port of 127.0.0.1 whose client key's command reaches `docker_host`."""
    root.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    _keygen(root / "host_key")
    client = _keygen(root / "client_key")
    (root / "authorized_keys").write_text(f'environment="DOCKER_HOST={docker_host}" {client}\n')
    (root / "sshd_config").write_text(
        f"ListenAddress 127.0.0.1\nPort {port}\nHostKey {root / 'host_key'}\n"
        f"AuthorizedKeysFile {root / 'authorized_keys'}\nPidFile {root / 'sshd.pid'}\n"
        "AllowUsers root\nPermitUserEnvironment yes\nPermitRootLogin prohibit-password\nPasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\nMaxStartups 100\nMaxSessions 100\n"
    )
    host_key = (root / "host_key.pub").read_text().split()[:2]
    (root / "known_hosts").write_text(f"[127.0.0.1]:{port} {' '.join(host_key)}\n")
    (root / "ssh_config").write_text(
        f"Host 127.0.0.1\n  IdentityFile {root / 'client_key'}\n  IdentitiesOnly yes\n"
        f"  UserKnownHostsFile {root / 'known_hosts'}\n  StrictHostKeyChecking yes\n  LogLevel ERROR\n"
    )
    bindir = root / "bin"
    bindir.mkdir(exist_ok=True)
    wrapper = bindir / "ssh"
    wrapper.write_text(f'#!/bin/sh\nexec {SSH} -F {root / "ssh_config"} "$@"\n')
    wrapper.chmod(0o755)
    sshd = Sshd(root, port)
    listen(sshd)
    return sshd


def listen(sshd: Sshd) -> None:
    """Run the sshd made by `start` (again, after `stop(…, keep=True)`), on the same port."""
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation directory
    log = open(sshd.root / "sshd.log", "ab")  # noqa: SIM115 - handed to the child
    proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(sshd.root / "sshd_config")], stdout=log, stderr=log,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    (sshd.root / "sshd.pid").write_text(f"{proc.pid}\n")
    deadline = time.monotonic() + 15
    while not _listening(sshd.port):
        if proc.poll() is not None or time.monotonic() > deadline:
            sys.exit(f"sshd did not start; see {sshd.root / 'sshd.log'}")
        time.sleep(0.05)


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            return s.recv(4).startswith(b"SSH-")
    except OSError:
        return False


def stop(root: Path, keep: bool = False) -> None:
    """Stop the sshd's listener (its sessions end with their connections), and remove DIR unless `keep`."""
    try:
        pid = int((root / "sshd.pid").read_text())
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not _gone(pid):
            time.sleep(0.05)
    except (OSError, ValueError):
        pass
    if not keep:
        shutil.rmtree(root, ignore_errors=True)


def _gone(pid: int) -> bool:
    """Has the process exited? Reaps it when it is our child (a zombie still answers kill 0)."""
    try:
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return True
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=["start", "stop"])
    parser.add_argument("root")
    parser.add_argument("docker_host", nargs="?", default="unix:///var/run/docker.sock")
    args = parser.parse_args()
    root = Path(args.root).absolute()
    if args.action == "start":
        sshd = start(root, args.docker_host)
        print(sshd.address)
        print(f"PATH={sshd.path}")
    else:
        stop(root)


if __name__ == "__main__":
    main()
