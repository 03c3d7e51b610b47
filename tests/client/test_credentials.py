"""ClientCredentials: states, single-flight refresh, retries, redaction and read_secret.

Everything runs on a fake clock with a recorded ``sleep`` and ``jitter=lambda: 1.0``; fetches are
held in flight with Events, never timed with sleeps.
"""

from __future__ import annotations

import base64
import threading
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from hypothesis import given
from hypothesis import strategies as st

from authsvc.client.credentials import (
    AccessToken,
    ClientCredentials,
    GrpcTokenFetcher,
    RetryPolicy,
    TokenFetchError,
    TokenState,
    read_secret,
)
from tests.client.fakes import WAIT, FakeClock, FakeFetcher, failure

START = 1000.0
UNAVAILABLE = grpc.StatusCode.UNAVAILABLE


def make(
    fetcher: FakeFetcher,
    clock: FakeClock,
    sleeps: list[float] | None = None,
    *,
    retry: RetryPolicy | None = None,
    refresh_window: float = 60.0,
    expiry_skew: float = 10.0,
) -> ClientCredentials:
    recorder: Callable[[float], object] = sleeps.append if sleeps is not None else _no_sleep
    return ClientCredentials(
        fetcher,
        refresh_window=refresh_window,
        expiry_skew=expiry_skew,
        retry=retry,
        clock=clock,
        sleep=recorder,
        jitter=lambda: 1.0,
    )


def _no_sleep(delay: float) -> None:
    raise AssertionError(f"unexpected sleep({delay})")


def held(fetcher: FakeFetcher) -> threading.Event:
    """Hold the next fetches in flight until the returned Event is set."""
    release = threading.Event()
    fetcher.hold = release
    return release


# -- states -----------------------------------------------------------------------------------

STATE_CASES = [
    # expires_in=300, window 60, skew 10: stale at 60 s left, invalid at 10 s left
    (300.0, 0.0, TokenState.FRESH),
    (300.0, 239.0, TokenState.FRESH),
    (300.0, 240.0, TokenState.STALE),
    (300.0, 241.0, TokenState.STALE),
    (300.0, 289.0, TokenState.STALE),
    (300.0, 290.0, TokenState.INVALID),
    (300.0, 291.0, TokenState.INVALID),
    (300.0, 400.0, TokenState.INVALID),
    # expires_in=100: the window is clamped to lifetime/2 (50 s); the skew (10) equals lifetime/10
    (100.0, 49.0, TokenState.FRESH),
    (100.0, 50.0, TokenState.STALE),
    (100.0, 89.0, TokenState.STALE),
    (100.0, 90.0, TokenState.INVALID),
    # expires_in=30: refresh at 15 s left (lifetime/2), invalid at 3 s left (lifetime/10)
    (30.0, 14.0, TokenState.FRESH),
    (30.0, 15.0, TokenState.STALE),
    (30.0, 26.0, TokenState.STALE),
    (30.0, 27.0, TokenState.INVALID),
]


def test_no_token_is_invalid() -> None:
    fetcher = FakeFetcher()
    creds = make(fetcher, FakeClock(START))
    assert creds.state is TokenState.INVALID
    assert fetcher.calls == 0


@pytest.mark.parametrize(
    ("expires_in", "offset", "expected"),
    STATE_CASES,
    ids=[f"{int(e)}s@+{int(o)}-{s.value}" for e, o, s in STATE_CASES],
)
def test_state_boundaries(expires_in: float, offset: float, expected: TokenState) -> None:
    clock = FakeClock(START)
    creds = make(FakeFetcher(expires_in=expires_in), clock)
    creds.token()
    clock.advance(offset)
    assert creds.state is expected


def test_negative_window_or_skew_is_refused() -> None:
    with pytest.raises(ValueError):
        make(FakeFetcher(), FakeClock(), refresh_window=-1)
    with pytest.raises(ValueError):
        make(FakeFetcher(), FakeClock(), expiry_skew=-1)


def test_lifetime_counts_from_when_the_request_started() -> None:
    clock = FakeClock(START)
    fetcher = FakeFetcher()
    fetcher.during = lambda: clock.advance(7.0)  # a slow answer
    creds = make(fetcher, clock)
    token = creds.access_token()
    assert token.expires_at == START + 300.0
    assert token.lifetime == 300.0
    assert clock.t == START + 7.0


def test_lifetime_counts_from_the_attempt_that_succeeded() -> None:
    clock = FakeClock(START)
    sleeps: list[float] = []
    fetcher = FakeFetcher(failure(UNAVAILABLE))
    fetcher.during = lambda: clock.advance(1.0)

    def sleep(delay: float) -> None:
        sleeps.append(delay)
        clock.advance(delay)

    creds = ClientCredentials(fetcher, clock=clock, sleep=sleep, jitter=lambda: 1.0)
    token = creds.access_token()
    # attempt 1: 1000 → 1001, sleep 0.2, attempt 2 starts at 1001.2
    assert token.expires_at == pytest.approx(START + 1.0 + 0.2 + 300.0)


