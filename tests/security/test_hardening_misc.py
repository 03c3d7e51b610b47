"""Issue 9, item 6: the small leaks, one named test per attack.

- Client-id enumeration by timing: an unknown client id must cost what a known id with a wrong
  secret costs. Asserted by counting the operations both paths run (the hash and comparison
  through an injected hasher, the row decodes of a real SQL store), never by a clock.
- A PostgreSQL password given in any form libpq accepts (``user:pw@``, ``?password=``,
  ``?sslpassword=``, ...) never reaches a log line or an error message.
- A refund retried without an idempotency key refunds twice: the key is required.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import grpc
import pytest

from authsvc.core.client_auth import PresentedCredentials
from authsvc.core.clients import ClientAuthMethod, new_client
from authsvc.core.errors import ConfigurationError, InvalidClient
from authsvc.core.grants import TokenEndpoint, client_credentials_endpoint
from authsvc.core.keys import KeyState, SigningKey, generate_rsa_key
from authsvc.core.ports import SystemRandom
from authsvc.core.secrets import SecretHasher
from authsvc.core.tokens import TokenSigner
from authsvc.store import sql
from authsvc.store.cache import CachedClientLookup
from authsvc.store.sqlite import SQLiteStore
from authsvc.v1 import token_pb2, token_pb2_grpc
from payments_svc.app import PaymentsConfig, RunningPayments, start_server
from payments_svc.v1 import payments_pb2 as pb
from payments_svc.v1 import payments_pb2_grpc
from tests.conftest import ISSUER, RegisteredClient, TokenServer
from tests.core.fakes import FrozenClock
from tests.helpers import ServerThread
from tests.payments.test_payment_service import Gateway, bearer, create, reason, start_payments

WRONG_SECRET = "authsvc_cs_" + "W" * 43
PEPPER = b"pepper-for-tests-only-0123456789"


# -- 1. unknown and known client ids do the same work ------------------------------------------


class RecordingHasher(SecretHasher):
    """The real hasher, recording the shape of every verification it is asked for."""

    def __init__(self, pepper: bytes) -> None:
        super().__init__(pepper)
        self.calls: list[tuple[str, int, str | None, int | None]] = []

    def verify(self, secret: str, stored: str | None) -> bool:
        scheme = None if stored is None else stored.partition("$")[0]
        self.calls.append(("verify", len(secret), scheme, None if stored is None else len(stored)))
        return super().verify(secret, stored)


def _endpoint(tmp_path: Path, hasher: SecretHasher) -> TokenEndpoint:
    store = SQLiteStore(tmp_path / "clients.db")
    store.create_client(
        new_client(
            client_id="shop",
            secret_hash=hasher.hash("authsvc_cs_the-right-one"),
            scopes=["payments:read", "payments:write", "payments:refund"],
            audiences=["payments"],
            now=0,
        )
    )
    key = SigningKey.from_private_key(generate_rsa_key(), state=KeyState.ACTIVE, created_at=0, activated_at=0)
    signer = TokenSigner(key)
    # ttl 0: every request reads the store, the case an attacker probing fresh ids is in
    return client_credentials_endpoint(
        issuer=ISSUER,
        clients=CachedClientLookup(store, ttl=0.0),
        hasher=hasher,
        signer=lambda: signer,
        clock=FrozenClock(),
        random=SystemRandom(),
    )


def _count_calls(monkeypatch: pytest.MonkeyPatch, owner: Any, name: str) -> list[int]:
    counter = [0]
    inner: Callable[..., Any] = getattr(owner, name)

    def counting(*args: Any, **kwargs: Any) -> Any:
        counter[0] += 1
        return inner(*args, **kwargs)

    monkeypatch.setattr(owner, name, counting)
    return counter


def test_unknown_and_known_client_do_the_same_work(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    stub: token_pb2_grpc.TokenServiceStub,
    client: RegisteredClient,
) -> None:
    hasher = RecordingHasher(PEPPER)
    endpoint = _endpoint(tmp_path, hasher)
    decodes = _count_calls(monkeypatch, sql, "_client_from_row")
    compares = _count_calls(monkeypatch, hmac, "compare_digest")

    def work(client_id: str) -> tuple[list[tuple[str, int, str | None, int | None]], int, int]:
        hasher.calls.clear()
        decodes[0] = compares[0] = 0
        with pytest.raises(InvalidClient) as info:
            endpoint.authenticate(
                PresentedCredentials(ClientAuthMethod.CLIENT_SECRET_POST, client_id, WRONG_SECRET)
            )
        assert info.value.error == "invalid_client"
        return list(hasher.calls), decodes[0], compares[0]

    known = work("shop")
    # two keyed-hash checks for everyone: the current secret, and the previous one (a rotation's
    # grace) or the decoy hash where there is none, so not even a rotation shows in the timing
    one_check = ("verify", len(WRONG_SECRET), "hmac-sha256", len(hasher.hash("x")))
    assert known == ([one_check, one_check], 1, 2)
    for unknown_id in ("nobody", "shop2", "x" * 128):
        assert work(unknown_id) == known, f"{unknown_id!r} took another path than a known id"

    # and on the wire the two answers are one and the same refusal
    answers = []
    for client_id in (client.client_id, "nobody-at-all"):
        with pytest.raises(grpc.RpcError) as err:
            stub.IssueToken(
                token_pb2.IssueTokenRequest(
                    grant_type="client_credentials", client_id=client_id, client_secret=WRONG_SECRET
                ),
                timeout=10,
            )
        answers.append((*reason(err.value), err.value.details()))
    assert answers[0][:2] == (grpc.StatusCode.UNAUTHENTICATED, "INVALID_CLIENT")
    assert answers[0] == answers[1]


# -- 2. database passwords never logged ---------------------------------------------------------

DB_SECRET = "hunter2-db-secret"  # a test value, not a real secret


def _no_secret_in(records: Sequence[logging.LogRecord], *texts: str) -> None:
    for record in records:
        line = record.getMessage() + (str(record.exc_info[1]) if record.exc_info else "")
        assert DB_SECRET not in line, f"logged by {record.name}: {line!r}"
    for text in texts:
        assert DB_SECRET not in text


def test_database_password_in_query_never_logged(
    pg_database: str, token_server: TokenServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # trust auth: the server ignores the password, so the service really starts with this URL
    url = f"{pg_database}?password={DB_SECRET}&sslpassword={DB_SECRET}&application_name=payments"
    config = PaymentsConfig(
        data_dir=tmp_path / "payments",
        listen="127.0.0.1:0",
        token_service=token_server.target,
        issuer=ISSUER,
        database_url=url,
    )
    caplog.set_level(logging.DEBUG)
    thread: ServerThread[RunningPayments] = ServerThread(lambda: start_server(config))
    running = thread.start()
    try:
        assert running.port > 0
    finally:
        thread.stop(0)
    said = [r.getMessage() for r in caplog.records if "PostgreSQL at" in r.getMessage()]
    assert said, "the service says which database it uses"
    assert "password=***" in said[0] and "sslpassword=***" in said[0]
    assert "application_name=payments" in said[0]
    _no_secret_in(caplog.records, repr(config))


@pytest.mark.parametrize("service", ["authsvc", "payments"])
def test_malformed_database_url_never_echoes_password(service: str, caplog: pytest.LogCaptureFixture) -> None:
    """libpq's parse errors quote the bad token (``invalid percent-encoded token: "<pw>"``) and
    the pool logged that on every retry; both stores now refuse the URL without repeating it."""
    from authsvc.store.postgres import PostgresStore
    from payments_svc.store_postgres import PostgresPaymentStore

    caplog.set_level(logging.DEBUG)
    url = f"postgresql://postgres@127.0.0.1:5432/test?password={DB_SECRET}%zz"
    with pytest.raises(ConfigurationError) as info:
        if service == "authsvc":
            PostgresStore(url, timeout=1.0)
        else:
            PostgresPaymentStore(url, timeout=1.0)
    chain = [str(info.value), repr(info.value.__cause__), repr(info.value.__context__)]
    _no_secret_in(caplog.records, *chain)
    assert info.value.__cause__ is None and info.value.__context__ is None


@pytest.mark.parametrize(
    "url",
    [
        f"postgresql://payments:{DB_SECRET}@db.internal/payments",
        f"postgresql://payments@db.internal/payments?password={DB_SECRET}",
        f"postgres://payments@db.internal/payments?sslmode=require&password={DB_SECRET}",
        f"postgresql://payments@db.internal/payments?pass%77ord={DB_SECRET}",
        f"postgresql://payments@db.internal/payments?sslpassword={DB_SECRET}",
        f"postgresql://payments@db.internal/payments?passfile=/etc/{DB_SECRET}",
        f"postgresql://payments@db.internal/payments?oauth_client_secret={DB_SECRET}",
        f"postgresql://payments:{DB_SECRET}@x@db.internal/payments",
        f"postgresql://payments:{DB_SECRET[:4]}@{DB_SECRET[4:]}@db.internal/payments",
        f"postgresql://payments@db1:5432,db2:5432/payments?password={DB_SECRET}&target_session_attrs=any",
        f"postgresql://payments@db.internal/payments?{DB_SECRET}",
        f"host=db.internal password={DB_SECRET}",
        f"postgresql://[::1/payments?password={DB_SECRET}",
    ],
    ids=[
        "userinfo",
        "query",
        "query-after-another",
        "percent-encoded-name",
        "sslpassword",
        "passfile",
        "oauth-client-secret",
        "at-sign-in-password",
        "at-sign-splits-password",
        "multi-host",
        "bare-parameter",
        "keyword-form",
        "unparseable",
    ],
)
def test_database_url_redaction_covers_every_libpq_secret_form(url: str) -> None:
    from payments_svc.store_postgres import redact_url

    redacted = redact_url(url)
    assert DB_SECRET not in redacted and DB_SECRET[4:] not in redacted
    if url.startswith("postgres") and "[" not in url:
        assert "db" in redacted, "what is not secret stays, to tell which database"


# -- 3. a refund needs an idempotency key -------------------------------------------------------


@pytest.fixture
def payments(token_server: TokenServer, tmp_path: Path) -> Iterator[Gateway]:
    thread = start_payments(tmp_path / "payments", token_server.target)
    with grpc.insecure_channel(f"127.0.0.1:{thread.running.port}") as channel:
        yield Gateway(payments_pb2_grpc.PaymentServiceStub(channel), token_server, thread.running)
    thread.stop(0)


def test_refund_without_idempotency_key_refused(payments: Gateway) -> None:
    token = payments.token("refund-merchant")
    txn = create(payments, token, amount="100.00", key="order-r").transaction_id
    for attempt in range(2):  # the call and its retry
        with pytest.raises(grpc.RpcError) as info:
            payments.stub.RefundPayment(
                pb.RefundPaymentRequest(transaction_id=txn, amount="10.00"),
                metadata=bearer(token),
                timeout=10,
            )
        assert reason(info.value) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT"), attempt
    after = payments.stub.GetPayment(
        pb.GetPaymentRequest(transaction_id=txn), metadata=bearer(token), timeout=10
    )
    assert after.payment.refunded_amount == "0.00"
    # with a key, the retry refunds once
    for _ in range(2):
        refunded = payments.stub.RefundPayment(
            pb.RefundPaymentRequest(transaction_id=txn, amount="10.00", idempotency_key="refund-r"),
            metadata=bearer(token),
            timeout=10,
        ).payment
        assert refunded.refunded_amount == "10.00"
