"""What the kernel says of the process that opened an upload: killed, or asked to stop.

pyfuse3 hands `write` and `flush` no request context, so the opener's pid, taken at
open, is all there is; and pyfuse3 exposes no FUSE_INTERRUPT, so a signal sent to a
writer that waits in the daemon shows only in /proc until the daemon answers. Reads of
procfs are answered from memory: they do not block the loop.
"""

from __future__ import annotations

import signal

PF_SIGNALED = 0x400  # the task is exiting because of a signal (include/linux/sched.h)
# Signals whose default action ends the writer; a pending one means the writer wants out.
_ENDING = sum(1 << (s - 1) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGKILL))


def killed(pid: int) -> bool:
    """The process is exiting because a signal killed it (a flush from a killed `cp`)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return False
    return len(fields) > 6 and bool(int(fields[6]) & PF_SIGNALED)  # field 9: flags


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