@pytest.mark.parametrize(
    ("token", "expires_in"), [("", 300.0), ("tok", 0.0), ("tok", -5.0)], ids=["empty", "zero", "negative"]
)
def test_an_answer_without_a_usable_token_is_an_error_and_not_retried(token: str, expires_in: float) -> None:
    fetcher = FakeFetcher((token, expires_in, "s"))
    sleeps: list[float] = []
    creds = make(fetcher, FakeClock(START), sleeps)
    with pytest.raises(TokenFetchError) as info:
        creds.token()
    assert info.value.code is grpc.StatusCode.INTERNAL
    assert fetcher.calls == 1
    assert sleeps == []
    assert creds.state is TokenState.INVALID


# -- serving and refreshing --------------------------------------------------------------------


def test_a_fresh_token_is_served_without_fetching() -> None:
    clock = FakeClock(START)
    fetcher = FakeFetcher()
    creds = make(fetcher, clock)
    assert creds.token() == "tok-1"
    for offset in (0.0, 100.0, 139.0):
        clock.advance(offset)
        assert creds.token() == "tok-1"
    assert fetcher.calls == 1


def test_a_fresh_token_is_served_while_a_refresh_is_in_flight() -> None:
    fetcher = FakeFetcher()
    creds = make(fetcher, FakeClock(START))
    creds.token()
    release = held(fetcher)
    future = creds.refresh_async()
    assert fetcher.wait_calls(2)
    assert creds.token() == "tok-1"  # does not wait for the held refresh
    release.set()
    assert future.result(WAIT).token == "tok-2"
    assert creds.token() == "tok-2"


def test_a_stale_token_is_served_while_exactly_one_background_refresh_runs() -> None:
    clock = FakeClock(START)
    fetcher = FakeFetcher()
    creds = make(fetcher, clock)
    assert creds.token() == "tok-1"
    clock.advance(241.0)
    release = held(fetcher)

    served = [creds.token() for _ in range(20)]

    assert served == ["tok-1"] * 20
    assert fetcher.wait_calls(2)
    future = creds.refresh_async()  # joins the refresh in flight
    assert fetcher.calls == 2  # the first fetch and one refresh
    assert fetcher.threads[1] is not threading.current_thread()
    release.set()
    assert future.result(WAIT).token == "tok-2"
    assert creds.token() == "tok-2"
    assert creds.state is TokenState.FRESH
    assert fetcher.calls == 2


def test_fifty_threads_without_a_token_share_one_fetch() -> None:
    n = 50
    clock = FakeClock(START)
    fetcher = FakeFetcher()
    release = held(fetcher)
    creds = make(fetcher, clock)
    barrier = threading.Barrier(n)
    results: list[str] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def caller() -> None:
        try:
            barrier.wait(WAIT)
            token = creds.token()
        except BaseException as exc:
            with lock:
                errors.append(exc)
        else:
            with lock:
                results.append(token)

    threads = [threading.Thread(target=caller) for _ in range(n)]
    for thread in threads:
        thread.start()
    try:
        # n readers found no token, plus the one fetch that read the time when it started: every
        # caller is now joined to the held fetch.
        assert clock.wait_calls(n + 1)
        assert fetcher.wait_calls(1)
    finally:
        release.set()
        for thread in threads:
            thread.join(WAIT)
    assert errors == []
    assert results == ["tok-1"] * n
    assert fetcher.calls == 1


# -- retries -----------------------------------------------------------------------------------

RETRYABLE = [
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
]


@pytest.mark.parametrize("code", RETRYABLE, ids=[c.name for c in RETRYABLE])
def test_transient_failures_are_retried_with_backoff(code: grpc.StatusCode) -> None:
    fetcher = FakeFetcher(failure(code), failure(code))
    sleeps: list[float] = []
    creds = make(fetcher, FakeClock(START), sleeps)
    assert creds.token() == "tok-3"
    assert fetcher.calls == 3
    assert sleeps == pytest.approx([0.2, 0.4])


def test_exhausted_retries_raise_the_last_error() -> None:
    errors = [failure(UNAVAILABLE, message=f"attempt {i}") for i in range(1, 5)]
    fetcher = FakeFetcher(*errors)
    sleeps: list[float] = []
    creds = make(fetcher, FakeClock(START), sleeps)
    with pytest.raises(TokenFetchError) as info:
        creds.token()
    assert info.value is errors[-1]
    assert fetcher.calls == 4
    assert sleeps == pytest.approx([0.2, 0.4, 0.8])


