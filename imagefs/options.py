"""Every mount option once: its name (the `--flag` and the config file's key), default, parser and help.

The command line, the config file and the defaults of `MountOptions` are all
built from these tables, so a default or a type is written in one place. A
default is written as a user would write it and goes through the same parser.
Pure: no I/O beyond reading the environment and checking that named files exist.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_SIZE = re.compile(r"(\d+(?:\.\d*)?)\s*(?:([KMGT])(?:I?B)?|B?)", re.IGNORECASE)
_UNITS = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def cache_home() -> str:
    return str(Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "imagefs")


# --- parsers: a flag's text or a config file's value -> the value used; ValueError says why not --------


def flag(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{value!r} is not true or false")
    return value


def text(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is not a string")
    return value


def path(value: Any) -> Path:
    return Path(text(value)).expanduser()


def existing_file(value: Any) -> str:
    # The docker CLI refuses a named certificate that is not there; the engine client would skip it.
    file = path(value)
    if not file.is_file():
        raise ValueError(f"{value!r}: no such file")
    return str(file)


def size(value: Any) -> int:
    """Bytes, from a count or from text such as 10G, 512M, 1.5GiB."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    m = _SIZE.fullmatch(value.strip()) if isinstance(value, str) else None
    if m is None:
        raise ValueError(f"{value!r} is not a size (e.g. 10G)")
    return int(float(m[1]) * _UNITS.get((m[2] or "").upper(), 1))


def seconds(value: Any) -> float:
    try:
        number = math.nan if isinstance(value, bool) else float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not number >= 0:  # NaN too
        raise ValueError(f"{value!r} is not a number of seconds")
    return number


def count(value: Any) -> int:
    try:
        number = -1 if isinstance(value, bool | float) else int(value)
    except (TypeError, ValueError):
        number = -1
    if number < 0:
        raise ValueError(f"{value!r} is not a count")
    return number


def one_of(*choices: str) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        if value not in choices:
            raise ValueError(f"{value!r} is not one of {', '.join(choices)}")
        return str(value)

    return parse


# --- the tables -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Option:
    """`--name` on the command line, `name = …` in the config file, `key` in the code."""

    name: str
    default: Any  # None: not set; a callable: computed when asked for
    parse: Callable[[Any], Any]
    help: str
    short: str | None = None
    metavar: str | None = None
    field: str | None = None  # the MountOptions field, where its name differs

    @property
    def key(self) -> str:
        return self.name.replace("-", "_")

    @property
    def flag(self) -> str:
        return "--" + self.name

    @property
    def dest(self) -> str:
        return self.field or self.key

    def default_value(self) -> Any:
        raw = self.default() if callable(self.default) else self.default
        return None if raw is None else self.parse(raw)

    def described(self) -> str:
        shown = self.default not in (None, False) and not callable(self.default)
        return f"{self.help} (default {self.default})" if shown else self.help


# The keyword arguments of EngineConfig.from_options; it applies $DOCKER_HOST and the TLS variables.
ENGINE = (
    Option("host", None, text, "engine address unix:///…, tcp://…, http(s)://…, ssh://… (else $DOCKER_HOST, "
           "else the engine's default socket)", short="-H", metavar="ADDRESS"),
    Option("context", None, text, "docker context to use (else $DOCKER_CONTEXT, else currentContext in "
           "$DOCKER_CONFIG/config.json); -H and $DOCKER_HOST win over contexts", metavar="NAME"),
    Option("hostname", None, text, "the seed's name of a TCP engine: SCHEME://HOSTNAME, when -H is not given",
           metavar="NAME"),
    Option("scheme", None, one_of("http", "https"), "the seed's scheme (with --hostname)", metavar="{http,https}"),
    Option("base-path", None, text, "API path to pin, e.g. /v1.41 (else 1.41 when the engine allows it)",
           metavar="PATH"),
    Option("tlsverify", None, flag, "use TLS and verify the engine (also $DOCKER_TLS_VERIFY)"),
    Option("tlscacert", None, existing_file, "CA certificate (default $DOCKER_CERT_PATH/ca.pem)", metavar="FILE"),
    Option("tlscert", None, existing_file, "client certificate (default $DOCKER_CERT_PATH/cert.pem)",
           metavar="FILE"),
    Option("tlskey", None, existing_file, "client key (default $DOCKER_CERT_PATH/key.pem)", metavar="FILE"),
    Option("timeout", 10, seconds, "seconds for each engine call", metavar="SECONDS"),
    Option("stream-timeout", 120, seconds, "longest silence inside an export stream", metavar="SECONDS"),
    Option("dry-run", False, flag, "control writes log the request they would send and send nothing"),
    Option("debug", False, flag, "log every engine request"),
)

# The fields of MountOptions.
MOUNT = (
    Option("read-only", False, flag, "every write is EROFS"),
    Option("allow-other", False, flag, "let other users in (with default_permissions)"),
    Option("cache-dir", cache_home, path, "export spool and remembered sizes "
           "(default $XDG_CACHE_HOME/imagefs, else ~/.cache/imagefs)", metavar="DIR"),
    Option("cache-size", "10G", size, "bound of the export spool", metavar="SIZE"),
    Option("list-ttl", 1, seconds, "seconds the image list is trusted while the events stream is down",
           metavar="SECONDS", field="fallback_ttl"),
    Option("live-ttl", 60, seconds, "seconds it is trusted while events flow", metavar="SECONDS"),
    Option("cache-ttl", 60, seconds, "seconds inspect/history answers are kept", metavar="SECONDS"),
    Option("cache-entries", 1024, count, "how many inspect/history answers are kept", metavar="N"),
)

# What the command itself does with the mount.
COMMAND = (
    Option("foreground", False, flag, "stay in front; log to stderr", short="-f"),
    Option("log-file", None, path, "where a background daemon logs (default $IMAGEFS_LOG, "
           "else CACHE_DIR/imagefs.log)", metavar="FILE"),
)

OPTIONS = ENGINE + MOUNT + COMMAND
BY_KEY = {option.key: option for option in OPTIONS}


def default(key: str) -> Any:
    """An option's default value, parsed."""
    return BY_KEY[key].default_value()


def defaults() -> dict[str, Any]:
    return {option.key: option.default_value() for option in OPTIONS}
