"""`ssh://[user@]host[:port][/socket]` engines, as the docker CLI reaches them: each connection is
an `ssh … -- host docker system dial-stdio` process whose stdin and stdout carry the API.

The process's stdin and stdout are one end of a socket pair, and the connection is the other
end: a real socket, so both clients (httpx on trio, `bulkget`'s threads, its splice included)
and httpcore's idle check (`is_readable`) use it unchanged. One process per connection, as the
CLI does, rather than a ControlMaster of our own: ssh's own config, agent and known_hosts apply,
so a user's `ControlMaster auto` makes connections cheap (README), and nothing of ours lingers.

A watcher thread per process ends ssh once imagefs closes the connection (its end hangs up), and
keeps ssh's stderr: a refused login, an unknown host key or a remote `docker` that fails is told
in ssh's own words. It closes its copy of ssh's end only after ssh exited and that was recorded,
so the connection reaches its end of file only once `failure` can say why.
"""

from __future__ import annotations

import math
import os
import select
import shlex
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from urllib.parse import SplitResult, unquote

SSH = "ssh"  # found on PATH, as the docker CLI finds it
# The events stream may be silent for hours: a host that vanished is noticed within ~30 s (as the
# TCP keepalive of tcp:// engines), instead of when the kernel gives up on the ssh connection.
KEEPALIVE = ("-o", "ServerAliveInterval=10", "-o", "ServerAliveCountMax=3")
STDERR_KEPT = 4096  # bytes of ssh's stderr kept for the message
RECENT = 5.0  # seconds a failure stays the explanation of a connection that just ended
TERM_GRACE = 3.0  # seconds ssh has to exit after SIGTERM (the CLI's grace too) before SIGKILL


class _Failures:
    """The last ssh failure of one address, in ssh's words, and when; an ssh that worked clears it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last: tuple[str, float] | None = None

    def set(self, reason: str | None) -> None:
        with self._lock:
            self._last = None if reason is None else (reason, time.monotonic())

    def get(self, within: float) -> str | None:
        with self._lock:
            last = self._last
        return last[0] if last is not None and time.monotonic() - last[1] <= within else None


@dataclass(frozen=True)
class SshTarget:
    """Where `ssh` connects, and the socket the remote `docker` dials (its default when None)."""

    host: str
    user: str | None = None
    port: int | None = None
    socket_path: str | None = None
    _failures: _Failures = field(default_factory=_Failures, compare=False, repr=False)

    @classmethod
    def parse(cls, address: str, parts: SplitResult) -> SshTarget:
        """The docker CLI's rules: no password, no query, no fragment (ValueError with the reason)."""
        if parts.password is not None:
            raise ValueError(f"engine address {address!r}: a password in an ssh:// address is not supported")
        if parts.query or parts.fragment:
            raise ValueError(f"engine address {address!r}: an ssh:// address has no query or fragment")
        if not parts.hostname:
            raise ValueError(f"engine address {address!r} names no host")
        try:
            port = parts.port
        except ValueError:
            raise ValueError(f"engine address {address!r} has a bad port") from None
        path = unquote(parts.path) if parts.path.strip("/") else None  # decoded, as Go's url.URL has them
        return cls(parts.hostname, unquote(parts.username or "") or None, port, path)

    def argv(self, timeout: float | None) -> list[str]:
        """The ssh command line, as the CLI's (`cli/connhelper`), with our keepalive."""
        remote = ["docker", *([f"--host=unix://{self.socket_path}"] if self.socket_path else []),
                  "system", "dial-stdio"]
        connect = 30 if timeout is None else max(1, math.ceil(timeout))
        return [SSH, *(["-l", self.user] if self.user else []), *(["-p", str(self.port)] if self.port else []),
                "-o", f"ConnectTimeout={connect}", *KEEPALIVE, "-T", "--", self.host, shlex.join(remote)]

    def failure(self) -> str | None:
        """Why an ssh to this address failed just now, in ssh's words; None if none did (or one
        worked since). A connection's end is read only after its failure is recorded, so a
        failure just met is one of these: an older one tells nothing about it."""
        return self._failures.get(within=RECENT)

    def dial(self, timeout: float | None) -> socket.socket:
        """A socket whose peer is a new ssh process (blocking: for worker threads)."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            # A session of its own: the terminal's ^C is for the daemon, which then closes its connections.
            proc = subprocess.Popen(self.argv(timeout), stdin=theirs.fileno(), stdout=theirs.fileno(),
                                    stderr=subprocess.PIPE, start_new_session=True)
        except OSError as exc:
            ours.close()
            theirs.close()
            raise OSError(exc.errno, f"cannot run {SSH}: {exc.strerror}") from exc
        ours.settimeout(timeout)
        threading.Thread(target=_watch, args=(proc, theirs, self._failures), daemon=True,
                         name=f"ssh {proc.pid}").start()
        return ours


def _watch(proc: subprocess.Popen[bytes], theirs: socket.socket, failures: _Failures) -> None:
    """Until ssh exits: keep its stderr, end it when our end hangs up; then record how it ended."""
    assert proc.stderr is not None
    stderr = proc.stderr.fileno()
    os.set_blocking(stderr, False)
    kept = bytearray()
    ended_by_us = False
    pidfd = os.pidfd_open(proc.pid)
    try:
        waiting = select.poll()
        waiting.register(pidfd, select.POLLIN)
        waiting.register(stderr, select.POLLIN)
        waiting.register(theirs, select.POLLRDHUP)
        deadline: float | None = None  # milliseconds, once ssh was asked to end
        while True:
            ready = {fd for fd, _ in waiting.poll(deadline)}
            if pidfd in ready:
                break
            if not ready:  # SIGTERM was not enough
                proc.kill()
                deadline = None
                continue
            if stderr in ready and _drain(stderr, kept) is None:
                waiting.unregister(stderr)
            if not ended_by_us and _hung_up(theirs):
                waiting.unregister(theirs)
                ended_by_us = True
                proc.terminate()
                deadline = TERM_GRACE * 1000
        _drain(stderr, kept)
        code = proc.wait()
    finally:
        os.close(pidfd)
        proc.stderr.close()
    if not ended_by_us:
        failures.set(_reason(kept, code) if code else None)
    theirs.close()  # only now does our end read its end of file


def _drain(fd: int, kept: bytearray) -> int | None:
    """Read what `fd` has (the last STDERR_KEPT bytes stay in `kept`): None at its end."""
    while True:
        try:
            chunk = os.read(fd, 4096)
        except BlockingIOError:
            return 0
        except OSError:
            return None
        if not chunk:
            return None
        kept += chunk
        del kept[:-STDERR_KEPT]


def _hung_up(sock: socket.socket) -> bool:
    waiting = select.poll()
    waiting.register(sock, select.POLLRDHUP)
    return any(events & (select.POLLRDHUP | select.POLLHUP) for _, events in waiting.poll(0))


def _reason(stderr: bytearray, code: int) -> str:
    lines = [line.strip() for line in stderr.decode(errors="replace").splitlines() if line.strip()]
    said = lines[-1] if lines else f"exited with status {code}"
    return said if said.startswith("ssh: ") else f"ssh: {said}"

