"""``payments-svc serve --client-id ID --client-secret-file F``: the PaymentService reads the
revocation list (WatchRevocations on --token-service) as its own client and refuses revoked
tokens without restarting; without them it verifies without the list and says so; the
staleness flags reach the verifier; a bad secret file is a clean error that never shows the
secret. The TokenService here is :class:`tests.verify.test_revocations.FakeTokenService` (keys
and list), on a real port."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import pytest

from authsvc.core.errors import ConfigurationError
from authsvc.verify import HttpRevocationSource
from payments_svc.app import (
    PaymentsConfig,
    RunningPayments,
    build_verifier,
    read_client_secret,
    revocations_url,
)
from payments_svc.app import start_server as start_payments
from payments_svc.cli import build_parser, main
from payments_svc.v1 import payments_pb2, payments_pb2_grpc
from tests.conftest import ISSUER
from tests.helpers import ServerThread
from tests.security.test_token_verification_attacks import REFUSED, answer_of
from tests.verify.test_revocations import (
    FORGE,
    RS_ID,
    RS_SECRET,
    WAIT,
    FakeTokenService,
    fake_token_service,
    token_entry,
)

TIMEOUT = 10


def payment_token(jti: str) -> str:
    return FORGE.token(claims=FORGE.claims(aud="payments", scope="payments:write", jti=jti))


def pay(port: int, token: str, key: str) -> tuple[grpc.StatusCode, str]:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        try:
            paid = payments_pb2_grpc.PaymentServiceStub(ch).CreatePayment(
                payments_pb2.CreatePaymentRequest(
                    amount="5.00", currency="USD", payment_method="pm_card", idempotency_key=key
                ),
                metadata=(("authorization", f"Bearer {token}"),),
                timeout=TIMEOUT,
            )
        except grpc.RpcError as err:
            return answer_of(err)
    return grpc.StatusCode.OK, str(paid.payment.client_id)


@pytest.fixture
def issuer() -> Iterator[tuple[FakeTokenService, str]]:
    with fake_token_service() as served:
        yield served


def start(config: PaymentsConfig) -> ServerThread[RunningPayments]:
    thread: ServerThread[RunningPayments] = ServerThread(lambda: start_payments(config))
    thread.start()
    return thread


def config_for(tmp_path: Path, target: str, **kw: Any) -> PaymentsConfig:
    return PaymentsConfig(
        data_dir=tmp_path / "pay", listen="127.0.0.1:0", token_service=target, issuer=ISSUER, **kw
    )


def test_a_revoked_token_stops_paying_while_another_still_pays(
    issuer: tuple[FakeTokenService, str], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    fake, target = issuer
    with caplog.at_level(logging.DEBUG):
        thread = start(config_for(tmp_path, target, client_id=RS_ID, client_secret=RS_SECRET))
        try:
            running = thread.running
            revocations = running.verifier.revocations
            assert revocations is not None and revocations.has_list  # read before serving
            stolen, other = payment_token("stolen"), payment_token("other")
            assert pay(running.port, stolen, "k1")[0] == grpc.StatusCode.OK
            assert revocations.wait_for(fake.add(token_entry("stolen")), WAIT)
            assert pay(running.port, stolen, "k2") == REFUSED
            assert pay(running.port, other, "k3")[0] == grpc.StatusCode.OK
        finally:
            thread.stop(0)
    assert fake.requests[0] == 0
    assert RS_SECRET not in caplog.text
    assert "revocation list: 0 entries" in caplog.text


def test_without_a_client_registration_it_verifies_without_the_list_and_warns(
    issuer: tuple[FakeTokenService, str], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    fake, target = issuer
    with caplog.at_level(logging.WARNING, logger="payments_svc.server"):
        thread = start(config_for(tmp_path, target))
        try:
            assert thread.running.verifier.revocations is None
        finally:
            thread.stop(0)
    assert any("WITHOUT the revocation list" in r.getMessage() for r in caplog.records)
    assert fake.requests == []


def test_the_staleness_flags_and_environment_reach_the_verifier(tmp_path: Path) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_text(RS_SECRET + "\n")
    env = {
        "PAYMENTS_CLIENT_ID": RS_ID,
        "PAYMENTS_CLIENT_SECRET_FILE": str(secret_file),
        "PAYMENTS_REVOCATIONS_MAX_STALENESS": "12.5",
        "PAYMENTS_REVOCATIONS_FAIL_CLOSED": "1",
    }
    args = build_parser(env).parse_args(["serve"])
    assert (args.client_id, args.client_secret_file) == (RS_ID, secret_file)
    assert (args.revocations_max_staleness, args.revocations_fail_closed) == (12.5, True)
    flags = build_parser({}).parse_args(
        ["serve", "--revocations-max-staleness", "7", "--revocations-fail-closed"]
    )
    assert (flags.revocations_max_staleness, flags.revocations_fail_closed) == (7.0, True)
    assert build_parser({}).parse_args(["serve"]).revocations_fail_closed is False
    assert read_client_secret(secret_file) == RS_SECRET
    verifier = build_verifier(
        config_for(
            tmp_path,
            "127.0.0.1:9",
            client_id=RS_ID,
            client_secret=read_client_secret(secret_file),
            revocations_max_staleness=12.5,
            revocations_fail_closed=True,
        )
    )
    try:
        assert verifier.revocations is not None
        assert (verifier.revocations.max_staleness, verifier.revocations.fail_closed) == (12.5, True)
    finally:
        verifier.close()


@pytest.mark.parametrize(
    "content", [None, b"", b" \n\t\n", b"\xff\xfe"], ids=["missing", "empty", "blank", "binary"]
)
def test_an_unreadable_or_empty_secret_file_is_a_clean_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes | None
) -> None:
    secret_file = tmp_path / "secret"
    if content is not None:
        secret_file.write_bytes(content)
    code = main(
        [
            "serve",
            "--client-id",
            RS_ID,
            "--client-secret-file",
            str(secret_file),
            "--data-dir",
            str(tmp_path),
        ],
        env={},
    )
    err = capsys.readouterr().err
    assert code == 1
    assert err.startswith("payments-svc: error: ") and "secret file" in err and "Traceback" not in err


def test_a_secret_file_that_is_a_directory_is_a_clean_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="cannot read"):
        read_client_secret(tmp_path)


@pytest.mark.parametrize(
    "kw",
    [
        {"client_id": RS_ID},
        {"client_secret": RS_SECRET},
        {"client_id": "", "client_secret": RS_SECRET},
        {"revocations_fail_closed": True},
        {"client_id": RS_ID, "client_secret": RS_SECRET, "revocations_max_staleness": 0},
        {"client_id": RS_ID, "client_secret": RS_SECRET, "revocations_max_staleness": float("inf")},
        # keys from an https jwks_uri, but the secret would go to the list in plaintext
        {
            "client_id": RS_ID,
            "client_secret": RS_SECRET,
            "token_service": "auth.example.com:50051",
            "jwks_url": "https://auth.example.com/.well-known/jwks.json",
            "revocations_url": "http://auth.example.com/oauth2/revocations",
        },
        {"revocations_url": "https://auth.example.com/oauth2/revocations"},
        {"client_id": RS_ID, "client_secret": RS_SECRET, "revocations_poll_interval": 0},
        {"client_id": RS_ID, "client_secret": RS_SECRET, "revocations_poll_interval": float("nan")},
        {
            "client_id": RS_ID,
            "client_secret": RS_SECRET,
            "revocations_url": "ftp://auth.example.com/oauth2/revocations",
        },
    ],
    ids=[
        "id-alone",
        "secret-alone",
        "empty-id",
        "fail-closed-without-list",
        "zero-staleness",
        "inf-staleness",
        "plain",
        "url-without-client",
        "zero-poll",
        "nan-poll",
        "not-http",
    ],
)
def test_inconsistent_revocation_settings_are_refused(tmp_path: Path, kw: dict[str, Any]) -> None:
    settings: dict[str, Any] = {"data_dir": tmp_path, "listen": "127.0.0.1:0", **kw}
    with pytest.raises(ConfigurationError):
        PaymentsConfig(**settings)


def test_the_secret_never_shows_in_the_config_repr() -> None:
    config = PaymentsConfig(data_dir=Path("/nonexistent"), client_id=RS_ID, client_secret=RS_SECRET)
    assert RS_SECRET not in repr(config)


def test_cli_id_without_secret_file_is_a_clean_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--client-id", RS_ID], env={}) == 1
    assert "go together" in capsys.readouterr().err


def test_with_a_jwks_url_the_list_is_polled_at_its_origin_over_http(tmp_path: Path) -> None:
    """Keys from a jwks_uri: the list comes from the same origin's /oauth2/revocations over HTTPS,
    so the secret never goes to --token-service (which may not even be reachable)."""
    config = config_for(
        tmp_path,
        "127.0.0.1:9",
        client_id=RS_ID,
        client_secret=RS_SECRET,
        jwks_url="https://auth.example.com:8443/tenant/.well-known/jwks.json",
        revocations_poll_interval=2.5,
    )
    # beside the jwks_uri: an issuer with a path (/tenant) serves both under it
    assert revocations_url(config) == "https://auth.example.com:8443/tenant/oauth2/revocations"
    elsewhere = replace(config, jwks_url="https://keys.example.com/jwks")
    assert revocations_url(elsewhere) == "https://keys.example.com/oauth2/revocations"
    explicit = replace(config, revocations_url="https://lists.example.com/oauth2/revocations")
    assert revocations_url(explicit) == "https://lists.example.com/oauth2/revocations"
    assert revocations_url(replace(config, jwks_url=None)) is None  # WatchRevocations
    assert revocations_url(replace(config, client_id=None, client_secret=None)) is None
    source = _source_of(config)
    assert isinstance(source, HttpRevocationSource)
    assert source.url == "https://auth.example.com:8443/tenant/oauth2/revocations"
    assert source.poll_interval == 2.5
    assert RS_SECRET not in repr(source)


def _source_of(config: PaymentsConfig) -> object:
    verifier = build_verifier(config)
    try:
        assert verifier.revocations is not None
        return verifier.revocations.source
    finally:
        verifier.close()


def test_the_revocations_url_flags_and_environment_reach_the_config() -> None:
    env = {
        "PAYMENTS_REVOCATIONS_URL": "https://auth.example.com/oauth2/revocations",
        "PAYMENTS_REVOCATIONS_POLL_INTERVAL": "1.5",
    }
    args = build_parser(env).parse_args(["serve"])
    assert (args.revocations_url, args.revocations_poll_interval) == (env["PAYMENTS_REVOCATIONS_URL"], 1.5)
    flags = build_parser({}).parse_args(
        [
            "serve",
            "--revocations-url",
            "https://a.example/list",
            "--revocations-poll-interval",
            "3",
        ]
    )
    assert (flags.revocations_url, flags.revocations_poll_interval) == (
        "https://a.example/list",
        3.0,
    )
    defaults = build_parser({}).parse_args(["serve"])
    assert (defaults.revocations_url, defaults.revocations_poll_interval) == (None, 5.0)
