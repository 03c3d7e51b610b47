"""The server's process-level behaviour: TLS, the plaintext guard, the command, signals."""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from authsvc.core.errors import ConfigurationError
from authsvc.server.app import RunningServer, open_authority, start_server
from authsvc.server.config import ServeConfig
from authsvc.v1 import token_pb2, token_pb2_grpc
from tests.conftest import KEK, serve_config
from tests.helpers import Command, ServerThread


def self_signed(tmp: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp / "cert.pem", tmp / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


def test_tls_serves_tokens_and_refuses_plaintext(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    config = serve_config(tmp_path / "data", tls_cert=cert, tls_key=key)
    thread = ServerThread(lambda: start_server(config, authority=open_authority(config)))
    running = thread.start()
    try:
        _, secret = running.authority.clients.create_client(
            client_id="shop", scopes=["a"], audiences=["payments"]
        )
        creds = grpc.ssl_channel_credentials(root_certificates=cert.read_bytes())
        with grpc.secure_channel(f"localhost:{running.port}", creds) as ch:
            response = token_pb2_grpc.TokenServiceStub(ch).IssueToken(
                token_pb2.IssueTokenRequest(
                    grant_type="client_credentials", client_id="shop", client_secret=secret
                ),
                timeout=10,
            )
            assert response.access_token
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as ch, pytest.raises(grpc.RpcError) as info:
            token_pb2_grpc.TokenServiceStub(ch).GetJwks(token_pb2.GetJwksRequest(), timeout=5)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        thread.stop(grace=0)


@pytest.mark.parametrize(
    "listen",
    ["0.0.0.0:50051", "[::]:50051", "10.0.0.1:50051", "example.com:443"],
    ids=["any-v4", "any-v6", "private", "hostname"],
)
def test_plaintext_on_non_loopback_is_refused_without_insecure(tmp_path: Path, listen: str) -> None:
    with pytest.raises(ConfigurationError, match="without TLS"):
        ServeConfig(data_dir=tmp_path, listen=listen)
    assert ServeConfig(data_dir=tmp_path, listen=listen, insecure=True).insecure


@pytest.mark.parametrize(
    "listen",
    ["127.0.0.1:0", "localhost:1", "[::1]:50051", "127.8.9.10:5"],
    ids=["v4", "localhost", "v6", "loopback-range"],
)
def test_plaintext_on_loopback_is_allowed(tmp_path: Path, listen: str) -> None:
    assert not ServeConfig(data_dir=tmp_path, listen=listen).tls


def test_config_repr_hides_the_kek(tmp_path: Path) -> None:
    assert KEK not in repr(ServeConfig(data_dir=tmp_path, kek=KEK))


def authsvc(*args: str, env: dict[str, str], check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "authsvc.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=check,
    )


def test_serve_command_from_environment_and_graceful_sigterm(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "AUTHSVC_DATA_DIR": str(tmp_path / "d"),
        "AUTHSVC_LISTEN": "127.0.0.1:0",
        "AUTHSVC_ISSUER": "https://env.example",
        "AUTHSVC_KEK": KEK,
    }
    created = json.loads(
        authsvc(
            "clients",
            "create",
            "--client-id",
            "shop",
            "--scope",
            "s",
            "--audience",
            "aud",
            "--output",
            "json",
            env=env,
        ).stdout
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "authsvc.cli", "serve"], env=env, stderr=subprocess.PIPE, text=True
    )
    try:
        assert proc.stderr is not None
        port = None
        for line in proc.stderr:
            if m := re.search(r"listening on 127\.0\.0\.1:(\d+)", line):
                port = int(m.group(1))
                break
        assert port, "the server never said where it listens"
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            token = (
                token_pb2_grpc.TokenServiceStub(ch)
                .IssueToken(
                    token_pb2.IssueTokenRequest(
                        grant_type="client_credentials",
                        client_id="shop",
                        client_secret=created["client_secret"],
                    ),
                    timeout=10,
                )
                .access_token
            )
        import jwt

        assert jwt.decode(token, options={"verify_signature": False})["iss"] == "https://env.example"
        proc.send_signal(signal.SIGTERM)
        rest = proc.stderr.read()
        assert proc.wait(timeout=15) == 0
        assert "stopped" in rest
        assert token not in rest and created["client_secret"] not in rest
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_cli_client_lifecycle(tmp_path: Path) -> None:
    env = {**os.environ, "AUTHSVC_KEK": KEK}
    d = ["--data-dir", str(tmp_path)]
    created = json.loads(
        authsvc(
            "clients",
            "create",
            "--scope",
            "payments:read payments:write",
            "--audience",
            "payments",
            "--ttl",
            "120",
            "-o",
            "json",
            *d,
            env=env,
        ).stdout
    )
    cid, secret = created["client_id"], created["client_secret"]
    assert cid.startswith("client_") and secret.startswith("authsvc_cs_")
    listed = authsvc("clients", "list", "-o", "json", *d, env=env).stdout
    shown = authsvc("clients", "show", cid, "-o", "json", *d, env=env).stdout
    for out in (listed, shown):
        assert secret not in out and "secret_hash" not in out and "hmac-sha256" not in out
    assert json.loads(shown)["token_ttl"] == 120
    assert (
        json.loads(authsvc("clients", "disable", cid, "-o", "json", *d, env=env).stdout)["enabled"] is False
    )
    assert json.loads(authsvc("clients", "enable", cid, "-o", "json", *d, env=env).stdout)["enabled"] is True
    rotated = json.loads(authsvc("clients", "rotate-secret", cid, "-o", "json", *d, env=env).stdout)
    assert rotated["client_secret"] != secret
    table = authsvc("clients", "list", *d, env=env).stdout
    assert cid in table and "CLIENT_ID" in table
    dup = authsvc(
        "clients", "create", "--client-id", cid, "--scope", "x", "--audience", "a", *d, env=env, check=False
    )
    assert dup.returncode == 1 and "exists already" in dup.stderr
    missing = authsvc("clients", "show", "nope", *d, env=env, check=False)
    assert missing.returncode == 1 and "no client" in missing.stderr
    bad = authsvc("clients", "create", "--scope", "a  b", "--audience", "x", *d, env=env, check=False)
    assert bad.returncode == 1 and "error" in bad.stderr


def test_cli_keys_list_shows_no_private_material(tmp_path: Path) -> None:
    env = {**os.environ, "AUTHSVC_KEK": KEK}
    authority = open_authority(serve_config(tmp_path))
    kid = authority.keys.ensure_signing_key().kid
    authority.store.close()
    keys = json.loads(authsvc("keys", "list", "--data-dir", str(tmp_path), "-o", "json", env=env).stdout)
    assert [(k["kid"], k["state"]) for k in keys] == [(kid, "active")]
    assert set(keys[0]) == {
        "kid",
        "state",
        "origin",
        "created_at",
        "activated_at",
        "deactivated_at",
        "retire_after",
        "retired_at",
        "revoked_at",
        "kek_id",
    }


def test_wrong_kek_is_a_clear_startup_error(tmp_path: Path) -> None:
    authority = open_authority(serve_config(tmp_path))
    authority.keys.ensure_signing_key()
    authority.store.close()
    env = {**os.environ, "AUTHSVC_KEK": "22" * 32}
    out = authsvc(
        "clients",
        "create",
        "--scope",
        "a",
        "--audience",
        "b",
        "--data-dir",
        str(tmp_path),
        env=env,
        check=False,
    )
    assert out.returncode == 1
    assert "key-encryption key" in out.stderr


def test_dev_kek_is_generated_with_0600(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUTHSVC_")}
    authsvc("clients", "create", "--scope", "a", "--audience", "b", "--data-dir", str(tmp_path), env=env)
    assert (tmp_path / "kek.key").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "authsvc.db").exists()


def test_shutdown_does_not_wait_for_watchjwks_subscribers(tmp_path: Path) -> None:
    """An idle WatchJwks stream (every verifier keeps one open) must not hold shutdown for the
    whole grace period."""
    import threading
    import time

    config = serve_config(tmp_path / "data")
    thread: ServerThread[RunningServer] = ServerThread(
        lambda: start_server(config, authority=open_authority(config))
    )
    running = thread.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{running.port}")
    stream = token_pb2_grpc.TokenServiceStub(channel).WatchJwks(token_pb2.WatchJwksRequest())
    first = threading.Event()
    ended = threading.Event()

    def consume() -> None:
        try:
            for _ in stream:
                first.set()
        except grpc.RpcError:
            pass
        ended.set()

    threading.Thread(target=consume, daemon=True).start()
    assert first.wait(10), "WatchJwks sent nothing"
    started = time.monotonic()
    thread.stop(grace=5)
    assert time.monotonic() - started < 2.5
    assert ended.wait(5)
    channel.close()


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [("--client-cache-ttl", "9", "client cache lifetime"), ("--jwks-max-age", "0", "JWKS max age")],
    ids=["cache-ttl-too-long", "zero-max-age"],
)
def test_serve_refuses_bad_settings_with_a_clear_error(
    tmp_path: Path, flag: str, value: str, message: str
) -> None:
    env = {**os.environ, "AUTHSVC_KEK": KEK}
    out = authsvc(
        "serve", "--data-dir", str(tmp_path), "--listen", "127.0.0.1:0", flag, value, env=env, check=False
    )
    assert out.returncode == 1
    assert message in out.stderr and "Traceback" not in out.stderr


