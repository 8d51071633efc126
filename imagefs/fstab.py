"""`imagefs` as the helper of an fstab line of type `fuse.imagefs`: the command `mount.fuse3` runs.

For `imagefs /mnt/images fuse.imagefs host=unix:///run/x.sock,cache-size=2G,noauto,_netdev 0 0`,
mount(8) runs `mount.fuse3 imagefs /mnt/images -t fuse.imagefs -o …`, which drops the options
that are only mount(8)'s (noauto, _netdev, nofail, user, …), adds `dev,suid`, and runs
`imagefs SOURCE MOUNTPOINT -o OPTIONS` through /bin/sh (libfuse's util/mount.fuse.c). This
module turns that form into `mount OPTIONS MOUNTPOINT`: every mount option of imagefs by its
long name (`cache-size=2G`, `cache_size=2G`, a flag by its name alone), FUSE's spellings `ro`
and `allow_other`, the source as the engine address when it is one (`ssh://me@box`), and the
generic options that mean nothing to a FUSE file system ignored. Pure.
"""

from __future__ import annotations

from . import options

SUBCOMMANDS = frozenset({"mount", "umount"})
# What mount(8) and mount.fuse3 pass on that is the kernel's or mount(8)'s business, not imagefs's:
# imagefs never serves devices, setuid files or anything executable beyond what its modes say.
GENERIC = frozenset({
    "rw", "defaults", "dev", "nodev", "suid", "nosuid", "exec", "noexec", "auto", "noauto", "user", "users",
    "nouser", "owner", "group", "nofail", "_netdev", "atime", "noatime", "relatime", "norelatime", "strictatime",
    "diratime", "nodiratime", "lazytime", "nolazytime", "sync", "async", "silent", "loud",
})
FUSE_SPELLINGS = {"ro": "read-only", "allow_other": "allow-other"}
COMMAND_ONLY = frozenset({"foreground"})  # a helper that stayed in front would hold mount(8) up for ever


def is_helper_call(argv: list[str]) -> bool:
    """`SOURCE MOUNTPOINT …`, as mount.fuse3 runs it, rather than a subcommand."""
    return len(argv) >= 2 and argv[0] not in SUBCOMMANDS and not argv[0].startswith("-")


def mount_argv(argv: list[str]) -> list[str]:
    """The `imagefs` arguments for a helper call (ValueError with a one-line reason)."""
    source, mountpoint, rest = argv[0], argv[1], argv[2:]
    flags: list[str] = []
    while rest:
        if rest[0] != "-o" or len(rest) < 2:
            raise ValueError(f"mount helper: unexpected argument {rest[0]!r} (expected SOURCE MOUNTPOINT -o OPTIONS)")
        for item in filter(None, rest[1].split(",")):
            flags += _flag(item)
        rest = rest[2:]
    if "://" in source and "--host" not in flags:
        flags = ["--host", source, *flags]
    return ["mount", *flags, mountpoint]


def _flag(item: str) -> list[str]:
    name, has_value, value = item.partition("=")
    if name in GENERIC or name.startswith("x-") or name == "comment":
        return []
    name = FUSE_SPELLINGS.get(name, name).replace("_", "-")
    if name == "config" and has_value:
        return ["--config", value]
    option = options.BY_KEY.get(name.replace("-", "_"))
    if option is None or option.name in COMMAND_ONLY:
        raise ValueError(f"mount option {item!r}: not an imagefs option")
    if option.parse is options.flag:
        if has_value:
            raise ValueError(f"mount option {item!r}: {name} takes no value")
        return [option.flag]
    if not has_value:
        raise ValueError(f"mount option {item!r}: {name} needs a value ({name}=…)")
    return [option.flag, value]
