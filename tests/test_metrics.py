"""``--metrics-listen`` on a real TokenService: the go-grpc-prometheus server metrics move by
exactly the calls made, refusals are counted with their codes, an unknown method is not counted,
the token counters follow, and ``/metrics`` is valid Prometheus text."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from authsvc.authority.keyring import Keyring
from authsvc.metrics import grpc_code_name
from authsvc.server.app import RunningServer, open_authority, start_server
from authsvc.v1 import token_pb2, token_pb2_grpc
from tests.conftest import TokenServer, serve_config
from tests.helpers import ServerThread

ISSUE = {"grpc_type": "unary", "grpc_service": "authsvc.v1.TokenService", "grpc_method": "IssueToken"}


def get(url: str) -> tuple[int, str, str]:
    """Status, content type and body of a GET (an HTTP error status too)."""
    try:
        with urllib.request.urlopen(url, timeout=10) as answer:  # noqa: S310 - a test URL
            return answer.status, answer.headers.get("Content-Type", ""), answer.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("Content-Type", ""), exc.read().decode()


def scrape(base: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of ``/metrics``, parsed by prometheus_client's own parser."""
    status, content_type, body = get(f"{base}/metrics")
    assert status == 200
    assert content_type.startswith("text/plain")
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


@pytest.fixture
def metered(tmp_path: Path) -> Iterator[TokenServer]:
    config = serve_config(tmp_path / "data", metrics_listen="127.0.0.1:0")
    thread: ServerThread[RunningServer] = ServerThread(
        lambda: start_server(config, authority=open_authority(config))
    )
    running = thread.start()
    try:
        yield TokenServer(running, config, thread)
    finally:
        thread.stop(grace=0)


def test_grpc_and_token_metrics_count_exactly_the_calls_made(metered: TokenServer) -> None:
    base = f"http://127.0.0.1:{metered.running.metrics_port}"
    client = metered.register()
    before = scrape(base)
    with grpc.insecure_channel(metered.target) as channel:
        stub = token_pb2_grpc.TokenServiceStub(channel)
        for _ in range(3):
            stub.IssueToken(
                token_pb2.IssueTokenRequest(
                    grant_type="client_credentials", client_id=client.client_id, client_secret=client.secret
                ),
                timeout=10,
            )
        with pytest.raises(grpc.RpcError) as refused:
            stub.IssueToken(
                token_pb2.IssueTokenRequest(
                    grant_type="client_credentials", client_id=client.client_id, client_secret="wrong"
                ),
                timeout=10,
            )
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        unknown: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(
            "/authsvc.v1.TokenService/NoSuchMethod"
        )
        with pytest.raises(grpc.RpcError) as missing:
            unknown(b"", timeout=10)
        assert missing.value.code() == grpc.StatusCode.UNIMPLEMENTED
    after = scrape(base)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("grpc_server_started_total", **ISSUE) == 4
    assert delta("grpc_server_handled_total", **ISSUE, grpc_code="OK") == 3
    assert delta("grpc_server_handled_total", **ISSUE, grpc_code="Unauthenticated") == 1
    assert delta("grpc_server_handling_seconds_count", **ISSUE) == 4
    assert delta("authsvc_tokens_issued_total") == 3
    assert delta("authsvc_tokens_refused_total", error="invalid_client") == 1
    # label cardinality stays bounded: only registered methods, never a client id or a jti
    methods = {dict(labels).get("grpc_method") for _, labels in after}
    assert "NoSuchMethod" not in methods
    assert all(client.client_id not in v for _, labels in after for k, v in labels if k != "grpc_service")


def test_probes(metered: TokenServer) -> None:
    base = f"http://127.0.0.1:{metered.running.metrics_port}"
    assert get(f"{base}/livez")[0] == 200
    status, _, body = get(f"{base}/readyz")
    assert status == 200, body
    assert json.loads(body)["status"] == "ready"


def test_keyring_is_unhealthy_when_its_store_has_not_answered_lately(metered: TokenServer) -> None:
    now = [1000.0]
    keyring = Keyring(
        metered.authority.keys, metered.config.lifecycle_policy(), tick_interval=1.0, monotonic=lambda: now[0]
    )
    assert not keyring.healthy  # nothing loaded
    keyring.load()
    assert keyring.healthy
    now[0] += 3 * 1.0 + 5.0 + 0.1  # a tick stuck on a store that never answers
    assert not keyring.healthy
    keyring.load()
    assert keyring.healthy


def test_code_names_are_go_spellings() -> None:
    assert grpc_code_name(None) == "OK"
    assert grpc_code_name(grpc.StatusCode.UNAUTHENTICATED) == "Unauthenticated"
    assert grpc_code_name(grpc.StatusCode.CANCELLED) == "Canceled"
    assert grpc_code_name(16) == "Unauthenticated"
