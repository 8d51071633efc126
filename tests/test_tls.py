"""A real `--tlsverify` dockerd on 127.0.0.1 (SPEC §9): the tree, a byte-exact export (the buffered
path: TLS cannot splice) and a control write through it, with the certificates given as flags or
as the docker CLI's environment; and certificate problems, each one line at mount, at once.

The CA, server and client certificates are made with `openssl` here. The test also drives the same
engine through its unix socket, which has no TLS, to compare against.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import IMAGEFS, Client, Engine, mounted, pretty, private_engine, wait_for
from test_control_files import write

SAMPLE = "hello:latest"
EC_KEY = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2"]


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def _certificates(where: Path, ca: str) -> None:
    """`ca`.pem and its key; a server certificate for 127.0.0.1 and a client one, both signed by it."""
    _openssl("req", "-x509", *EC_KEY, "-subj", f"/CN={ca}", "-keyout", str(where / f"{ca}-key.pem"),
             "-out", str(where / f"{ca}.pem"))
    for who, usage in (("server", "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n"),
                       ("client", "extendedKeyUsage=clientAuth\n")):
        (where / f"{who}.ext").write_text(usage)
        _openssl("req", *EC_KEY, "-subj", f"/CN={who}", "-keyout", str(where / f"{ca}-{who}-key.pem"),
                 "-out", str(where / f"{who}.csr"))
        _openssl("x509", "-req", "-in", str(where / f"{who}.csr"), "-CA", str(where / f"{ca}.pem"),
                 "-CAkey", str(where / f"{ca}-key.pem"), "-CAcreateserial", "-days", "2",
                 "-extfile", str(where / f"{who}.ext"), "-out", str(where / f"{ca}-{who}-cert.pem"))


@dataclass
class TlsEngine(Client):
    """The TLS engine: its tcp:// address and the certificates made for it."""

    address: str = ""
    certs: Path = Path()

    def cert(self, name: str) -> str:
        return str(self.certs / name)