def test_max_attempts_bounds_the_fetches() -> None:
    fetcher = FakeFetcher(*(failure(UNAVAILABLE) for _ in range(5)))
    sleeps: list[float] = []
    creds = make(fetcher, FakeClock(START), sleeps, retry=RetryPolicy(max_attempts=2))
    with pytest.raises(TokenFetchError):
        creds.token()
    assert fetcher.calls == 2
    assert sleeps == pytest.approx([0.2])


PERMANENT = [
    (grpc.StatusCode.UNAUTHENTICATED, "INVALID_CLIENT"),
    (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_SCOPE"),
    (grpc.StatusCode.PERMISSION_DENIED, "UNAUTHORIZED_CLIENT"),
]


@pytest.mark.parametrize(("code", "reason"), PERMANENT, ids=[r for _, r in PERMANENT])
def test_permanent_failures_are_not_retried(code: grpc.StatusCode, reason: str) -> None:
    error = failure(code, reason, "no")
    fetcher = FakeFetcher(error)
    sleeps: list[float] = []
    creds = make(fetcher, FakeClock(START), sleeps)
    with pytest.raises(TokenFetchError) as info:
        creds.token()
    assert info.value is error
    assert (info.value.code, info.value.reason) == (code, reason)
    assert fetcher.calls == 1
    assert sleeps == []


def test_errors_are_not_cached() -> None:
    fetcher = FakeFetcher(failure(grpc.StatusCode.UNAUTHENTICATED, "INVALID_CLIENT"))
    creds = make(fetcher, FakeClock(START), [])
    with pytest.raises(TokenFetchError):
        creds.token()
    assert creds.token() == "tok-2"
    assert fetcher.calls == 2


def test_a_failed_background_refresh_keeps_serving_the_stale_token_until_it_is_invalid() -> None:
    clock = FakeClock(START)
    fetcher = FakeFetcher(("tok-1", 300.0, "s"), *(failure(UNAVAILABLE, message=str(i)) for i in range(3)))
    creds = make(fetcher, clock, [], retry=RetryPolicy(max_attempts=1))
    creds.token()
    clock.advance(241.0)

    for attempt in (2, 3):  # each stale call may start a new background refresh; each one fails
        release = held(fetcher)
        assert creds.token() == "tok-1"
        future = creds.refresh_async()
        release.set()
        assert isinstance(future.exception(WAIT), TokenFetchError)
        assert fetcher.calls == attempt
        assert creds.state is TokenState.STALE
        clock.advance(20.0)

    fetcher.hold = None
    clock.t = START + 291.0
    with pytest.raises(TokenFetchError):
        creds.token()
    assert fetcher.calls == 4  # its own attempt, in the caller's thread
    assert fetcher.threads[-1] is threading.current_thread()


def test_invalidate_forces_a_fetch() -> None:
    fetcher = FakeFetcher()
    creds = make(fetcher, FakeClock(START))
    assert creds.token() == "tok-1"
    creds.invalidate()
    assert creds.state is TokenState.INVALID
    assert creds.token() == "tok-2"
    assert fetcher.calls == 2


def test_cached_never_fetches_synchronously() -> None:
    clock = FakeClock(START)
    fetcher = FakeFetcher()
    creds = make(fetcher, clock)
    assert creds.cached() is None
    assert fetcher.calls == 0  # nothing started either

    first = creds.access_token()
    assert creds.cached() is first

    clock.advance(241.0)
    release = held(fetcher)
    assert creds.cached() is first  # stale: served while a background refresh starts
    assert fetcher.wait_calls(2)
    assert fetcher.threads[1] is not threading.current_thread()
    future = creds.refresh_async()
    release.set()
    assert future.result(WAIT).token == "tok-2"

    clock.advance(400.0)
    assert creds.cached() is None
    assert fetcher.calls == 2


# -- redaction ---------------------------------------------------------------------------------

SECRET = "s3cr3t-Value-9f2c"


def test_reprs_never_show_the_secret_or_the_token() -> None:
    channel = grpc.insecure_channel("127.0.0.1:1")
    try:
        fetcher = GrpcTokenFetcher(channel, client_id="shop", client_secret=SECRET)
        creds = ClientCredentials.for_channel(channel, client_id="shop", client_secret=SECRET)
        basic = base64.b64encode(f"shop:{SECRET}".encode()).decode()
        for text in (repr(fetcher), str(fetcher), repr(creds), str(creds)):
            assert SECRET not in text
            assert basic not in text
            assert "shop" in text
    finally:
        channel.close()


def test_credentials_repr_hides_the_token() -> None:
    token = "eyJhbGciOiJFUzI1NiJ9.payload.signature"
    creds = make(FakeFetcher((token, 300.0, "s")), FakeClock(START))
    access = creds.access_token()
    for text in (repr(creds), str(creds), repr(access), str(access)):
        assert token not in text
    assert access == AccessToken(token=token, expires_at=START + 300.0, scope="s", lifetime=300.0)


# -- read_secret -------------------------------------------------------------------------------


def test_read_secret_argument_wins(tmp_path: Path) -> None:
    file = tmp_path / "secret"
    file.write_text("from-file\n")
    env = {"AUTHSVC_CLIENT_SECRET_FILE": str(file), "AUTHSVC_CLIENT_SECRET": "from-env"}
    assert read_secret("from-arg", secret_file=file, env=env) == "from-arg"


def test_read_secret_file_argument_then_file_variable(tmp_path: Path) -> None:
    given_file, env_file = tmp_path / "given", tmp_path / "env"
    given_file.write_text("  from-given-file \n")
    env_file.write_text("from-env-file\n")
    env = {"AUTHSVC_CLIENT_SECRET_FILE": str(env_file), "AUTHSVC_CLIENT_SECRET": "from-env"}
    assert read_secret(secret_file=given_file, env=env) == "from-given-file"
    assert read_secret(secret_file=str(given_file), env=env) == "from-given-file"
    assert read_secret(env=env) == "from-env-file"


def test_read_secret_environment_variable_last() -> None:
    assert read_secret(env={"AUTHSVC_CLIENT_SECRET": "from-env"}) == "from-env"


@pytest.mark.parametrize(
    "env",
    [{}, {"AUTHSVC_CLIENT_SECRET": ""}, {"AUTHSVC_CLIENT_SECRET_FILE": "", "AUTHSVC_CLIENT_SECRET": ""}],
    ids=["nothing", "empty-variable", "empty-both"],
)
def test_read_secret_without_a_source_is_an_error(env: dict[str, str]) -> None:
    with pytest.raises(ValueError):
        read_secret("", env=env)


def test_read_secret_refuses_an_empty_secret_file(tmp_path: Path) -> None:
    file = tmp_path / "secret"
    file.write_text(" \n")
    with pytest.raises(ValueError):
        read_secret(secret_file=file, env={})


# -- RetryPolicy -------------------------------------------------------------------------------


def test_delays_double_from_the_initial_backoff_up_to_the_cap() -> None:
    policy = RetryPolicy(max_attempts=7, initial_backoff=0.2, max_backoff=3.0, multiplier=2.0)
    assert policy.delays(lambda: 1.0) == pytest.approx([0.2, 0.4, 0.8, 1.6, 3.0, 3.0])
    assert RetryPolicy(max_attempts=1).delays(lambda: 1.0) == []


@given(
    attempts=st.integers(min_value=1, max_value=12),
    initial=st.floats(min_value=0.001, max_value=10.0),
    cap=st.floats(min_value=0.001, max_value=30.0),
    multiplier=st.floats(min_value=1.0, max_value=5.0),
    draws=st.lists(st.floats(min_value=0.0, max_value=1.0), min_size=12, max_size=12),
)
def test_delays_are_full_jitter_bounded_by_max_backoff(
    attempts: int, initial: float, cap: float, multiplier: float, draws: list[float]
) -> None:
    policy = RetryPolicy(
        max_attempts=attempts, initial_backoff=initial, max_backoff=cap, multiplier=multiplier
    )
    recorded: list[float] = []

    def jitter() -> float:
        value = draws[len(recorded)]
        recorded.append(value)
        return value

    delays = policy.delays(jitter)
    assert len(delays) == attempts - 1
    assert len(recorded) == attempts - 1
    for n, (delay, draw) in enumerate(zip(delays, recorded, strict=True)):
        ceiling = min(cap, initial * multiplier**n)
        assert 0.0 <= delay <= cap
        assert delay == pytest.approx(draw * ceiling)


@pytest.mark.parametrize(
    "policy",
    [{"max_attempts": 0}, {"initial_backoff": -1.0}, {"max_backoff": -1.0}, {"multiplier": 0.5}],
    ids=["no-attempts", "negative-initial", "negative-max", "shrinking"],
)
def test_retry_policy_refuses_nonsense(policy: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="retry policy"):
        RetryPolicy(**policy)  # type: ignore[arg-type]


def test_a_caller_that_saw_no_token_joins_a_finished_refresh_instead_of_fetching_again() -> None:
    fetcher = FakeFetcher()
    creds = make(fetcher, FakeClock(START))
    creds.token()
    # a caller that looked before the first refresh finished arrives at the lock afterwards
    assert creds._start_refresh(in_background=False).result(WAIT).token == "tok-1"
    assert fetcher.calls == 1
