"""Rate limits on a real TokenService (issue 12): a client over its rate is refused with
RESOURCE_EXHAUSTED, ErrorInfo RATE_LIMITED, RetryInfo and grpc-retry-pushback-ms while another
client is served, in process and shared in Redis; HTTP answers 429 with Retry-After; the peer
limit refuses before the store is read; a Redis outage falls back to the local limits; the
refusals are counted and audited; the flags and environment variables parse and refuse
nonsense on one line."""

from __future__ import annotations

import logging
import os
import socket
import urllib.request
from pathlib import Path
from typing import Any

import grpc
import pytest

from authsvc import cli
from authsvc.core.ratelimit import RateLimit, parse_rate_limit
from authsvc.server.config import ServeConfig
from authsvc.v1 import token_pb2_grpc
from tests.helpers import authsvc_cli
from tests.ratelimits import TWO_AN_HOUR, grpc_token, http_post, http_token, limited_server
from tests.redisdb import redis_keys


@pytest.fixture(params=["local", "redis"])
def backend(request: pytest.FixtureRequest) -> dict[str, Any]:
    """ServeConfig overrides: buckets in process, or shared in the test Redis under a prefix of
    this test's own (the Redis case fails under CI when Redis is down, never skips)."""
    if request.param == "local":
        return {}
    return {
        "redis_url": request.getfixturevalue("redis_url"),
        "redis_key_prefix": request.getfixturevalue("redis_prefix"),
    }


def assert_rate_limited(refusal: Any, *, limit_seconds: float) -> None:
    assert refusal is not None
    assert refusal.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert (refusal.reason, refusal.domain) == ("RATE_LIMITED", "authsvc")
    assert refusal.retry_delay is not None and limit_seconds - 60 < refusal.retry_delay <= limit_seconds
    assert refusal.pushback_ms is not None
    assert int(refusal.pushback_ms) == pytest.approx(refusal.retry_delay * 1000, abs=1)


def test_a_client_over_its_rate_is_refused_with_retry_info_and_another_is_not(
    tmp_path: Path, backend: dict[str, Any]
) -> None:
    with limited_server(tmp_path / "data", client_rate_limit=TWO_AN_HOUR, **backend) as server:
        shop, other = server.register("shop"), server.register("other")
        with grpc.insecure_channel(server.target) as channel:
            stub = token_pb2_grpc.TokenServiceStub(channel)
            assert grpc_token(stub, shop.client_id, shop.secret) is None
            assert grpc_token(stub, shop.client_id, shop.secret) is None
            assert_rate_limited(grpc_token(stub, shop.client_id, shop.secret), limit_seconds=3600)
            assert_rate_limited(grpc_token(stub, shop.client_id, shop.secret), limit_seconds=3600)
            assert grpc_token(stub, other.client_id, other.secret) is None
            assert grpc_token(stub, other.client_id, other.secret) is None
        limits = server.running.rate_limits
        assert limits is not None
        if backend:  # every decision was Redis's
            assert limits.local.size("client") == 0
            assert len(redis_keys(backend["redis_key_prefix"])) == 2


def test_replicas_share_a_client_limit_through_redis(
    tmp_path: Path, redis_url: str, redis_prefix: str
) -> None:
    """Two servers (each with its own store, the client registered in both): the second refuses
    what the first already served."""
    shared = {"client_rate_limit": TWO_AN_HOUR, "redis_url": redis_url, "redis_key_prefix": redis_prefix}
    with limited_server(tmp_path / "a", **shared) as a, limited_server(tmp_path / "b", **shared) as b:
        on_a, on_b = a.register("shop"), b.register("shop")
        with grpc.insecure_channel(a.target) as ch_a, grpc.insecure_channel(b.target) as ch_b:
            stub_a, stub_b = token_pb2_grpc.TokenServiceStub(ch_a), token_pb2_grpc.TokenServiceStub(ch_b)
            assert grpc_token(stub_a, "shop", on_a.secret) is None
            assert grpc_token(stub_b, "shop", on_b.secret) is None
            assert_rate_limited(grpc_token(stub_a, "shop", on_a.secret), limit_seconds=3600)
            assert_rate_limited(grpc_token(stub_b, "shop", on_b.secret), limit_seconds=3600)


