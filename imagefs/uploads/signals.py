"""What the kernel says of the process that opened an upload: killed, or asked to stop.

pyfuse3 hands `write` and `flush` no request context, so the opener's pid, taken at
open, is all there is; and pyfuse3 exposes no FUSE_INTERRUPT, so a signal sent to a
writer that waits in the daemon shows only in /proc until the daemon answers. Reads of
procfs are answered from memory: they do not block the loop.
"""

from __future__ import annotations

import os
import platform
import signal

PF_EXITING = 0x4  # include/linux/sched.h
PF_SIGNALED = 0x400  # the task is exiting because of a signal
# System calls that close a descriptor, by machine: a task blocked in one of them is the closer.
# (close, dup2/dup3, close_range, exit, exit_group, and execve/execveat, which close O_CLOEXEC ones)
_CLOSING = {"x86_64": {3, 33, 292, 436, 60, 231, 59, 322},
            "aarch64": {57, 24, 436, 93, 94, 221, 281}}.get(platform.machine())
# Signals whose default action ends the writer; a pending one means the writer wants out.
_ENDING = sum(1 << (s - 1) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGKILL))


def _flags(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        return int(fields[6])  # field 9: flags
    except (OSError, IndexError, ValueError):
        return 0


def killed(pid: int) -> bool:
    """The process is exiting because a signal killed it (a flush from a killed `cp`)."""
    return bool(_flags(pid) & PF_SIGNALED)


def closing(pid: int) -> bool:
    """Whether a close(2) (or the exit) of the process `pid` is what waits on us now.

    Every close of every copy of a descriptor flushes: a child that the writer forked
    flushes when it execs (even with O_CLOEXEC) or exits, while the writer writes on.
    Such a flush is not the writer's end. The writer's own is told by the writer being
    in a closing system call, or exiting. When /proc does not say (another user's task
    under Yama), every flush counts as the writer's, which is strict, never lax.
    """
    if _flags(pid) & PF_EXITING:
        return True
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
        calls = []
        for task in tasks:
            with open(f"/proc/{pid}/task/{task}/syscall", "rb") as f:
                calls.append(f.read().split(b" ", 1)[0])
    except OSError:
        return True
    if _CLOSING is None:
        return True
    return any(call.lstrip(b"-").isdigit() and int(call) in _CLOSING for call in calls)


def interrupted(pid: int) -> bool:
    """A signal that would end the process waits for it (Ctrl-C, kill, SIGKILL while it waits on us)."""
    masks: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                key, _, value = line.partition(b":")
                if key in (b"SigPnd", b"ShdPnd", b"SigBlk"):
                    masks[key.decode()] = int(value.strip(), 16)
    except (OSError, ValueError):
        return False
    pending = (masks.get("SigPnd", 0) | masks.get("ShdPnd", 0)) & _ENDING
    return bool(pending & ~masks.get("SigBlk", 0) or pending & (1 << (signal.SIGKILL - 1)))
