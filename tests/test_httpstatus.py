"""The one map from errors to HTTP answers: RFC 6749 §5.2 and RFC 6750 §3, table-driven."""

from __future__ import annotations

import pytest

from authsvc.core.errors import (
    InsufficientScope,
    InvalidClient,
    InvalidRequest,
    InvalidScope,
    InvalidTarget,
    InvalidToken,
    RateLimited,
    TemporarilyUnavailable,
    UnsupportedGrantType,
)
from authsvc.httpstatus import bearer_error, challenge, service_error, token_error


@pytest.mark.parametrize(
    ("exc", "status"),
    [
        (InvalidRequest("x"), 400),
        (InvalidScope("x"), 400),
        (InvalidTarget("x"), 400),
        (UnsupportedGrantType("x"), 400),
        (InvalidClient("x"), 401),
        (TemporarilyUnavailable("x"), 503),
        (ValueError("secret internals"), 500),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, Exception) else str(v),
)
def test_token_error_status_and_body(exc: Exception, status: int) -> None:
    answer = token_error(exc, basic=False)
    assert answer.status == status
    assert set(answer.body) == {"error", "error_description"}
    assert "secret internals" not in str(answer.body)
    assert ("Cache-Control", "no-store") in answer.headers


def test_invalid_client_with_basic_challenges_basic() -> None:
    answer = token_error(InvalidClient("client authentication failed"), basic=True)
    assert answer.status == 401
    assert dict(answer.headers)["WWW-Authenticate"] == 'Basic realm="authsvc"'
    assert "WWW-Authenticate" not in dict(token_error(InvalidClient("x"), basic=False).headers)


def test_missing_token_gets_a_bare_bearer_challenge() -> None:
    answer = bearer_error(InvalidToken("no access token"), token_sent=False)
    assert answer.status == 401
    assert dict(answer.headers)["WWW-Authenticate"] == "Bearer"


def test_invalid_token_challenge() -> None:
    answer = bearer_error(InvalidToken("the token has expired"))
    assert answer.status == 401
    assert dict(answer.headers)["WWW-Authenticate"] == (
        'Bearer error="invalid_token", error_description="the token has expired"'
    )


def test_insufficient_scope_names_the_scope() -> None:
    answer = bearer_error(InsufficientScope("lacks payments:write"), required_scopes=["payments:write"])
    assert answer.status == 403
    value = dict(answer.headers)["WWW-Authenticate"]
    assert 'error="insufficient_scope"' in value and 'scope="payments:write"' in value


def test_challenge_drops_what_could_break_out_of_the_header() -> None:
    value = challenge("Bearer", [("error_description", 'bad"\r\nSet-Cookie: x=1\\')])
    assert value == 'Bearer error_description="badSet-Cookie: x=1"'


def test_rate_limited_says_when_to_retry() -> None:
    exc = RateLimited("slow down", retry_after=2.2)
    answer = service_error(exc)
    assert answer.status == 429
    assert dict(answer.headers)["Retry-After"] == "3"
    assert answer.body["reason"] == "RATE_LIMITED"


def test_a_retry_delay_is_rounded_up_and_only_when_finite() -> None:
    assert dict(service_error(RateLimited("x", retry_after=0.01)).headers)["Retry-After"] == "1"
    assert "Retry-After" not in dict(service_error(RateLimited("x", retry_after=float("inf"))).headers)
    assert "Retry-After" not in dict(service_error(RateLimited("x")).headers)