@pytest.fixture(scope="module")
def tls_engine(engine: Engine) -> Iterator[TlsEngine]:
    """A private dockerd that speaks TLS on 127.0.0.1 (and plain HTTP on its unix socket), holding one sample."""
    if not shutil.which("openssl"):
        pytest.fail("openssl is missing: run scripts/setup.sh --test")
    root = Path(tempfile.mkdtemp(prefix="ifs-tls-", dir="/tmp"))
    certs = root / "certs"
    certs.mkdir()
    _certificates(certs, "ca")
    _certificates(certs, "other")  # a CA the engine does not know, with a client certificate of its own
    port = _free_port()
    try:
        private_engine.start(root / "engine", samples=False, extra=[
            "--tlsverify", "--tlscacert", str(certs / "ca.pem"), "--tlscert", str(certs / "ca-server-cert.pem"),
            "--tlskey", str(certs / "ca-server-key.pem"), "--host", f"tcp://127.0.0.1:{port}"])
        tls = TlsEngine(root / "engine", address=f"tcp://127.0.0.1:{port}", certs=certs)
        subprocess.run([private_engine.DOCKER, "load", "-q"], input=engine.save(SAMPLE), env=tls.env(),
                       check=True, capture_output=True, timeout=120)
        yield tls
    finally:
        private_engine.stop(root / "engine")
        shutil.rmtree(root, ignore_errors=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_tlsverify_engine_serves_the_tree_exports_and_control_writes(tls_engine: TlsEngine, tmp: Path) -> None:
    flags = ["-H", tls_engine.address, "--tlsverify", "--tlscacert", tls_engine.cert("ca.pem"),
             "--tlscert", tls_engine.cert("ca-client-cert.pem"), "--tlskey", tls_engine.cert("ca-client-key.pem")]
    with mounted(tls_engine, tmp, *flags) as m:
        assert SAMPLE in os.listdir(m.path)
        assert (m / f"{SAMPLE}/inspect").read_bytes() == pretty(tls_engine.api(f"/images/{SAMPLE}/json"))
        assert (m / f"{SAMPLE}/export.tar").read_bytes() == tls_engine.save(SAMPLE)
        assert write(m / f"{SAMPLE}/tag", "over/tls:1\n") == 0
        assert "over/tls:1" in tls_engine.tags() and (m / "over/tls:1").is_dir()
        tls_engine.docker("tag", SAMPLE, "by/others:1")
        wait_for(lambda: (m / "by/others:1").exists(), timeout=1.0)  # the events stream is on TLS too
        assert f"engine {tls_engine.address}" in m.log_text()


def test_the_docker_cli_environment_gives_the_certificates(tls_engine: TlsEngine, tmp: Path) -> None:
    """DOCKER_HOST, DOCKER_TLS_VERIFY and DOCKER_CERT_PATH (ca.pem, cert.pem, key.pem), as the CLI reads them."""
    cert_path = tmp / "docker-certs"
    cert_path.mkdir()
    for ours, theirs in (("ca.pem", "ca.pem"), ("ca-client-cert.pem", "cert.pem"), ("ca-client-key.pem", "key.pem")):
        shutil.copy(tls_engine.cert(ours), cert_path / theirs)
    env = {"DOCKER_HOST": tls_engine.address, "DOCKER_TLS_VERIFY": "1", "DOCKER_CERT_PATH": str(cert_path)}
    client = Client(tls_engine.root, extra=dict(env))
    assert client.docker("version", "--format", "{{.Server.Version}}").stdout.strip()  # the CLI agrees
    with mounted(client, tmp) as m:
        assert (m / f"{SAMPLE}/inspect").read_bytes() == pretty(tls_engine.api(f"/images/{SAMPLE}/json"))


@pytest.mark.parametrize(
    ("certs", "problem"),
    [
        ({"--tlscacert": "other.pem", "--tlscert": "ca-client-cert.pem", "--tlskey": "ca-client-key.pem"},
         "the engine's certificate is not trusted by the CA certificate {certs}/other.pem "
         "(unable to get local issuer certificate)"),
        ({"--tlscacert": "ca.pem"}, "the engine wants a client certificate and none was given"),
        ({"--tlscacert": "ca.pem", "--tlscert": "other-client-cert.pem", "--tlskey": "other-client-key.pem"},
         "the engine refused the client certificate {certs}/other-client-cert.pem"),
    ],
    ids=["wrong-ca", "no-client-certificate", "client-certificate-of-another-ca"],
)
def test_a_certificate_problem_is_one_line_at_mount(tls_engine: TlsEngine, tmp: Path, certs: dict[str, str],
                                                     problem: str) -> None:
    (tmp / "mnt").mkdir()
    flags = [part for flag, name in certs.items() for part in (flag, tls_engine.cert(name))]
    start = time.monotonic()
    result = subprocess.run([*IMAGEFS, "mount", "-H", tls_engine.address, "--tlsverify", *flags, "--cache-dir",
                             str(tmp / "cache"), str(tmp / "mnt")], capture_output=True, text=True, timeout=60,
                            env=dict(os.environ, DOCKER_CERT_PATH=str(tmp / "none")))
    assert time.monotonic() - start < 10 and not os.path.ismount(tmp / "mnt")
    assert result.returncode == 1 and result.stderr.count("\n") == 1, result.stderr
    expected = (f"imagefs: cannot reach the Docker engine at {tls_engine.address}: TLS: "
                + problem.format(certs=tls_engine.certs))
    assert result.stderr.startswith(expected), result.stderr


def test_a_docker_context_gives_the_certificates(tls_engine: TlsEngine, tmp: Path) -> None:
    """The context's own copy of its TLS material (contexts/tls/…), whatever the TLS variables say."""
    config = tmp / "docker-config"
    user = Client(tls_engine.root, extra={"DOCKER_HOST": None, "DOCKER_CONFIG": str(config),
                                          "DOCKER_CERT_PATH": str(tmp / "none"), "DOCKER_TLS_VERIFY": None})
    user.docker("context", "create", "secure", "--docker",
                f"host={tls_engine.address},ca={tls_engine.cert('ca.pem')},"
                f"cert={tls_engine.cert('ca-client-cert.pem')},key={tls_engine.cert('ca-client-key.pem')}")
    with mounted(user, tmp, "--context", "secure") as m:
        assert (m / f"{SAMPLE}/inspect").read_bytes() == pretty(tls_engine.api(f"/images/{SAMPLE}/json"))
