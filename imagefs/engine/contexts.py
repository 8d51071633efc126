"""docker contexts, resolved as the docker CLI resolves them (`cli/command/cli.go`, `cli/context/`).

Which context: `--context`, else `default` when an address was given (`-H`, the seed's
--hostname/--scheme) or `$DOCKER_HOST` is set, else `$DOCKER_CONTEXT`, else config.json's
`currentContext`, else `default`. `default` is no context: the flags, the environment and
the default socket decide, as without contexts. Any other name is read from the context
store under `$DOCKER_CONFIG` (default `~/.docker`):

    contexts/meta/<sha256(name)>/meta.json        {"Endpoints": {"docker": {"Host", "SkipTLSVerify"}}}
    contexts/tls/<sha256(name)>/docker/{ca,cert,key}.pem

As the CLI: with TLS material the connection is TLS, verified unless SkipTLSVerify (against
ca.pem, else the system's CAs), and the TLS flags and variables play no part. Pure but for
reading those files; every problem is a ValueError whose text is one line.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT = "default"


def config_dir(env: Mapping[str, str]) -> Path:
    """The docker CLI's configuration directory: $DOCKER_CONFIG, else ~/.docker."""
    return Path(env.get("DOCKER_CONFIG") or Path.home() / ".docker")


def current(flag: str | None, address_given: bool, env: Mapping[str, str]) -> str:
    """The name of the context in use (`cli/command/cli.go` resolveContextName)."""
    if flag:
        return flag
    if address_given or env.get("DOCKER_HOST"):
        return DEFAULT
    if env.get("DOCKER_CONTEXT"):
        return env["DOCKER_CONTEXT"]
    return _current_in_config(config_dir(env) / "config.json") or DEFAULT


@dataclass(frozen=True)
class ContextEndpoint:
    """A context's docker endpoint: its address, and its TLS settings as files to read."""

    name: str
    host: str
    tls: bool  # TLS material, or SkipTLSVerify: the connection is TLS
    verify: bool
    ca: str | None
    cert: str | None
    key: str | None


def load(name: str, env: Mapping[str, str]) -> ContextEndpoint:
    """The docker endpoint of context `name` from the store (not `default`, which is no context)."""
    store = config_dir(env) / "contexts"
    digest = hashlib.sha256(name.encode()).hexdigest()
    meta_path = store / "meta" / digest / "meta.json"
    try:
        meta = json.loads(meta_path.read_text())
    except FileNotFoundError:
        raise ValueError(f"docker context {name!r} not found (no {meta_path})") from None
    except (OSError, ValueError) as exc:
        raise ValueError(f"docker context {name!r}: {meta_path}: {exc}") from None
    docker = _field(meta, "Endpoints", dict).get("docker")
    host = docker.get("Host") if isinstance(docker, dict) else None
    if not isinstance(host, str) or not host:
        raise ValueError(f"docker context {name!r} has no docker endpoint host ({meta_path})")
    skip = bool(docker.get("SkipTLSVerify")) if isinstance(docker, dict) else False
    tls_dir = store / "tls" / digest / "docker"
    ca, cert, key = (str(p) if p.is_file() else None for p in (tls_dir / f for f in ("ca.pem", "cert.pem", "key.pem")))
    if (cert is None) != (key is None):
        raise ValueError(f"docker context {name!r}: {tls_dir} holds a client certificate or key without the other")
    has_tls = ca is not None or cert is not None
    return ContextEndpoint(name, host, has_tls or skip, has_tls and not skip, ca, cert, key)


def _current_in_config(path: Path) -> str | None:
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise ValueError(f"docker config {path}: {exc}") from None
    name = _field(config, "currentContext", str) if isinstance(config, dict) else None
    return name or None


def _field(doc: Any, key: str, kind: type) -> Any:
    value = doc.get(key) if isinstance(doc, dict) else None
    return value if isinstance(value, kind) else kind()