def test_shutdown_waits_for_the_key_tick_in_flight_before_closing_the_store(tmp_path: Path) -> None:
    """A key-lifecycle tick runs in a worker thread; shutdown must not close the store under it
    (with SQLite that crashed the process)."""
    import threading

    config = serve_config(tmp_path / "data")
    thread: ServerThread[RunningServer] = ServerThread(
        lambda: start_server(config, authority=open_authority(config))
    )
    running = thread.start()
    order: list[str] = []
    started, release = threading.Event(), threading.Event()
    close = running.authority.store.close

    def slow_tick() -> None:
        started.set()
        release.wait(10)
        order.append("tick ended")

    def recorded_close() -> None:
        order.append("store closed")
        close()

    running.keyring.tick = slow_tick  # type: ignore[method-assign]
    running.authority.store.close = recorded_close  # type: ignore[method-assign]
    assert started.wait(10), "no tick started"
    stopper = threading.Thread(target=thread.stop, kwargs={"grace": 0})
    stopper.start()
    stopper.join(0.5)  # give a premature close its chance to happen first
    release.set()
    stopper.join(10)
    assert order == ["tick ended", "store closed"]


PG_PASSWORDS = ("Pw-in-the-userinfo-7c1", "Pw-in-the-query-9d2")


def with_passwords(url: str) -> str:
    """``url`` (trust auth: any password is accepted) with a password in both places libpq reads
    one."""
    user, at, rest = url.partition("@")
    assert at, url
    return f"{user}:{PG_PASSWORDS[0]}@{rest}?password={PG_PASSWORDS[1]}&application_name=authsvc-test"


