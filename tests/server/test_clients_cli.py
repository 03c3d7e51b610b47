"""``authsvc clients disable|enable|rotate-secret|show`` and ``authsvc tokens revoke`` as the
operator runs them (a subprocess, the KEK in ``AUTHSVC_KEK``), checked against the store."""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path

import grpc
import pytest

from authsvc import authority as application
from authsvc.authority import open_authority
from authsvc.core.ports import SystemClock, SystemRandom
from authsvc.core.revocation import Revocation
from authsvc.server.app import RunningServer, start_server
from authsvc.v1 import token_pb2, token_pb2_grpc
from tests.assertions import ec_key, jwks_json, rsa_key
from tests.conftest import serve_config
from tests.core.fakes import FrozenClock
from tests.helpers import ServerThread
from tests.server.test_keys_cli import KEK, authsvc, cli_env
from tests.server.test_token_service import error_reason


def clients(data_dir: Path, *args: str, check: bool = True) -> dict[str, object]:
    out = authsvc(
        "clients", *args, "--data-dir", str(data_dir), "--output", "json", env=cli_env(), check=check
    )
    return dict(json.loads(out.stdout))


def revocations(data_dir: Path) -> list[Revocation]:
    authority = open_authority(data_dir, kek=KEK, kek_file=None, clock=SystemClock(), random=SystemRandom())
    try:
        return authority.store.revocation_snapshot(int(time.time()))[1]
    finally:
        authority.close()


