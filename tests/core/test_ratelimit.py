"""The GCRA and the rate-limit syntax (authsvc.core.ratelimit): explicit clock values, no clock."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from authsvc.core.errors import ConfigurationError
from authsvc.core.ratelimit import RateLimit, gcra, parse_rate_limit


def run(limit: RateLimit, times: list[float]) -> list[bool]:
    tat: float | None = None
    allowed = []
    for now in times:
        verdict = gcra(tat, now, limit)
        tat = verdict.tat
        allowed.append(verdict.allowed)
    return allowed


def test_a_full_bucket_admits_exactly_the_burst_at_once() -> None:
    assert run(RateLimit(rate=1, burst=3), [100.0] * 5) == [True, True, True, False, False]


def test_after_the_burst_one_request_per_interval() -> None:
    limit = RateLimit(rate=2, burst=2)  # one every 0.5 s
    assert run(limit, [0.0, 0.0, 0.0, 0.25, 0.5, 0.5, 1.0]) == [True, True, False, False, True, False, True]


def test_a_refusal_says_when_the_next_request_conforms() -> None:
    limit = RateLimit(rate=1, burst=2)
    tat = gcra(gcra(None, 10.0, limit).tat, 10.0, limit).tat
    refused = gcra(tat, 10.0, limit)
    assert not refused.allowed and refused.retry_after == pytest.approx(1.0)
    assert refused.tat == tat  # a refusal takes nothing
    assert not gcra(tat, 10.0 + refused.retry_after * 0.99, limit).allowed
    assert gcra(tat, 10.0 + refused.retry_after, limit).allowed


def test_an_idle_bucket_fills_up_to_the_burst_and_no_more() -> None:
    limit = RateLimit(rate=1, burst=2)
    assert run(limit, [0.0, 0.0, 1000.0, 1000.0, 1000.0]) == [True, True, True, True, False]


def test_peek_changes_nothing() -> None:
    limit = RateLimit(rate=1, burst=1)
    tat = gcra(None, 5.0, limit).tat
    peeked = gcra(tat, 5.5, limit, consume=False)
    assert not peeked.allowed and peeked.tat == tat
    looked = gcra(None, 5.0, limit, consume=False)
    assert looked.allowed and looked.tat == 5.0  # the bucket stays full


@settings(max_examples=200, deadline=None)
@given(
    rate=st.floats(0.1, 100),
    burst=st.integers(1, 50),
    gaps=st.lists(st.floats(0, 5), min_size=1, max_size=200),
)
def test_never_more_than_burst_plus_rate_times_elapsed(rate: float, burst: int, gaps: list[float]) -> None:
    limit = RateLimit(rate=rate, burst=burst)
    times = [sum(gaps[: i + 1]) for i in range(len(gaps))]
    allowed = [t for t, ok in zip(times, run(limit, times), strict=True) if ok]
    for i, start in enumerate(allowed):
        for j in range(i, len(allowed)):
            elapsed = allowed[j] - start
            assert j - i + 1 <= burst + math.floor(elapsed * rate + 1e-6)


@pytest.mark.parametrize(
    ("text", "rate", "burst"),
    [
        ("100/s", 100.0, 100),
        ("100/s,burst=200", 100.0, 200),
        ("600/m", 10.0, 600),
        ("600/m, burst = 50", 10.0, 50),
        ("5/M", 5 / 60, 5),
        ("3600/h,burst=1", 1.0, 1),
        ("0.5/s", 0.5, 1),
        (" 10/m ", 10 / 60, 10),
    ],
    ids=str,
)
def test_parse_rate_limit(text: str, rate: float, burst: int) -> None:
    limit = parse_rate_limit(text)
    assert limit is not None
    assert limit.rate == pytest.approx(rate) and limit.burst == burst


@pytest.mark.parametrize("text", ["off", "OFF", " off "])
def test_off_is_no_limit(text: str) -> None:
    assert parse_rate_limit(text) is None


@pytest.mark.parametrize(
    "text",
    ["", "100", "100/x", "100/sec", "-1/s", "0/s", "1e3/s", "100/s,burst=0", "100/s,burst=", "100/s;burst=2",
     "100/s,burst=2,burst=3", "2000000/s", "nan/s", "100/s,bust=2", "100/s,burst=99999999"],
)  # fmt: skip
def test_malformed_limits_are_one_line_errors(text: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        parse_rate_limit(text)
    assert "\n" not in str(caught.value) and repr(text) in str(caught.value)


def test_a_limit_reads_back_in_flag_syntax() -> None:
    for text in ("100/s,burst=200", "10/m,burst=10", "1/h,burst=3", "0.5/s,burst=1"):
        limit = parse_rate_limit(text)
        assert limit is not None and parse_rate_limit(str(limit)) == limit
    assert str(parse_rate_limit("600/m")) == "10/s,burst=600"


def test_limits_refuse_nonsense() -> None:
    with pytest.raises(ConfigurationError):
        RateLimit(rate=0, burst=1)
    with pytest.raises(ConfigurationError):
        RateLimit(rate=float("inf"), burst=1)
    with pytest.raises(ConfigurationError):
        RateLimit(rate=1, burst=0)
