"""Domain and HTTP metrics on real servers, each driven by what it counts: verifications by
outcome on a PaymentService (an expired token, a forged kid, a bad signature, another audience, a
revoked token, cache hits), its key set (fetches, failures, unknown-kid refreshes, age) and
revocation list (entries, sequence, seconds behind); the TokenService's signing keys by state
through a rotation and a revocation, and its revocation list; both HTTP edges by route template
and status. None of them ever carries a client id, a jti or a path as a label."""

from __future__ import annotations

import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from prometheus_client import CollectorRegistry

from authsvc.metrics import GrpcMetrics
from authsvc.server.app import RunningServer, open_authority, start_server
from authsvc.verify import GrpcJwksSource, GrpcRevocationSource, JwksCache, RevocationCache, TokenVerifier
from payments_svc.app import PaymentsConfig, RunningPayments
from payments_svc.app import start_server as start_payments
from payments_svc.v1 import payments_pb2, payments_pb2_grpc
from tests.conftest import ISSUER, TokenServer, serve_config
from tests.helpers import ServerThread
from tests.security.test_token_verification_attacks import CLIENT_ID, In
from tests.test_metrics import scrape, value
from tests.verify.test_revocations import (
    FORGE,
    RS_ID,
    RS_SECRET,
    WAIT,
    FakeTokenService,
    fake_token_service,
    token_entry,
)

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
VERIFICATIONS = "authsvc_token_verifications_total"


def list_payments(port: int, token: str) -> grpc.StatusCode:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            payments_pb2_grpc.PaymentServiceStub(channel).ListPayments(
                payments_pb2.ListPaymentsRequest(),
                metadata=(("authorization", f"Bearer {token}"),),
                timeout=10,
            )
        except grpc.RpcError as err:
            return err.code()
    return grpc.StatusCode.OK


def read_token(**claims: object) -> str:
    return FORGE.token(claims=FORGE.claims(aud="payments", scope="payments:read", **claims))


@dataclass
class Gateway:
    """A PaymentService on a FakeTokenService, its key cache on a clock the test moves."""

    fake: FakeTokenService
    running: RunningPayments
    clock: list[float]

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.running.metrics_port}"

    def scrape(self) -> Samples:
        return scrape(self.base)


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[Gateway]:
    with fake_token_service() as (fake, target):
        clock = [1000.0]
        keys = JwksCache(
            GrpcJwksSource(target, watch=False), max_age=3600, cooldown=5, monotonic=lambda: clock[0]
        )
        revocations = RevocationCache(GrpcRevocationSource(target, client_id=RS_ID, client_secret=RS_SECRET))
        verifier = TokenVerifier(issuer=ISSUER, audience="payments", jwks=keys, revocations=revocations)
        config = PaymentsConfig(
            data_dir=tmp_path / "pay",
            listen="127.0.0.1:0",
            http_listen="127.0.0.1:0",
            metrics_listen="127.0.0.1:0",
            token_service=target,
            issuer=ISSUER,
        )
        thread: ServerThread[RunningPayments] = ServerThread(
            lambda: start_payments(config, verifier=verifier)
        )
        running = thread.start()
        try:
            yield Gateway(fake, running, clock)
        finally:
            thread.stop(grace=0)