@pytest.fixture(scope="module")
def created(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data directory in which ``clients create`` made the client ``shop``: once per module."""
    d = tmp_path_factory.mktemp("created") / "data"
    clients(d, "create", "--client-id", "shop", "--scope", "payments:read", "--audience", "payments")
    return d


@pytest.fixture
def data_dir(created: Path, tmp_path: Path) -> Path:
    """A copy of ``created`` of this test's own (the command has exited: its database is closed,
    its write-ahead log checkpointed), instead of one more ``clients create`` process per test."""
    return Path(shutil.copytree(created, tmp_path / "data"))


def test_disable_revokes_the_clients_tokens_and_enable_keeps_the_entry(data_dir: Path) -> None:
    before = int(time.time())
    shown = clients(data_dir, "disable", "shop")
    assert shown["enabled"] is False
    cutoff = shown["tokens_refused_if_issued_before"]
    assert isinstance(cutoff, int) and before + 1 <= cutoff <= int(time.time()) + 1 + 5
    [entry] = revocations(data_dir)
    assert (entry.client_id, entry.not_before) == ("shop", cutoff)
    assert clients(data_dir, "enable", "shop")["enabled"] is True
    assert revocations(data_dir) == [entry]  # tokens from before the disable stay refused


def test_enable_help_says_why_nothing_is_deleted() -> None:
    out = authsvc("clients", "enable", "--help", env=cli_env()).stdout
    assert "later iat" in " ".join(out.split())


def test_tokens_revoke_adds_a_token_entry(data_dir: Path) -> None:
    exp = int(time.time()) + 600
    out = authsvc(
        "tokens", "revoke", "--jti", "abc-123", "--expires-at", str(exp),
        "--data-dir", str(data_dir), "--output", "json", env=cli_env(),
    )  # fmt: skip
    assert json.loads(out.stdout) == {"jti": "abc-123", "expires_at": exp}
    assert revocations(data_dir) == [Revocation(expires_at=exp, jti="abc-123")]
    table = authsvc("tokens", "revoke", "--jti", "def-456", "--data-dir", str(data_dir), env=cli_env())
    assert "revoked jti def-456" in table.stdout


@pytest.mark.parametrize(
    "args", [["--jti", "has space"], ["--jti", "ok", "--expires-at", "1"]], ids=["bad-jti", "past"]
)
def test_tokens_revoke_refuses_bad_input_and_changes_nothing(data_dir: Path, args: list[str]) -> None:
    result = authsvc("tokens", "revoke", *args, "--data-dir", str(data_dir), env=cli_env(), check=False)
    assert result.returncode == 1 and result.stderr.startswith("authsvc: error:")
    assert revocations(data_dir) == []


def test_rotate_secret_with_grace_then_show_tells_both_states(data_dir: Path) -> None:
    rotated = clients(data_dir, "rotate-secret", "shop", "--grace", "600")
    assert str(rotated["client_secret"]).startswith("authsvc_cs_")
    assert rotated["previous_secret_accepted"] is True
    assert isinstance(rotated["previous_secret_expires_at"], int)
    shown = clients(data_dir, "show", "shop")
    assert "client_secret" not in shown
    assert not any("hash" in k for k in shown)
    assert (shown["previous_secret_accepted"], shown["previous_secret_expires_at"]) == (
        True,
        rotated["previous_secret_expires_at"],
    )
    text = authsvc("clients", "show", "shop", "--data-dir", str(data_dir), env=cli_env()).stdout
    assert "previous_secret_accepted:True" in text.replace(" ", "")
    assert "hmac-sha256" not in text


def test_a_second_rotation_during_the_grace_needs_end_grace(data_dir: Path) -> None:
    first = clients(data_dir, "rotate-secret", "shop", "--grace", "600")
    refused = authsvc(
        "clients", "rotate-secret", "shop", "--data-dir", str(data_dir), env=cli_env(), check=False
    )
    assert refused.returncode == 1 and "--end-grace" in refused.stderr
    assert refused.stdout == ""  # no secret printed for a rotation that did not happen
    second = clients(data_dir, "rotate-secret", "shop", "--grace", "600", "--end-grace")
    assert second["client_secret"] != first["client_secret"]


def test_rotate_secret_with_grace_zero_drops_the_old_secret(data_dir: Path) -> None:
    rotated = clients(data_dir, "rotate-secret", "shop", "--grace", "0")
    assert (rotated["previous_secret_accepted"], rotated["previous_secret_expires_at"]) == (False, None)


# -- a rotation under load, on a real server -------------------------------------------------------


def test_a_load_of_token_requests_through_a_rotation_with_grace_has_no_failures(tmp_path: Path) -> None:
    """The rollout the grace period is for: clients keep asking for tokens while the secret is
    rotated; each switches to the new secret once the server accepts it, within the grace. Not
    one request fails. Then the grace ends (a frozen clock moved) and only the new secret works."""
    clock = FrozenClock(float(int(time.time())))
    config = serve_config(tmp_path / "srv", client_cache_ttl=0.2)
    authority = application.open_authority(
        config.data_dir, kek=KEK, kek_file=None, clock=clock, random=SystemRandom()
    )
    _, old = authority.clients.create_client(
        client_id="shop", scopes=["payments:read"], audiences=["payments"]
    )
    thread: ServerThread[RunningServer] = ServerThread(lambda: start_server(config, authority=authority))
    running = thread.start()
    current = [old]
    failures: list[str] = []
    done = threading.Event()
    counts = [0] * 4

    def wait_for(more: int) -> None:
        """Until the load has made ``more`` requests (or one failed: no use waiting then)."""
        target = sum(counts) + more
        while sum(counts) < target and not failures:
            time.sleep(0.01)

    def load(worker: int, stub: token_pb2_grpc.TokenServiceStub) -> None:
        while not done.is_set():
            try:
                stub.IssueToken(_request(current[0]), timeout=10)
                counts[worker] += 1
            except grpc.RpcError as err:
                failures.append(f"{err.code()}: {err.details()}")

    try:
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            stub = token_pb2_grpc.TokenServiceStub(channel)
            workers = [threading.Thread(target=load, args=(w, stub)) for w in range(4)]
            for w in workers:
                w.start()
            wait_for(50)  # the load is under way, the old secret cached
            _, new = authority.clients.rotate_secret("shop", grace=6)
            for _ in range(200):  # the client probes the new secret, then switches: within the grace
                try:
                    stub.IssueToken(_request(new), timeout=10)
                    break
                except grpc.RpcError:
                    time.sleep(0.05)  # the server's client cache (0.2 s here) has the old record
            current[0] = new
            wait_for(50)
            clock.advance(6)  # the grace ends
            wait_for(50)
            done.set()
            for w in workers:
                w.join(timeout=30)
            assert failures == []
            with pytest.raises(grpc.RpcError) as info:
                stub.IssueToken(_request(old), timeout=10)
            assert error_reason(info.value) == (grpc.StatusCode.UNAUTHENTICATED, "INVALID_CLIENT")
    finally:
        done.set()
        thread.stop(grace=0)


def _request(secret: str) -> token_pb2.IssueTokenRequest:
    return token_pb2.IssueTokenRequest(
        grant_type="client_credentials", client_id="shop", client_secret=secret
    )


# -- clients create --auth-method (issue 13) -------------------------------------------------------


def _create(data_dir: Path, client_id: str, *args: str) -> dict[str, object]:
    return clients(
        data_dir, "create", "--client-id", client_id, "--scope", "a", "--audience", "payments", *args
    )


def test_create_private_key_jwt_with_a_jwks_file_prints_no_secret_and_show_tells_the_keys(
    data_dir: Path, tmp_path: Path
) -> None:
    jwks = tmp_path / "jwks.json"
    jwks.write_text(jwks_json(rsa_key(), ec_key("ec-a")))
    created = _create(
        data_dir, "signer", "--auth-method", "private_key_jwt", "--jwks-file", str(jwks),
        "--signing-alg", "ES256", "--signing-alg", "RS256",
    )  # fmt: skip
    assert "client_secret" not in created
    shown = clients(data_dir, "show", "signer")
    assert shown["auth_method"] == "private_key_jwt"
    assert shown["signing_algs"] == ["ES256", "RS256"]
    assert shown["jwks_uri"] is None
    jwks_shown = shown["jwks"]
    assert isinstance(jwks_shown, dict) and [k["kid"] for k in jwks_shown["keys"]] == ["rsa-1", "ec-a"]
    text = authsvc("clients", "show", "signer", "--data-dir", str(data_dir), env=cli_env()).stdout
    assert "private_key_jwt" in text and "rsa-1(RSA) ec-a(EC)" in text
    assert "tls_san_dns" not in text and "previous_secret" not in text


def test_create_private_key_jwt_with_a_jwks_uri(data_dir: Path) -> None:
    _create(
        data_dir, "signer", "--auth-method", "private_key_jwt", "--jwks-uri", "https://shop.example/jwks.json"
    )
    shown = clients(data_dir, "show", "signer")
    assert (shown["jwks"], shown["jwks_uri"], shown["signing_algs"]) == (
        None,
        "https://shop.example/jwks.json",
        ["RS256"],
    )


def test_create_tls_client_auth_stores_the_name_and_says_where_it_authenticates(data_dir: Path) -> None:
    out = authsvc(
        "clients", "create", "--client-id", "tls", "--scope", "a", "--audience", "b",
        "--auth-method", "tls_client_auth", "--tls-subject-dn", "CN=shop,O=Example",
        "--data-dir", str(data_dir), "--output", "json", env=cli_env(),
    )  # fmt: skip
    created = json.loads(out.stdout)
    assert "client_secret" not in created
    assert (created["auth_method"], created["tls_subject_dn"], created["tls_san_dns"]) == (
        "tls_client_auth",
        "CN=shop,O=Example",
        None,
    )
    assert "mutual-TLS listener" in out.stderr and "--mtls-listen" in out.stderr


def test_the_default_method_is_client_secret_basic_and_post_can_be_chosen(data_dir: Path) -> None:
    assert clients(data_dir, "show", "shop")["auth_method"] == "client_secret_basic"
    created = _create(data_dir, "poster", "--auth-method", "client_secret_post")
    assert str(created["client_secret"]).startswith("authsvc_cs_")
    assert created["auth_method"] == "client_secret_post"
    listed = authsvc("clients", "list", "--data-dir", str(data_dir), env=cli_env()).stdout
    assert "AUTH_METHOD" in listed and "client_secret_post" in listed


@pytest.mark.parametrize(
    "args",
    [
        ["--auth-method", "private_key_jwt"],
        ["--auth-method", "private_key_jwt", "--jwks-uri", "http://shop.example/jwks"],
        ["--auth-method", "private_key_jwt", "--jwks-file", "JWKS_PRIVATE"],
        ["--auth-method", "private_key_jwt", "--jwks-file", "JWKS_PUBLIC", "--signing-alg", "ES256"],
        ["--auth-method", "private_key_jwt", "--jwks-file", "NO_SUCH_FILE"],
        ["--auth-method", "tls_client_auth"],
        ["--jwks-uri", "https://shop.example/jwks"],
        ["--tls-san-dns", "shop.example"],
    ],
    ids=[
        "pkjwt-without-keys",
        "pkjwt-plain-http",
        "pkjwt-private-key",
        "pkjwt-alg-without-key",
        "pkjwt-missing-file",
        "tls-without-name",
        "secret-with-jwks-uri",
        "secret-with-tls-name",
    ],
)
def test_create_refuses_a_method_with_the_wrong_data_and_stores_nothing(
    data_dir: Path, tmp_path: Path, args: list[str]
) -> None:
    files = {
        "JWKS_PRIVATE": json.dumps({"keys": [rsa_key().private_jwk]}),
        "JWKS_PUBLIC": jwks_json(rsa_key()),
    }
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    args = [str(tmp_path / a) if a in {*files, "NO_SUCH_FILE"} else a for a in args]
    result = authsvc(
        "clients", "create", "--client-id", "bad", "--scope", "a", "--audience", "b", *args,
        "--data-dir", str(data_dir), env=cli_env(), check=False,
    )  # fmt: skip
    assert result.returncode == 1 and result.stderr.startswith("authsvc: error:")
    assert "bad" not in authsvc("clients", "list", "--data-dir", str(data_dir), env=cli_env()).stdout


def test_rotate_secret_refuses_a_client_without_a_secret(data_dir: Path) -> None:
    _create(data_dir, "signer", "--auth-method", "private_key_jwt", "--jwks-uri", "https://shop.example/jwks")
    result = authsvc(
        "clients", "rotate-secret", "signer", "--data-dir", str(data_dir), env=cli_env(), check=False
    )
    assert result.returncode == 1 and "no secret" in result.stderr
    assert result.stdout == ""
