"""docker contexts made by the docker CLI itself (SPEC §9): `DOCKER_CONTEXT`, `docker context use`
and `--context` mount the context's engine when neither -H nor DOCKER_HOST is given.

The contexts live in a private DOCKER_CONFIG, never in the machine's ~/.docker."""

from __future__ import annotations

from pathlib import Path

from conftest import Client, Engine, mounted, pretty

SAMPLE = "hello:latest"


def _client(engine: Engine, config: Path, **extra: str | None) -> Client:
    """The engine as a user without DOCKER_HOST sees it, with contexts in `config`."""
    return Client(engine.root, extra={"DOCKER_HOST": None, "DOCKER_CONTEXT": None, "DOCKER_CONFIG": str(config),
                                      **extra})


def test_the_context_in_use_is_mounted(engine: Engine, tmp: Path) -> None:
    config = tmp / "docker-config"
    user = _client(engine, config)
    user.docker("context", "create", "private", "--docker", f"host={engine.host}")
    inspect = pretty(engine.api(f"/images/{SAMPLE}/json"))
    with mounted(_client(engine, config, DOCKER_CONTEXT="private"), tmp) as m:
        assert (m / f"{SAMPLE}/inspect").read_bytes() == inspect
        assert f"engine {engine.host}" in m.log_text()
    with mounted(user, tmp, "--context", "private") as m:
        assert (m / f"{SAMPLE}/inspect").read_bytes() == inspect
    user.docker("context", "use", "private")
    assert '"currentContext": "private"' in (config / "config.json").read_text()
    with mounted(user, tmp) as m:  # no -H, no DOCKER_HOST, no DOCKER_CONTEXT: config.json's currentContext
        assert (m / f"{SAMPLE}/inspect").read_bytes() == inspect
