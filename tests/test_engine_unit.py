"""The engine client's pure logic: addresses, TLS settings, version choice, status mapping.

httpx's MockTransport stands in for the engine only to check how answers are
mapped; every behaviour with a real engine is tested against dockerd elsewhere.
"""

from __future__ import annotations

import errno
import json

import httpx
import pytest
import trio

from imagefs.engine import Engine, EngineConfig
from imagefs.errors import Conflict, EngineUnreachable, NoSuchImage, errno_for


def test_address_precedence() -> None:
    env = {"DOCKER_HOST": "tcp://10.0.0.1:2375"}
    assert EngineConfig.from_options(env=env).host == "tcp://10.0.0.1:2375"
    assert EngineConfig.from_options(host="unix:///x.sock", env=env).host == "unix:///x.sock"
    assert EngineConfig.from_options(hostname="engine:2375", env=env).host == "http://engine:2375"
    assert EngineConfig.from_options(scheme="https", env={}).host == "https://localhost"
    assert EngineConfig.from_options(env={}).host == "unix:///var/run/docker.sock"


def test_transport_urls() -> None:
    assert EngineConfig(host="unix:///run/d.sock").transport_and_url()[1] == "http://docker"
    assert EngineConfig(host="tcp://h:2375").transport_and_url()[1] == "http://h:2375"
    assert EngineConfig(host="tcp://h").transport_and_url()[1] == "http://h:2375"
    assert EngineConfig(host="https://h/").transport_and_url()[1] == "https://h:443"
    assert EngineConfig(host="http://h:80/prefix/").transport_and_url()[1] == "http://h:80/prefix"
    with pytest.raises(ValueError, match="unsupported engine address"):
        EngineConfig(host="ssh://h").transport_and_url()


def test_tls_follows_the_docker_cli(tmp_path: object) -> None:
    env = {"DOCKER_TLS_VERIFY": "1", "DOCKER_CERT_PATH": "/certs"}
    config = EngineConfig.from_options(host="tcp://h:2376", env=env)
    assert config.tls_verify and config.tls_ca == "/certs/ca.pem" and config.tls_key == "/certs/key.pem"
    assert not EngineConfig.from_options(host="tcp://h:2375", env={}).tls_verify
    flags = EngineConfig.from_options(host="tcp://h:2376", tlsverify=True, tlscacert="/a/ca.pem", env={})
    assert flags.tls_verify and flags.tls_ca == "/a/ca.pem" and flags.tls_cert.endswith(".docker/cert.pem")


def _engine_answering(handler: object, **config: object) -> Engine:
    engine = Engine(EngineConfig(host="unix:///unused", **config))  # type: ignore[arg-type]
    engine._client = httpx.AsyncClient(transport=httpx.MockTransport(handler), base_url="http://docker")  # type: ignore[arg-type]
    return engine


@pytest.mark.parametrize(
    ("oldest", "newest", "chosen"),
    [("1.12", "1.41", "/v1.41"), ("1.24", "1.51", "/v1.41"), ("1.44", "1.51", "/v1.44"), ("1.12", "1.40", "/v1.40")],
)
def test_version_negotiation(oldest: str, newest: str, chosen: str) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/version"
        return httpx.Response(200, json={"ApiVersion": newest, "MinAPIVersion": oldest})

    assert trio.run(_engine_answering(handler).negotiate) == chosen


def test_pinned_base_path_asks_nothing() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise AssertionError("no request expected")

    assert trio.run(_engine_answering(handler, base_path="/v1.40").negotiate) == "/v1.40"


def test_errors_carry_the_engines_message() -> None:
    answers = {
        "/v1.41/images/x/json": (404, {"message": "No such image: x"}),
        "/v1.41/images/y": (409, {"message": "conflict: image is being used by running container abc"}),
    }

    def handler(request: httpx.Request) -> httpx.Response:
        status, body = answers[request.url.path]
        return httpx.Response(status, content=json.dumps(body).encode())

    async def main() -> None:
        engine = _engine_answering(handler)
        engine.api_path = "/v1.41"
        with pytest.raises(NoSuchImage) as missing:
            await engine.inspect("x")
        assert missing.value.message == "No such image: x" and errno_for(missing.value) == errno.ENOENT
        with pytest.raises(Conflict) as busy:
            await engine.delete("y")
        assert "running container abc" in busy.value.message and errno_for(busy.value) == errno.EBUSY

    trio.run(main)


def test_unreachable_engine_is_eio_never_enoent() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("[Errno 2] No such file or directory")

    async def main() -> None:
        with pytest.raises(EngineUnreachable) as info:
            await _engine_answering(handler).list_images()
        assert errno_for(info.value) == errno.EIO

    trio.run(main)


def test_dry_run_sends_no_mutation() -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.method)
        return httpx.Response(200, json=[])

    async def main() -> None:
        engine = _engine_answering(handler, dry_run=True)
        assert await engine.tag("a:1", "b", "2") is None
        assert await engine.delete("a:1") is None
        assert await engine.prune({}) is None
        assert await engine.list_images() == []

    trio.run(main)
    assert seen == ["GET"]
