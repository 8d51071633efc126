"""Credentials as the docker CLI finds them: config.json, credential helpers, the headers' encoding."""

from __future__ import annotations

import base64
import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as hs

from imagefs.engine import auth
from imagefs.errors import CredentialsFailed


def decoded(header: str) -> Any:
    return json.loads(base64.urlsafe_b64decode(header.encode()))


def basic(user: str, password: str) -> str:
    return base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest.fixture
def docker_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "cfg"))
    (tmp_path / "cfg").mkdir()
    return tmp_path / "cfg"


def write_config(where: Path, config: dict[str, Any]) -> None:
    (where / "config.json").write_text(json.dumps(config))


def install_helper(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, entries: dict[str, tuple[str, str]],
                   exit_code: int = 0) -> Path:
    """A `docker-credential-<name>` on PATH answering from `entries`; it logs each call's action and stdin."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    calls = tmp_path / f"{name}.calls"
    script = bin_dir / f"docker-credential-{name}"
    script.write_text(
        "#!/usr/bin/env python3\nimport json, sys\n"
        f"entries = {entries!r}\n"
        "action, data = sys.argv[1], sys.stdin.read().strip()\n"
        f"open({str(calls)!r}, 'a').write(f'{{action}} [{{data}}]\\n')\n"
        f"if {exit_code}: print('helper broke'); sys.exit({exit_code})\n"
        "if action == 'list': print(json.dumps({k: v[0] for k, v in entries.items()})); sys.exit(0)\n"
        "if data not in entries: print('credentials not found in native keychain'); sys.exit(1)\n"
        "user, secret = entries[data]\n"
        "print(json.dumps({'ServerURL': data, 'Username': user, 'Secret': secret}))\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return calls


@pytest.mark.parametrize(("reference", "key"), [
    ("alpine", auth.HUB_KEY), ("alpine:3.19", auth.HUB_KEY), ("library/alpine:1", auth.HUB_KEY),
    ("docker.io/library/alpine:1", auth.HUB_KEY), ("index.docker.io/x/y", auth.HUB_KEY),
    ("acme/app:1", auth.HUB_KEY), ("127.0.0.1:5055/acme/app:1", "127.0.0.1:5055"),
    ("localhost/app", "localhost"), ("quay.io/org/app@sha256:" + "a" * 64, "quay.io"),
    ("localhost:5000/team/app:2", "localhost:5000"),
])
def test_the_registry_is_chosen_as_the_cli_does(reference: str, key: str) -> None:
    assert auth.registry_key(reference) == key


def test_no_config_is_no_credentials(docker_config: Path) -> None:
    assert trio.run(auth.registry_auth, "127.0.0.1:5000/a:1") == "e30="
    write_config(docker_config, {"auths": {"other:1": {"auth": basic("u", "p")}}})
    assert trio.run(auth.registry_auth, "127.0.0.1:5000/a:1") == "e30="
    assert decoded(trio.run(auth.registry_config)) == {"other:1": {
        "username": "u", "password": "p", "serveraddress": "other:1"}}


def test_the_files_auth_is_decoded_into_user_and_password(docker_config: Path) -> None:
    write_config(docker_config, {"auths": {
        "127.0.0.1:5000": {"auth": basic("alice", "s3:cr/et?>")},
        "https://index.docker.io/v1/": {"auth": basic("hub", "pw"), "email": "a@b"},
        "http://tok.example:1/v2/": {"identitytoken": "IDTOKEN"},
    }})
    assert decoded(trio.run(auth.registry_auth, "127.0.0.1:5000/team/app:1")) == {
        "username": "alice", "password": "s3:cr/et?>", "serveraddress": "127.0.0.1:5000"}
    assert decoded(trio.run(auth.registry_auth, "alpine")) == {
        "username": "hub", "password": "pw", "email": "a@b", "serveraddress": auth.HUB_KEY}
    # A key with scheme and path matches by its host name, as the CLI's file store does.
    assert decoded(trio.run(auth.registry_auth, "tok.example:1/x:1")) == {
        "identitytoken": "IDTOKEN", "serveraddress": "http://tok.example:1/v2/"}


def test_a_broken_config_is_eacces_and_names_no_secret(docker_config: Path) -> None:
    (docker_config / "config.json").write_text("{not json")
    with pytest.raises(CredentialsFailed, match="not JSON"):
        trio.run(auth.registry_auth, "x:1")
    write_config(docker_config, {"auths": {"h:1": {"auth": "s3cret-not-base64!"}}})
    with pytest.raises(CredentialsFailed) as caught:
        trio.run(auth.registry_auth, "h:1/x:1")
    assert "s3cret" not in str(caught.value)


def test_cred_helpers_and_the_store(docker_config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store_calls = install_helper(tmp_path, monkeypatch, "store", {"127.0.0.1:5001": ("bob", "pw1"),
                                                                  "tok.example:1": ("<token>", "IDTOK")})
    helper_calls = install_helper(tmp_path, monkeypatch, "one", {"127.0.0.1:5002": ("carol", "pw2")})
    write_config(docker_config, {
        "credsStore": "store", "credHelpers": {"127.0.0.1:5002": "one"},
        # With a store, the file's user and password are not used; only its e-mail is kept.
        "auths": {"127.0.0.1:5001": {"auth": basic("ignored", "ignored"), "email": "bob@x"},
                  "127.0.0.1:5003": {"auth": basic("ignored", "ignored")}},
    })
    assert decoded(trio.run(auth.registry_auth, "127.0.0.1:5001/a:1")) == {
        "username": "bob", "password": "pw1", "email": "bob@x", "serveraddress": "127.0.0.1:5001"}
    assert decoded(trio.run(auth.registry_auth, "127.0.0.1:5002/a:1")) == {
        "username": "carol", "password": "pw2", "serveraddress": "127.0.0.1:5002"}
    assert decoded(trio.run(auth.registry_auth, "tok.example:1/a:1")) == {
        "identitytoken": "IDTOK", "serveraddress": "tok.example:1"}
    assert trio.run(auth.registry_auth, "127.0.0.1:5003/a:1") == "e30="  # the store has none: none
    assert helper_calls.read_text() == "get [127.0.0.1:5002]\n"  # the server on stdin, as the protocol says
    assert decoded(trio.run(auth.registry_config)) == {
        "127.0.0.1:5001": {"username": "bob", "password": "pw1", "email": "bob@x", "serveraddress": "127.0.0.1:5001"},
        "tok.example:1": {"identitytoken": "IDTOK", "serveraddress": "tok.example:1"},
        "127.0.0.1:5002": {"username": "carol", "password": "pw2", "serveraddress": "127.0.0.1:5002"},
    }
    assert "list [unused]" in store_calls.read_text()


def test_a_helper_that_fails_or_is_missing_is_eacces(docker_config: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    install_helper(tmp_path, monkeypatch, "broken", {}, exit_code=3)
    write_config(docker_config, {"credHelpers": {"h:1": "broken", "h:2": "absent"}})
    with pytest.raises(CredentialsFailed, match=r"docker-credential-broken get failed \(exit 3\): helper broke"):
        trio.run(auth.registry_auth, "h:1/x:1")
    with pytest.raises(CredentialsFailed, match="cannot run docker-credential-absent"):
        trio.run(auth.registry_auth, "h:2/x:1")
    assert trio.run(auth.registry_auth, "h:3/x:1") == "e30="


@given(hs.dictionaries(hs.sampled_from(["username", "password", "serveraddress", "identitytoken"]),
                       hs.text(min_size=1, max_size=40)))
def test_headers_are_urlsafe_and_padded(value: dict[str, str]) -> None:
    header = auth.encode(value)
    assert "+" not in header and "/" not in header and len(header) % 4 == 0
    assert decoded(header) == value
