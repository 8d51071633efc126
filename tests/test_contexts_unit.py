"""docker contexts as the docker CLI resolves them: which context is in use, what the store says
about it, and the engine configuration that results. The store is written here the way
`docker context create` writes it (test_contexts.py has the CLI write it for real)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from imagefs.engine import DEFAULT_HOST, EngineConfig, contexts


def make_context(config: Path, name: str, host: str, skip_tls_verify: bool = False,
                 tls_files: tuple[str, ...] = ()) -> Path:
    digest = hashlib.sha256(name.encode()).hexdigest()
    meta = config / "contexts" / "meta" / digest
    meta.mkdir(parents=True)
    (meta / "meta.json").write_text(json.dumps(
        {"Name": name, "Metadata": {}, "Endpoints": {"docker": {"Host": host, "SkipTLSVerify": skip_tls_verify}}}))
    tls = config / "contexts" / "tls" / digest / "docker"
    for file in tls_files:
        tls.mkdir(parents=True, exist_ok=True)
        (tls / file).write_text("PEM")
    return tls


@pytest.mark.parametrize(
    ("flag", "address_given", "env", "config", "name"),
    [
        ("prod", False, {"DOCKER_HOST": "unix:///x", "DOCKER_CONTEXT": "dev"}, "ci", "prod"),  # --context first
        (None, True, {"DOCKER_CONTEXT": "dev"}, "ci", "default"),  # then -H
        (None, False, {"DOCKER_HOST": "unix:///x", "DOCKER_CONTEXT": "dev"}, "ci", "default"),  # then DOCKER_HOST
        (None, False, {"DOCKER_HOST": "", "DOCKER_CONTEXT": "dev"}, "ci", "dev"),  # an empty variable is unset
        (None, False, {}, "ci", "ci"),  # then config.json's currentContext
        (None, False, {}, None, "default"),
        (None, False, {"DOCKER_CONTEXT": "default"}, "ci", "default"),
    ],
)
def test_the_context_in_use_is_the_clis(tmp_path: Path, flag: str | None, address_given: bool,
                                        env: dict[str, str], config: str | None, name: str) -> None:
    if config is not None:
        (tmp_path / "config.json").write_text(json.dumps({"auths": {}, "currentContext": config}))
    assert contexts.current(flag, address_given, {**env, "DOCKER_CONFIG": str(tmp_path)}) == name


def test_a_context_gives_the_host_and_its_tls_material(tmp_path: Path) -> None:
    env = {"DOCKER_CONFIG": str(tmp_path), "DOCKER_CONTEXT": "remote", "DOCKER_TLS_VERIFY": "1"}
    tls = make_context(tmp_path, "remote", "tcp://build-box:2376", tls_files=("ca.pem", "cert.pem", "key.pem"))
    config = EngineConfig.from_options(env=env)
    assert config.host == "tcp://build-box:2376" and config.tls_verify
    assert (config.tls_ca, config.tls_cert, config.tls_key) == (str(tls / "ca.pem"), str(tls / "cert.pem"),
                                                                 str(tls / "key.pem"))
    plain = EngineConfig.from_options(context="plain", env=make_env(tmp_path, "plain", "tcp://h:2375"))
    assert not plain.tls and not plain.tls_verify and plain.tls_ca is None  # the TLS variables play no part


def make_env(config: Path, name: str, host: str, skip_tls_verify: bool = False) -> dict[str, str]:
    make_context(config, name, host, skip_tls_verify)
    return {"DOCKER_CONFIG": str(config), "DOCKER_TLS_VERIFY": "1"}


def test_skip_tls_verify_is_tls_unchecked(tmp_path: Path) -> None:
    env = make_env(tmp_path, "lab", "tcp://lab:2376", skip_tls_verify=True)
    config = EngineConfig.from_options(context="lab", env=env)
    assert config.tls and not config.tls_verify
    assert config.endpoint().tls is not None and config.endpoint().port == 2376


def test_addresses_win_over_contexts_and_default_is_no_context(tmp_path: Path) -> None:
    env = {**make_env(tmp_path, "remote", "unix:///remote.sock"), "DOCKER_CONTEXT": "remote"}
    assert EngineConfig.from_options(env=env).host == "unix:///remote.sock"
    assert EngineConfig.from_options(host="unix:///flag.sock", env=env).host == "unix:///flag.sock"
    assert EngineConfig.from_options(hostname="h:1", env=env).host == "http://h:1"
    assert EngineConfig.from_options(env={**env, "DOCKER_HOST": "unix:///env.sock"}).host == "unix:///env.sock"
    assert EngineConfig.from_options(context="default", env=env).host == DEFAULT_HOST
    # As the CLI: --context names the context even when DOCKER_HOST is set.
    assert EngineConfig.from_options(context="remote", env={**env, "DOCKER_HOST": "unix:///e"}).host == \
        "unix:///remote.sock"


@pytest.mark.parametrize(
    ("setup", "reason"),
    [
        (lambda c: None, "docker context 'gone' not found"),
        (lambda c: make_context(c, "gone", ""), "docker context 'gone' has no docker endpoint host"),
        (lambda c: make_context(c, "gone", "tcp://h", tls_files=("cert.pem",)),
         "holds a client certificate or key without the other"),
        (lambda c: (c / "config.json").write_text("{"), "docker config"),
    ],
)
def test_a_context_that_cannot_be_used_says_why_in_one_line(tmp_path: Path, setup: Callable[[Path], object],
                                                            reason: str) -> None:
    setup(tmp_path)
    env = {"DOCKER_CONFIG": str(tmp_path)}
    name = None if reason == "docker config" else "gone"
    with pytest.raises(ValueError, match=reason) as info:
        EngineConfig.from_options(context=name, env=env)
    assert "\n" not in str(info.value)


def test_an_address_and_a_context_together_are_refused() -> None:
    with pytest.raises(ValueError, match="conflicting options"):
        EngineConfig.from_options(host="unix:///x", context="remote", env={})


def test_the_cert_path_defaults_to_the_docker_config_directory(tmp_path: Path) -> None:
    (tmp_path / "cert.pem").write_text("PEM")
    config = EngineConfig.from_options(host="tcp://h", tlsverify=True, env={"DOCKER_CONFIG": str(tmp_path)})
    assert config.tls_ca == str(tmp_path / "ca.pem") and config.tls_cert == str(tmp_path / "cert.pem")
