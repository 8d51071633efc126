"""Registry credentials as the docker CLI finds them, and the headers that carry them to the engine.

The CLI (cli@v20.10.24, the same in CLI 28) reads `$DOCKER_CONFIG/config.json` (else
`~/.docker/config.json`) each time it runs, so this module reads it for every operation: a
`docker login` during the mount counts at once. A registry's credentials come from
`credHelpers[host]`, else from the `credsStore` helper, else from the file's `auths`; a helper
is `docker-credential-<name>` speaking the credential-helper protocol (`get` with the server on
stdin, `list`). With a `credsStore` the file's user and password are not used, as in the CLI.

The engine takes them as base64 (URL-safe alphabet, padded) JSON: a standard-alphabet or unpadded
header is silently ignored by dockerd, and so is the file's `auth` field unless it is decoded into
`username`/`password` here. No credentials is `e30=` (`{}`), as the CLI sends. Nothing here logs a
credential or writes one anywhere; errors name the registry and the helper, never a secret.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from pathlib import Path
from typing import Any

import trio

from ..errors import CredentialsFailed
from ..references import DEFAULT_DOMAIN, LEGACY_DEFAULT_DOMAIN, normalized_name

HUB_KEY = "https://index.docker.io/v1/"  # Docker Hub's key in config.json and in the helpers
TOKEN_USERNAME = "<token>"  # a helper's username saying that the secret is an identity token
NOT_FOUND = "credentials not found in native keychain"  # a helper's "no entry", not a failure
HELPER_TIMEOUT = 10.0

AuthConfig = dict[str, str]


def config_dir() -> Path:
    return Path(os.environ.get("DOCKER_CONFIG") or Path.home() / ".docker")


def registry_key(reference: str) -> str:
    """The key the CLI stores a reference's credentials under: `host[:port]`, or Docker Hub's URL."""
    domain = normalized_name(reference.split("@", 1)[0]).split("/", 1)[0]
    return HUB_KEY if domain in (DEFAULT_DOMAIN, LEGACY_DEFAULT_DOMAIN) else domain


def hostname(key: str) -> str:
    """A config key as a host (the CLI's ConvertToHostname): `https://h:1/v2/` is `h:1`."""
    return key.removeprefix("http://").removeprefix("https://").split("/", 1)[0]


def encode(value: Any) -> str:
    """A header value as dockerd decodes it (Go's base64.URLEncoding: URL-safe, padded)."""
    return base64.urlsafe_b64encode(json.dumps(value, separators=(",", ":")).encode()).decode()


async def load_config() -> dict[str, Any]:
    """config.json now ({} when there is none)."""
    path = trio.Path(config_dir() / "config.json")
    try:
        text = await path.read_text()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise CredentialsFailed(f"cannot read {path}: {exc.strerror or exc}") from exc
    try:
        config = json.loads(text)
    except ValueError as exc:
        raise CredentialsFailed(f"{path} is not JSON: {exc}") from exc
    if not isinstance(config, dict):
        raise CredentialsFailed(f"{path} is not a JSON object")
    return config


async def registry_auth(reference: str, timeout: float = HELPER_TIMEOUT) -> str:
    """The X-Registry-Auth value for pulling or pushing `reference` (`e30=` without credentials)."""
    config = await load_config()
    return encode(await _credentials(config, registry_key(reference), timeout))


async def registry_config(timeout: float = HELPER_TIMEOUT) -> str:
    """The X-Registry-Config value for a build: every credential the CLI knows, by registry key.

    As the CLI's GetAllCredentials: all of the default store, then each `credHelpers` entry over it.
    """
    config = await load_config()
    store = config.get("credsStore")
    found: dict[str, AuthConfig] = {}
    if store:
        listed = await _helper(str(store), "list", "unused", timeout)
        for key in listed if isinstance(listed, dict) else ():
            found[key] = await _from_helper(str(store), key, config, timeout)
    else:
        found = {key: _from_file(config, key) for key in _auths(config)}
    for key, helper in _helpers(config).items():
        found[key] = await _from_helper(helper, key, config, timeout)
    return encode({key: auth for key, auth in found.items() if auth})


async def _credentials(config: dict[str, Any], key: str, timeout: float) -> AuthConfig:
    helper = _helpers(config).get(key) or config.get("credsStore")
    if helper:
        return await _from_helper(str(helper), key, config, timeout)
    return _from_file(config, key)


def _auths(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    auths = config.get("auths") or {}
    return {k: v for k, v in auths.items() if isinstance(v, dict)} if isinstance(auths, dict) else {}


def _helpers(config: dict[str, Any]) -> dict[str, str]:
    helpers = config.get("credHelpers") or {}
    return {str(k): str(v) for k, v in helpers.items() if v} if isinstance(helpers, dict) else {}


def _file_entry(config: dict[str, Any], key: str) -> tuple[str, dict[str, Any]] | None:
    """The file's entry for a key: the exact key, else one whose hostname is that key."""
    auths = _auths(config)
    if key in auths:
        return key, auths[key]
    return next(((k, v) for k, v in auths.items() if hostname(k) == key), None)


def _from_file(config: dict[str, Any], key: str) -> AuthConfig:
    found = _file_entry(config, key)
    if found is None:
        return {}
    address, entry = found
    auth: AuthConfig = {}
    if entry.get("auth"):
        try:
            user, _, password = base64.b64decode(str(entry["auth"]), validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError) as exc:
            raise CredentialsFailed(f"the 'auth' of {address} in config.json is not base64 user:password") from exc
        auth.update(username=user, password=password)
    for field in ("username", "password", "email", "identitytoken", "registrytoken"):
        if entry.get(field) and field not in auth:
            auth[field] = str(entry[field])
    if auth:
        auth["serveraddress"] = address
    return auth


async def _from_helper(helper: str, key: str, config: dict[str, Any], timeout: float) -> AuthConfig:
    """A helper's credentials for a key; of the file, only the e-mail is kept (the CLI's nativeStore)."""
    answer = await _helper(helper, "get", key, timeout)
    if not isinstance(answer, dict) or not answer.get("Secret"):
        return {}
    auth: AuthConfig = {"serveraddress": key}
    if answer.get("Username") == TOKEN_USERNAME:
        auth["identitytoken"] = str(answer["Secret"])
    else:
        auth.update(username=str(answer.get("Username") or ""), password=str(answer["Secret"]))
    found = _file_entry(config, key)
    if found is not None and found[1].get("email"):
        auth["email"] = str(found[1]["email"])
    return auth


async def _helper(name: str, action: str, stdin: str, timeout: float) -> Any:
    """One call of `docker-credential-<name>`: its JSON answer, or None when it has no such entry."""
    program = f"docker-credential-{name}"
    try:
        with trio.fail_after(timeout):
            done = await trio.run_process([program, action], stdin=stdin.encode(), capture_stdout=True,
                                          capture_stderr=True, check=False)
    except trio.TooSlowError as exc:
        raise CredentialsFailed(f"{program} {action} gave no answer within {timeout:g} s") from exc
    except OSError as exc:
        raise CredentialsFailed(f"cannot run {program}: {exc.strerror or exc}") from exc
    output = done.stdout.decode(errors="replace").strip()
    if done.returncode != 0:
        if NOT_FOUND in output:
            return None
        said = output or done.stderr.decode(errors="replace").strip()
        raise CredentialsFailed(f"{program} {action} failed (exit {done.returncode}): {said[:200]}")
    try:
        return json.loads(output)
    except ValueError as exc:
        raise CredentialsFailed(f"{program} {action} answered what is not JSON") from exc