def test_serve_logs_where_its_sqlite_database_is(tmp_path: Path) -> None:
    env = {**os.environ, "AUTHSVC_DATA_DIR": str(tmp_path / "d"), "AUTHSVC_KEK": KEK}
    server = Command([sys.executable, "-m", "authsvc.cli", "serve", "--listen", "127.0.0.1:0"], env)
    assert server.terminate() == 0, server.output()  # SIGTERM right after start-up: graceful
    assert f"clients and keys in SQLite at {tmp_path / 'd' / 'authsvc.db'}" in server.output()


def test_serve_logs_its_postgres_url_without_the_password(tmp_path: Path, pg_url: str) -> None:
    url = with_passwords(pg_url)
    env = {
        **os.environ,
        "AUTHSVC_DATA_DIR": str(tmp_path / "d"),
        "AUTHSVC_KEK": KEK,
        "AUTHSVC_DATABASE_URL": url,
    }
    server = Command([sys.executable, "-m", "authsvc.cli", "serve", "--listen", "127.0.0.1:0"], env)
    assert server.terminate() == 0, server.output()  # SIGTERM right after start-up: graceful
    output = server.output()
    (line,) = [ln for ln in output.splitlines() if "clients and keys in PostgreSQL at" in ln]
    host_and_db = pg_url.partition("@")[2]
    assert f"postgresql://postgres:***@{host_and_db}?password=***&application_name=authsvc-test" in line
    for password in PG_PASSWORDS:
        assert password not in output