def test_http_answers_429_with_retry_after(tmp_path: Path) -> None:
    with limited_server(
        tmp_path / "data", http_listen="127.0.0.1:0", client_rate_limit=TWO_AN_HOUR
    ) as server:
        shop, other = server.register("shop"), server.register("other")
        for _ in range(2):
            assert http_token(server.http_url, shop.client_id, shop.secret)[0] == 200
        status, headers, body = http_token(server.http_url, shop.client_id, shop.secret)
        assert status == 429
        assert 3540 <= int(headers["retry-after"]) <= 3600
        assert headers["cache-control"] == "no-store"
        assert body["error"] == "rate_limited" and "retry in" in body["error_description"]
        # introspection authenticates the same client: refused the same way, not a server error
        status, headers, body = http_post(
            server.http_url, "/oauth2/introspect", {"token": "x"}, basic=(shop.client_id, shop.secret)
        )
        assert (status, body["error"]) == (429, "rate_limited") and int(headers["retry-after"]) > 0
        assert http_token(server.http_url, other.client_id, other.secret)[0] == 200


def test_the_peer_limit_refuses_a_flood_before_the_store_is_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Unauthenticated requests from one address, each naming an unknown client (so none is in
    the client cache): after the burst, none reaches the store; gRPC and HTTP share the bucket
    of the address; another address is served."""
    peer_limit = RateLimit(rate=1 / 3600, burst=5)
    with limited_server(
        tmp_path / "data", http_listen="127.0.0.1:0", peer_rate_limit=peer_limit, failed_auth_limit=None
    ) as server:
        shop = server.register("shop")
        store = server.authority.store
        reads: list[str] = []
        real_get = store.get_client

        def counting(client_id: str) -> Any:
            reads.append(client_id)
            return real_get(client_id)

        monkeypatch.setattr(store, "get_client", counting)
        with grpc.insecure_channel(server.target) as channel:
            stub = token_pb2_grpc.TokenServiceStub(channel)
            answers = [grpc_token(stub, f"nobody-{i}", "x" * 40) for i in range(40)]
        codes = [a.reason if a is not None else "OK" for a in answers]
        assert codes == ["INVALID_CLIENT"] * 5 + ["RATE_LIMITED"] * 35
        assert len(reads) == 5
        status, _, body = http_token(server.http_url, shop.client_id, shop.secret)  # same address
        assert (status, body["error"]) == (429, "rate_limited")
        assert http_token(server.http_url, shop.client_id, shop.secret, source="127.0.0.2")[0] == 200
        assert len(reads) == 6  # only the other address's request read the store


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_with_redis_down_the_limits_hold_per_process_and_the_outage_is_logged_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="authsvc.ratelimit")
    with limited_server(
        tmp_path / "data",
        client_rate_limit=TWO_AN_HOUR,
        redis_url=f"redis://:pw-not-logged@127.0.0.1:{closed_port()}/0",
    ) as server:
        shop, other = server.register("shop"), server.register("other")
        with grpc.insecure_channel(server.target) as channel:
            stub = token_pb2_grpc.TokenServiceStub(channel)
            assert grpc_token(stub, shop.client_id, shop.secret) is None
            assert grpc_token(stub, shop.client_id, shop.secret) is None
            for _ in range(10):
                assert_rate_limited(grpc_token(stub, shop.client_id, shop.secret), limit_seconds=3600)
            assert grpc_token(stub, other.client_id, other.secret) is None
    lines = [r.getMessage() for r in caplog.records if r.name == "authsvc.ratelimit"]
    assert len(lines) == 1 and "does not answer" in lines[0] and "each process limits on its own" in lines[0]
    assert "pw-not-logged" not in caplog.text


def test_refusals_are_counted_and_audited(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="authsvc.audit")
    with limited_server(
        tmp_path / "data",
        metrics_listen="127.0.0.1:0",
        client_rate_limit=RateLimit(rate=1 / 3600, burst=1),
        failed_auth_limit=RateLimit(rate=1 / 3600, burst=1),
    ) as server:
        shop = server.register("shop")
        with grpc.insecure_channel(server.target) as channel:
            stub = token_pb2_grpc.TokenServiceStub(channel)
            assert grpc_token(stub, "shop", shop.secret) is None
            assert grpc_token(stub, "shop", shop.secret) is not None  # client limit
            assert grpc_token(stub, "ghost", "x" * 40) is not None  # a failure
            assert grpc_token(stub, "ghost", "x" * 40) is not None  # throttled
        url = f"http://127.0.0.1:{server.running.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as answer:
            text = answer.read().decode()
    assert 'authsvc_rate_limited_total{limit="client"} 1.0' in text
    assert 'authsvc_rate_limited_total{limit="failed_auth"} 1.0' in text
    assert 'authsvc_rate_limited_total{limit="peer"} 0.0' in text
    assert 'authsvc_tokens_refused_total{error="rate_limited"} 2.0' in text
    assert "shop" not in text and "ghost" not in text  # never a client id as a label
    refused = [r for r in caplog.records if getattr(r, "event", None) == "token.refused"]
    reasons = [(getattr(r, "error", None), getattr(r, "reason", None)) for r in refused]
    assert reasons == [
        ("rate_limited", "client_rate_limit"),
        ("invalid_client", "unknown_client"),
        ("rate_limited", "failed_auth_rate_limit"),
    ]
    assert getattr(refused[0], "client_id", None) == "shop"  # authenticated: shown in full
    assert 3500 < float(getattr(refused[0], "retry_after", 0)) <= 3600


# -- flags and environment --------------------------------------------------------------------


def parse_serve(argv: list[str], env: dict[str, str] | None = None) -> Any:
    return cli.build_parser(env or {}).parse_args(["serve", *argv])


def test_the_flags_and_their_environment_variables() -> None:
    args = parse_serve([])
    assert args.client_rate_limit is None and args.peer_rate_limit is None
    assert args.failed_auth_limit == parse_rate_limit("10/m")
    assert args.redis_url is None and args.redis_key_prefix == "authsvc:rl"
    env = {
        "AUTHSVC_CLIENT_RATE_LIMIT": "100/s,burst=200",
        "AUTHSVC_PEER_RATE_LIMIT": "600/m",
        "AUTHSVC_FAILED_AUTH_LIMIT": "off",
        "AUTHSVC_REDIS_URL": "redis://127.0.0.1:6379/2",
        "AUTHSVC_REDIS_KEY_PREFIX": "shop-prod",
    }
    args = parse_serve([], env)
    assert args.client_rate_limit == RateLimit(rate=100, burst=200)
    assert args.peer_rate_limit == RateLimit(rate=10, burst=600)
    assert args.failed_auth_limit is None
    assert (args.redis_url, args.redis_key_prefix) == ("redis://127.0.0.1:6379/2", "shop-prod")
    args = parse_serve(["--client-rate-limit", "5/s"], env)  # the flag wins
    assert args.client_rate_limit == RateLimit(rate=5, burst=5)


@pytest.mark.parametrize(
    ("argv", "env"),
    [
        (["--client-rate-limit", "100/x"], {}),
        (["--peer-rate-limit", "fast"], {}),
        (["--failed-auth-limit", "0/s"], {}),
        ([], {"AUTHSVC_CLIENT_RATE_LIMIT": "lots"}),
        (["--client-rate"], {}),  # no abbreviations
    ],
)
def test_bad_limit_values_are_one_line_usage_errors(
    argv: list[str], env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as caught:
        cli.main(["serve", *argv, "--listen", "127.0.0.1:0"], env=env)
    assert caught.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("authsvc") and "error:" in err and "Traceback" not in err


@pytest.mark.parametrize("url", ["http://cache:6379", "127.0.0.1:6379", "redis://"])
def test_a_bad_redis_url_is_a_one_line_error(tmp_path: Path, url: str) -> None:
    env = {**os.environ, "AUTHSVC_DATA_DIR": str(tmp_path / "data"), "AUTHSVC_KEK": "11" * 32}
    done = authsvc_cli("serve", "--listen", "127.0.0.1:0", "--redis-url", url, env=env, check=False)
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1 and "--redis-url must be redis://" in done.stderr


def test_config_refuses_a_bad_key_prefix(tmp_path: Path) -> None:
    from authsvc.core.errors import ConfigurationError

    for prefix in ("", "has space", "x" * 65):
        with pytest.raises(ConfigurationError):
            ServeConfig(data_dir=tmp_path, redis_key_prefix=prefix)


def test_the_start_up_line_says_which_limits_apply(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="authsvc.server")
    with limited_server(tmp_path / "other", client_rate_limit=RateLimit(rate=100, burst=200)):
        pass
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("rate limits")]
    assert lines == [
        "rate limits (per process): client 100/s,burst=200, peer off, failed authentications 10/m,burst=10"
    ]
