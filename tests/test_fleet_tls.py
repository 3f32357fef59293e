"""The fleet over TLS (rediss://) with an ACL user, against a real redis-server listening on
TLS only: a throwaway CA and server certificate made with `openssl` in a temp dir. The
server's certificate is verified (chain and host name); a wrong CA is refused, clearly."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from daemon_fixture import Blockerd, check_config, poll, short_directory
from redis_server import RedisServer, redis_server
from test_fleet_redis import ACL, KEY, event, fleet_config, fleet_status

from blocker.fleet.redis_transport import RedisTransport
from blocker.fleet.transport import START, TransportError

PASSWORD = "tls-s3cret-pass"
CA_EXTENSIONS = (
    "-addext",
    "basicConstraints=critical,CA:TRUE",
    "-addext",
    "keyUsage=critical,keyCertSign,cRLSign",
)
SERVER_EXTENSIONS = """
basicConstraints = CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
"""


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_ca(directory: Path, name: str) -> Path:
    openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", f"{name}.key", "-out", f"{name}.pem", "-days", "2", "-subj", f"/CN={name}",
        *CA_EXTENSIONS,
        cwd=directory,
    )  # fmt: skip
    return directory / f"{name}.pem"


@dataclass
class Pki:
    ca: Path
    wrong_ca: Path
    cert: Path
    key: Path


def make_pki(directory: Path) -> Pki:
    """A CA, a server certificate it signs for DNS:localhost, and an unrelated CA."""
    ca = make_ca(directory, "fleet-ca")
    wrong = make_ca(directory, "other-ca")
    (directory / "server.ext").write_text(SERVER_EXTENSIONS)
    openssl(
        "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost",
        cwd=directory,
    )  # fmt: skip
    openssl(
        "x509", "-req", "-in", "server.csr", "-CA", ca.name, "-CAkey", "fleet-ca.key",
        "-CAcreateserial", "-out", "server.pem", "-days", "2", "-extfile", "server.ext",
        cwd=directory,
    )  # fmt: skip
    os.chmod(directory / "server.key", 0o600)
    return Pki(ca, wrong, directory / "server.pem", directory / "server.key")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class TlsRedis:
    server: RedisServer
    pki: Pki
    port: int

    def url(self, host: str = "localhost") -> str:
        return f"rediss://{host}:{self.port}/0"


@pytest.fixture(scope="module")
def tls_redis() -> Iterator[TlsRedis]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    with short_directory() as root:
        pki = make_pki(root)
        port = free_port()
        # TLS only on TCP (--port 0: no plain TCP listener); the helper's Unix socket (mode
        # 0700, in a private temp dir) is how it checks that the server is up.
        with redis_server(
            "--bind", "127.0.0.1",
            "--tls-port", str(port),
            "--tls-cert-file", str(pki.cert),
            "--tls-key-file", str(pki.key),
            "--tls-ca-cert-file", str(pki.ca),
            "--tls-auth-clients", "no",
            "--user", "default", "off",
            "--user", "blocker", "on", f">{PASSWORD}", *ACL,
        ) as server:  # fmt: skip
            yield TlsRedis(server, pki, port)


def transport(url: str, ca: Path | None, password: str = PASSWORD) -> RedisTransport:
    return RedisTransport(
        url,
        key=KEY,
        username="blocker",
        password=password,
        ca_file=None if ca is None else str(ca),
        read_timeout=5,
    )


def test_tls_verifies_the_server_and_the_acl_user_works(tls_redis: TlsRedis) -> None:
    good = transport(tls_redis.url(), tls_redis.pki.ca)
    try:
        good.publish([event("203.0.113.70", 70)], time.time())
        assert len(good.read(START, 0.1, 10)) == 1
    finally:
        good.close()
    refused = {
        "a CA that did not sign it": transport(tls_redis.url(), tls_redis.pki.wrong_ca),
        "the system's CAs": transport(tls_redis.url(), None),
        "a host name not in it": transport(tls_redis.url("127.0.0.1"), tls_redis.pki.ca),
    }
    for why, client in refused.items():
        with pytest.raises(TransportError, match="certificate was refused") as caught:
            client.read(START, 0.1, 1)
        assert "CERTIFICATE_VERIFY_FAILED" in str(caught.value) or "certificate verify" in str(
            caught.value
        ), why
        client.close()
    plain = transport(f"redis://localhost:{tls_redis.port}/0", None)
    with pytest.raises(TransportError):
        plain.read(START, 0.1, 1)
    plain.close()
    wrong_password = transport(tls_redis.url(), tls_redis.pki.ca, password="nope")
    with pytest.raises(TransportError):
        wrong_password.read(START, 0.1, 1)
    wrong_password.close()


def tls_daemon(root: Path, tls_redis: TlsRedis, host: str, ca: Path) -> Blockerd:
    home = root / host
    home.mkdir()
    key_file, password_file = root / "fleet.key", root / "redis.pass"
    for path, data in ((key_file, KEY), (password_file, PASSWORD.encode())):
        if not path.exists():
            path.write_bytes(data + b"\n")
            os.chmod(path, 0o600)
    extra = f'username = "blocker"\npassword_file = "{password_file}"\nca_file = "{ca}"\n'
    return Blockerd(home, fleet_config(tls_redis.url(), key_file, host, extra=extra, publish="[]"))


def test_blockerd_takes_bans_over_tls_and_refuses_a_wrong_ca(tls_redis: TlsRedis) -> None:
    with short_directory() as root:
        b = tls_daemon(root, tls_redis, "host-b", tls_redis.pki.ca)
        c = tls_daemon(root, tls_redis, "host-c", tls_redis.pki.wrong_ca)
        try:
            b.start()
            c.start()
            poll(lambda: fleet_status(b)["reader"] == "up", what="B's reader over TLS")
            publisher = transport(tls_redis.url(), tls_redis.pki.ca)
            publisher.publish([event("203.0.113.71", 71, origin="host-a")], time.time())
            publisher.close()
            assert b.wait_ban("203.0.113.71")["origin"] == "fleet:host-a"
            poll(lambda: fleet_status(c)["reader"] == "down", what="C to refuse the server")
            error = fleet_status(c)["errors"]["reader"]
            assert "certificate was refused" in error, error
            assert "certificate was refused" in c.stderr()
            assert c.alive and c.bans() == []
        finally:
            b.close()
            c.close()


def test_a_ca_file_needs_tls_and_a_certificate(tmp_path: Path) -> None:
    key_file = tmp_path / "fleet.key"
    key_file.write_bytes(KEY)
    os.chmod(key_file, 0o600)
    config = tmp_path / "jails.toml"
    config.write_text(
        fleet_config("redis://localhost:6379", key_file, "h", extra=f'ca_file = "{key_file}"')
    )
    checked = check_config(config)
    assert checked.returncode != 0
    assert "ca_file" in checked.stderr and "rediss://" in checked.stderr
    with short_directory() as root:
        daemon = Blockerd(
            root,
            fleet_config("rediss://localhost:1/0", key_file, "h", extra=f'ca_file = "{key_file}"'),
        )
        try:
            daemon.start(wait=False)
            assert daemon.proc is not None and daemon.proc.wait(timeout=30) == 1
            assert "no PEM certificate" in daemon.stderr()
        finally:
            daemon.close()