def delta(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


def test_verifications_are_counted_by_outcome_exactly(gateway: Gateway) -> None:
    port = gateway.running.port
    good = read_token()
    forged_kid = FORGE.token(header=FORGE.header(kid="no-such-kid"), claims=FORGE.claims(aud="payments"))
    tampered = good[:-8] + ("AAAAAAAA" if not good.endswith("AAAAAAAA") else "BBBBBBBB")
    before = gateway.scrape()
    calls = {
        "good, then twice from the cache": [good, good, good],
        "expired": [read_token(exp=In(-3600), iat=In(-3900), nbf=In(-3900))],
        "another audience": [FORGE.token(claims=FORGE.claims(aud="ledger", scope="payments:read"))],
        "bad signature": [tampered],
        "not RS256": [FORGE.token(header=FORGE.header(alg="HS256"), claims=FORGE.claims(aud="payments"))],
    }
    for name, tokens in calls.items():
        for token in tokens:
            expected = grpc.StatusCode.OK if token == good else grpc.StatusCode.UNAUTHENTICATED
            assert list_payments(port, token) == expected, name
    # a forged kid: one throttled refresh (the cooldown has passed), then the kid is known unknown
    gateway.clock[0] += 10
    assert list_payments(port, forged_kid) == grpc.StatusCode.UNAUTHENTICATED
    assert list_payments(port, forged_kid) == grpc.StatusCode.UNAUTHENTICATED
    after = gateway.scrape()

    def moved(outcome: str, cache: str = "miss") -> float:
        return delta(before, after, VERIFICATIONS, outcome=outcome, cache=cache)

    assert moved("accepted", "miss") == 1
    assert moved("accepted", "hit") == 2
    assert moved("expired") == 1
    assert moved("wrong_audience") == 1
    assert moved("bad_signature") == 1
    assert moved("wrong_algorithm") == 1
    assert moved("unknown_kid") == 2
    total = sum(v for (n, _), v in after.items() if n == VERIFICATIONS) - sum(
        v for (n, _), v in before.items() if n == VERIFICATIONS
    )
    assert total == 9  # every call verified once, none twice
    assert delta(before, after, "authsvc_jwks_unknown_kid_refreshes_total") == 1
    assert delta(before, after, "authsvc_jwks_fetches_total") == 1
    assert delta(before, after, "authsvc_jwks_fetch_failures_total") == 0
    assert value(after, "authsvc_jwks_keys") == 1
    assert value(after, "authsvc_jwks_age_seconds") == 0  # the unknown kid's refresh, at 1010
    gateway.clock[0] += 7
    assert value(gateway.scrape(), "authsvc_jwks_age_seconds") == 7  # computed at scrape time


def test_a_revoked_token_is_counted_and_the_list_is_shown(gateway: Gateway) -> None:
    port = gateway.running.port
    jti = "revoke-me-0123456789"
    token = read_token(jti=jti)
    assert list_payments(port, token) == grpc.StatusCode.OK  # now in the verified-token cache
    before = gateway.scrape()
    assert value(before, "authsvc_revocation_list_entries", subject="jti") == 0
    sequence = gateway.fake.add(token_entry(jti))
    revocations = gateway.running.verifier.revocations
    assert revocations is not None and revocations.wait_for(sequence, timeout=WAIT)
    assert list_payments(port, token) == grpc.StatusCode.UNAUTHENTICATED
    after = gateway.scrape()
    assert delta(before, after, VERIFICATIONS, outcome="revoked", cache="hit") == 1
    assert value(after, "authsvc_revocation_list_entries", subject="jti") == 1
    assert value(after, "authsvc_revocation_list_entries", subject="client") == 0
    assert value(after, "authsvc_revocation_list_sequence") == sequence
    assert value(after, "authsvc_revocation_list_seconds_behind") == 0  # the stream works
    assert_no_id_labels(after, ids={jti, CLIENT_ID})


def test_an_unusable_key_set_is_a_fetch_failure_and_the_old_set_stays(gateway: Gateway) -> None:
    before = gateway.scrape()
    gateway.fake.jwks = '{"keys": "not a list"}'
    assert not gateway.running.verifier.keys.refresh()
    after = gateway.scrape()
    assert delta(before, after, "authsvc_jwks_fetches_total") == 1
    assert delta(before, after, "authsvc_jwks_fetch_failures_total") == 1
    assert value(after, "authsvc_jwks_keys") == 1
    assert list_payments(gateway.running.port, read_token()) == grpc.StatusCode.OK


# -- the TokenService ---------------------------------------------------------------------------


@pytest.fixture
def metered(tmp_path: Path) -> Iterator[TokenServer]:
    config = serve_config(tmp_path / "data", metrics_listen="127.0.0.1:0", http_listen="127.0.0.1:0")
    thread: ServerThread[RunningServer] = ServerThread(
        lambda: start_server(config, authority=open_authority(config))
    )
    running = thread.start()
    try:
        yield TokenServer(running, config, thread)
    finally:
        thread.stop(grace=0)


def wait_for(condition: object) -> None:
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        if callable(condition) and condition():
            return
        time.sleep(0.05)
    raise AssertionError("the condition never held")


def test_key_states_follow_a_rotation_and_a_revocation(metered: TokenServer) -> None:
    base = f"http://127.0.0.1:{metered.running.metrics_port}"
    samples = scrape(base)
    states = {
        state: value(samples, "authsvc_signing_keys", state=state) for state in ("next", "active", "revoked")
    }
    assert states == {"next": 0, "active": 1, "revoked": 0}
    assert 0 <= value(samples, "authsvc_signing_key_age_seconds") < 3600
    rotated = metered.authority.keys.rotate()
    wait_for(lambda: value(scrape(base), "authsvc_signing_keys", state="next") == 1)  # the next key tick
    metered.authority.keys.revoke(rotated.kid)
    wait_for(lambda: value(scrape(base), "authsvc_signing_keys", state="revoked") == 1)
    samples = scrape(base)
    assert value(samples, "authsvc_signing_keys", state="next") == 0
    assert value(samples, "authsvc_signing_keys", state="active") == 1
    labels = {v for (name, ls), _ in samples.items() if name == "authsvc_signing_keys" for k, v in ls}
    assert labels == {"next", "active", "retiring", "retired", "revoked"}  # states, never a kid


def test_the_token_services_revocation_list(metered: TokenServer) -> None:
    base = f"http://127.0.0.1:{metered.running.metrics_port}"
    assert value(scrape(base), "authsvc_revocation_list_entries", subject="jti") == 0
    metered.authority.revocations.revoke_token("a-jti-to-revoke-0001")
    wait_for(lambda: value(scrape(base), "authsvc_revocation_list_entries", subject="jti") == 1)
    samples = scrape(base)
    assert value(samples, "authsvc_revocation_list_sequence") == metered.running.revocations.sequence  # type: ignore[union-attr]
    assert_no_id_labels(samples, ids={"a-jti-to-revoke-0001"})


def assert_no_id_labels(samples: Samples, ids: set[str]) -> None:
    """No label is named for an identity, and no label value holds one of ``ids``."""
    for name, labels in samples:
        for key, label_value in labels:
            assert key not in {"client_id", "jti", "sub", "kid"}, (name, key)
            assert not any(i in label_value for i in ids), (name, key, label_value)


# -- the HTTP edges -----------------------------------------------------------------------------

HTTP_DURATION = "http_server_request_duration_seconds_count"


def http(method: str, url: str, *, body: bytes | None = None, headers: dict[str, str] | None = None) -> int:
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:  # noqa: S310 - a test URL
            answer.read()
            return int(answer.status)
    except urllib.error.HTTPError as exc:
        exc.read()
        return exc.code


def requests_of(samples: Samples, **labels: str) -> float:
    return value(samples, HTTP_DURATION, **labels)


def test_token_service_http_requests_are_counted_by_route_and_status(metered: TokenServer) -> None:
    base = f"http://127.0.0.1:{metered.running.metrics_port}"
    client = metered.register(client_id="http-shop-client")
    form = {"grant_type": "client_credentials", "client_id": client.client_id}
    form_type = {"Content-Type": "application/x-www-form-urlencoded"}
    before = scrape(base)
    token_url = f"{metered.http_url}/oauth2/token"
    for _ in range(3):
        body = urllib.parse.urlencode({**form, "client_secret": client.secret}).encode()
        assert http("POST", token_url, body=body, headers=form_type) == 200
    wrong = urllib.parse.urlencode({**form, "client_secret": "wrong"}).encode()
    assert http("POST", token_url, body=wrong, headers=form_type) == 401
    assert http("GET", f"{metered.http_url}/.well-known/jwks.json") == 200
    assert http("GET", f"{metered.http_url}/no/such/path/txn_1234567890") == 404
    assert http("GET", token_url) == 405
    after = scrape(base)

    def moved(method: str, route: str, code: str) -> float:
        labels = {"http_request_method": method, "http_route": route, "http_response_status_code": code}
        return requests_of(after, **labels) - requests_of(before, **labels)

    assert moved("POST", "/oauth2/token", "200") == 3
    assert moved("POST", "/oauth2/token", "401") == 1
    assert moved("GET", "/.well-known/jwks.json", "200") == 1
    assert moved("GET", "unmatched", "404") == 1
    assert moved("GET", "unmatched", "405") == 1
    assert value(after, "authsvc_tokens_issued_total") - value(before, "authsvc_tokens_issued_total") == 3
    assert_no_id_labels(after, ids={client.client_id, "txn_1234567890", "/no/such"})


def test_payments_http_requests_are_counted_by_route_template(gateway: Gateway) -> None:
    api = f"http://127.0.0.1:{gateway.running.http_port}/api/v1/payments"
    bearer = {"Authorization": f"Bearer {read_token()}"}
    before = gateway.scrape()
    assert http("GET", api, headers=bearer) == 200
    assert http("GET", f"{api}/txn_0123456789abcdef", headers=bearer) == 404  # no such payment
    assert http("GET", f"{api}/txn_fedcba9876543210") == 401  # no token
    assert http("GET", f"{api.removesuffix('/payments')}/refunds/txn_0123456789abcdef", headers=bearer) == 404
    after = gateway.scrape()

    def moved(route: str, code: str) -> float:
        labels = {"http_request_method": "GET", "http_route": route, "http_response_status_code": code}
        return requests_of(after, **labels) - requests_of(before, **labels)

    assert moved("/api/v1/payments", "200") == 1
    assert moved("/api/v1/payments/{transaction_id}", "404") == 1
    assert moved("/api/v1/payments/{transaction_id}", "401") == 1
    assert moved("unmatched", "404") == 1
    assert_no_id_labels(after, ids={"txn_0123456789abcdef", "txn_fedcba9876543210", CLIENT_ID, "refunds"})


# -- the gRPC metrics of one process: plain numbers, the same exposition ------------------------


def test_local_grpc_histogram_matches_prometheus_client(monkeypatch: pytest.MonkeyPatch) -> None:
    """A one-process server counts gRPC calls in plain numbers (no locks on the hot path); what it
    exposes must be what prometheus_client's own Histogram and Counters expose for the same calls,
    bucket boundaries included."""
    observations = [0.0, 0.004, 0.005, 0.0051, 0.3, 1.0, 10.0, 25.0]
    local, shared = CollectorRegistry(), CollectorRegistry()
    local_method = GrpcMetrics(local, local=True).method("unary", "/pkg.Service/Call")
    shared_method = GrpcMetrics(shared).method("unary", "/pkg.Service/Call")
    for elapsed in observations:
        monkeypatch.setattr(time, "perf_counter", lambda e=elapsed: e)  # what authsvc.metrics reads
        for method in (local_method, shared_method):
            method.start()
            method.done("OK" if elapsed < 1 else "Unavailable", 0.0)
    monkeypatch.undo()

    def samples(registry: CollectorRegistry) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        return {
            (s.name, frozenset(s.labels.items())): s.value
            for family in registry.collect()
            for s in family.samples
            if not s.name.endswith("_created")
        }

    ours, theirs = samples(local), samples(shared)
    assert ours == theirs
    labels = {"grpc_type": "unary", "grpc_service": "pkg.Service", "grpc_method": "Call"}
    assert ours[("grpc_server_handling_seconds_bucket", frozenset({**labels, "le": "0.005"}.items()))] == 3
    assert ours[("grpc_server_handled_total", frozenset({**labels, "grpc_code": "Unavailable"}.items()))] == 3
