"""Unit tests of the limit machinery: the log helpers (authsvc.logsafe), the WatchJwks stream
slots and peer keys, and the validation of the limit flags of both serve commands."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import pytest

from authsvc import cli
from authsvc.core.errors import ConfigurationError, RateLimited
from authsvc.listen import ConnectionLimits, connection_limits_from
from authsvc.logsafe import LogRateLimiter, client_id_for_log, loggable
from authsvc.server.token_service import StreamSlots, peer_key
from authsvc.status import status_for
from payments_svc import cli as payments_cli
from tests.conftest import serve_config

SECRET = "authsvc_cs_" + "Q" * 43


class Clock:
    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


def test_loggable_escapes_and_truncates() -> None:
    assert loggable("shop") == "'shop'"
    assert loggable("a\nINFO forged line") == repr("a\nINFO forged line")
    assert loggable("x" * 100) == repr("x" * 64) + "…"


def test_unknown_client_id_is_a_prefix_and_a_tag() -> None:
    shown = client_id_for_log(SECRET, known=False)
    assert shown == "'authsvc_'…#" + hashlib.sha256(SECRET.encode()).hexdigest()[:12]
    assert "Q" not in shown
    assert client_id_for_log("merchant-shop", known=True) == "'merchant-shop'"
    assert client_id_for_log("", known=False) == "''"


def test_rate_limiter_bursts_then_summarizes() -> None:
    clock = Clock()
    limiter = LogRateLimiter(rate=2, burst=3, clock=clock)
    assert [limiter.acquire("k") for _ in range(5)] == [(True, 0)] * 3 + [(False, 0)] * 2
    assert limiter.acquire("other") == (True, 0)  # each key its own bucket
    clock.now += 0.5  # one token
    assert limiter.acquire("k") == (True, 2)
    assert limiter.acquire("k") == (False, 0)
    clock.now -= 100  # a clock stepping back refills nothing
    assert limiter.acquire("k") == (False, 0)


def test_rate_limiter_log_and_flush(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    limiter = LogRateLimiter(rate=1, burst=1, clock=clock)
    logger = logging.getLogger("tests.logsafe")
    caplog.set_level(logging.INFO, logger="tests.logsafe")
    assert limiter.log(logger, logging.INFO, "refused", "refused %s", "a")
    assert not limiter.log(logger, logging.INFO, "refused", "refused %s", "b")
    assert not limiter.log(logger, logging.INFO, "refused", "refused %s", "c")
    assert limiter.flush(logger) == 2
    clock.now += 1
    assert limiter.log(logger, logging.INFO, "refused", "refused %s", "d")
    assert caplog.messages == ["refused a", "suppressed 2 similar lines (refused)", "refused d"]


def test_rate_limiter_keys_are_bounded() -> None:
    limiter = LogRateLimiter(rate=1, burst=1, clock=Clock(), max_keys=2)
    assert limiter.acquire("a")[0] and limiter.acquire("b")[0]
    assert limiter.acquire("c")[0]  # the shared overflow bucket
    assert not limiter.acquire("d")[0]


@pytest.mark.parametrize(
    ("peer", "key"),
    [
        ("ipv4:10.1.2.3:5678", "ipv4:10.1.2.3"),
        ("ipv6:[::1]:5678", "ipv6:[::1]"),
        ("ipv6:%5B::1%5D:5678", "ipv6:[::1]"),
        ("ipv6:[::ffff:10.1.2.3]:1", "ipv4:10.1.2.3"),
        ("ipv6:[2001:DB8::1]:443", "ipv6:[2001:db8::1]"),
        ("unix:/run/authsvc.sock", "unix:/run/authsvc.sock"),
        ("garbage", "garbage"),
    ],
    ids=["ipv4", "ipv6", "ipv6-percent-encoded", "ipv4-mapped", "ipv6-normalized", "unix", "other"],
)
def test_peer_key_drops_the_port(peer: str, key: str) -> None:
    assert peer_key(peer) == key


def test_stream_slots_cap_per_peer_and_in_all() -> None:
    slots = StreamSlots(per_peer=2, total=3)
    a1 = slots.acquire("ipv4:10.0.0.1:1")
    slots.acquire("ipv4:10.0.0.1:2")
    with pytest.raises(RateLimited) as caught:
        slots.acquire("ipv4:10.0.0.1:3")
    assert status_for(caught.value).code.name == "RESOURCE_EXHAUSTED"
    with slots.hold("ipv4:10.0.0.2:1"):
        assert slots.in_use == 3
        with pytest.raises(RateLimited):
            slots.acquire("ipv4:10.0.0.3:1")
    slots.release(a1)
    slots.acquire("ipv4:10.0.0.1:4")
    assert slots.in_use == 2


@pytest.mark.parametrize(
    "overrides",
    [
        {"watch_streams_per_peer": 0},
        {"watch_streams_per_peer": 10, "watch_streams_total": 5},
        {"watch_streams_total": 1000},
        {"refusal_log_rate": 0},
    ],
    ids=["no-watch-per-peer", "per-peer-above-total", "watches-take-every-rpc", "no-log-rate"],
)
def test_serve_config_refuses_bad_limits(tmp_path: Path, overrides: dict[str, object]) -> None:
    with pytest.raises(ConfigurationError):
        serve_config(tmp_path, **overrides)


@pytest.mark.parametrize(
    "limits",
    [
        {"handshake_timeout": 0},
        {"handshake_timeout": 301},
        {"max_connections": 0},
        {"max_streams_per_connection": 2**31},
        {"max_concurrent_rpcs": -1},
        {"max_connection_idle": 0},
    ],
    ids=lambda d: next(iter(d)),
)
def test_connection_limits_refuse_bad_values(limits: dict[str, float]) -> None:
    with pytest.raises(ConfigurationError):
        ConnectionLimits(**limits)  # type: ignore[arg-type]


def test_limit_flags_and_environment(tmp_path: Path) -> None:
    env = {"AUTHSVC_MAX_CONNECTIONS": "7", "AUTHSVC_WATCH_STREAMS_PER_PEER": "3"}
    args = cli.build_parser(env).parse_args(
        ["serve", "--handshake-timeout", "2.5", "--data-dir", str(tmp_path)]
    )
    limits = connection_limits_from(args)
    assert (limits.handshake_timeout, limits.max_connections) == (2.5, 7)
    assert args.watch_streams_per_peer == 3
    assert ("grpc.server_handshake_timeout_ms", 2500) in limits.grpc_options()
    payments = payments_cli.build_parser({"PAYMENTS_MAX_CONCURRENT_RPCS": "12"}).parse_args(["serve"])
    assert connection_limits_from(payments).max_concurrent_rpcs == 12


@pytest.mark.parametrize(
    ("argv", "env"),
    [
        (["--max-connections", "many"], {}),
        (["--handshake-timeout", "-1"], {}),
        ([], {"AUTHSVC_WATCH_STREAMS_TOTAL": "1.5"}),
        ([], {"AUTHSVC_REFUSAL_LOG_RATE": "0"}),
    ],
    ids=["word", "negative", "env-not-int", "env-zero"],
)
def test_bad_limit_flags_are_usage_errors(
    argv: list[str], env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.build_parser(env).parse_args(["serve", *argv])
    assert exited.value.code == 2
    assert "error: argument --" in capsys.readouterr().err
