"""The fstab helper form `SOURCE MOUNTPOINT -o OPTIONS` (what mount.fuse3 runs for type fuse.imagefs)
as the `imagefs mount` arguments it stands for."""

from __future__ import annotations

import pytest

from imagefs import options
from imagefs.cli import build_parser
from imagefs.fstab import is_helper_call, mount_argv


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        # mount.fuse3's call for `imagefs /mnt/images fuse.imagefs host=unix:///run/x.sock,cache-size=2G,noauto,_netdev`
        (["imagefs", "/mnt/images", "-o", "host=unix:///run/x.sock,cache-size=2G,dev,suid"],
         ["mount", "--host", "unix:///run/x.sock", "--cache-size", "2G", "/mnt/images"]),
        (["ssh://me@box", "/m", "-o", "rw,ro,allow_other,x-systemd.automount,comment=x,cache_ttl=5"],
         ["mount", "--host", "ssh://me@box", "--read-only", "--allow-other", "--cache-ttl", "5", "/m"]),
        (["unix:///a.sock", "/m", "-o", "host=unix:///b.sock"], ["mount", "--host", "unix:///b.sock", "/m"]),
        (["imagefs", "/m"], ["mount", "/m"]),
        (["imagefs", "/m", "-o", "config=/etc/imagefs.toml,context=prod,debug"],
         ["mount", "--config", "/etc/imagefs.toml", "--context", "prod", "--debug", "/m"]),
    ],
)
def test_helper_calls_become_mount_commands(argv: list[str], expected: list[str]) -> None:
    assert is_helper_call(argv)
    assert mount_argv(argv) == expected
    build_parser().parse_args(expected)  # and the CLI takes them


@pytest.mark.parametrize(
    ("argv", "reason"),
    [
        (["imagefs", "/m", "-o", "colour=blue"], "'colour=blue': not an imagefs option"),
        (["imagefs", "/m", "-o", "foreground"], "'foreground': not an imagefs option"),
        (["imagefs", "/m", "-o", "debug=yes"], "debug takes no value"),
        (["imagefs", "/m", "-o", "cache-size"], "cache-size needs a value"),
        (["imagefs", "/m", "-v"], "unexpected argument '-v'"),
    ],
)
def test_a_bad_helper_call_says_why(argv: list[str], reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        mount_argv(argv)


def test_subcommands_and_flags_are_no_helper_calls() -> None:
    assert not is_helper_call(["mount", "/m"]) and not is_helper_call(["umount", "/m"])
    assert not is_helper_call(["--help"]) and not is_helper_call(["imagefs"])


@pytest.mark.parametrize("option", [o for o in options.OPTIONS if o.name != "foreground"], ids=lambda o: o.name)
def test_every_option_has_its_mount_option(option: options.Option) -> None:
    value = [] if option.parse is options.flag else ["1"]
    item = option.name + ("=1" if value else "")
    assert mount_argv(["imagefs", "/m", "-o", item]) == ["mount", option.flag, *value, "/m"]
