"""Attacks on the revocation list at the verifier (issue 11), one named test each, on sync and
asyncio EchoServices guarded by the real interceptors, over real channels:

- a revoked token replayed from the verified-token cache after the revocation arrives;
- a disabled client's older tokens, and what the entry must not refuse (its newer tokens,
  another client's);
- a revoked token replayed inside the verifier's leeway after its ``exp``, once a list that
  forgets entries at ``exp`` would have dropped it;
- the verifier's own client secret sent in plaintext to a non-loopback TokenService;
- the TokenService cut off to hide new revocations: fail closed refuses after
  ``max_staleness``, fail open accepts and says it is stale.

The list comes from :class:`GrpcRevocationSource` over a real ``WatchRevocations`` stream
(:class:`tests.verify.test_revocations.FakeTokenService`). Each case asserts the status code and
the ErrorInfo reason, never the message text. Clocks are injected; nothing sleeps.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import grpc
import pytest

from authsvc.core.revocation import Revocation
from authsvc.verify import GrpcRevocationSource, RevocationCache, StaticJwksSource, TokenVerifier
from tests.conftest import ISSUER
from tests.core.fakes import FakeMonotonic, FrozenClock
from tests.security.test_token_verification_attacks import ACCEPTED, AUDIENCE, CLIENT_ID, REFUSED, Echo
from tests.verify.echo import pb2_grpc
from tests.verify.test_interceptor import start_echo
from tests.verify.test_revocations import (
    FORGE,
    JWKS,
    RS_ID,
    RS_SECRET,
    WAIT,
    FakeTokenService,
    client_entry,
    fake_token_service,
    source_for,
    token_entry,
)

UNAVAILABLE = (grpc.StatusCode.UNAVAILABLE, "TEMPORARILY_UNAVAILABLE")
KINDS = ["sync", "aio"]


@dataclass
class Guarded:
    """An EchoService whose verifier reads the list from ``fake`` through ``cache``."""

    echo: Echo
    fake: FakeTokenService
    cache: RevocationCache

    def revoke(self, *entries: Revocation) -> None:
        """The TokenService adds ``entries``; returns once the verifier has them."""
        sequence = self.fake.add(*entries)
        assert self.cache.wait_for(sequence, WAIT), "the change never reached the verifier"


@contextmanager
def guarded(kind: str, **cache_kw: object) -> Iterator[Guarded]:
    with fake_token_service() as (fake, target):
        cache = RevocationCache(source_for(target), **cache_kw)  # type: ignore[arg-type]
        clock = cache_kw.get("clock")
        verifier = TokenVerifier(
            issuer=ISSUER,
            audience=AUDIENCE,
            jwks=StaticJwksSource(JWKS),
            revocations=cache,
            clock=clock,  # type: ignore[arg-type]
        )
        assert cache.wait_for(0, WAIT), "no snapshot"
        port, stop = start_echo(kind, verifier)
        try:
            with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                yield Guarded(Echo(kind, pb2_grpc.EchoServiceStub(channel)), fake, cache)
        finally:
            stop()
            verifier.close()


@pytest.mark.parametrize("kind", KINDS)
def test_revoked_token_with_cached_verification_is_refused_after_the_change_arrives(kind: str) -> None:
    with guarded(kind) as g:
        token, other = FORGE.token(), FORGE.token()
        assert g.echo.bearer(token) == ACCEPTED
        assert g.echo.bearer(token) == ACCEPTED  # its verification is cached now
        assert g.echo.bearer(other) == ACCEPTED
        g.revoke(token_entry(_jti(token)))
        assert g.echo.bearer(token) == REFUSED
        assert g.echo.bearer(token) == REFUSED  # and stays refused
        assert g.echo.bearer(other) == ACCEPTED  # another token of the same client still works


@pytest.mark.parametrize("kind", KINDS)
def test_client_entry_refuses_that_clients_older_tokens_only(kind: str) -> None:
    now = int(time.time())
    with guarded(kind) as g:
        older = FORGE.token(claims=FORGE.claims(iat=now - 5))
        assert g.echo.bearer(older) == ACCEPTED  # cached before the client is disabled
        theirs = FORGE.token(claims=FORGE.claims(iat=now - 5, client_id="another", sub="another"))
        g.revoke(client_entry(CLIENT_ID, now))
        assert g.echo.bearer(older) == REFUSED
        assert g.echo.bearer(FORGE.token(claims=FORGE.claims(iat=now - 1))) == REFUSED
        assert g.echo.bearer(FORGE.token(claims=FORGE.claims(iat=now))) == ACCEPTED  # issued after
        assert g.echo.bearer(theirs) == (grpc.StatusCode.OK, "another")


@pytest.mark.parametrize("kind", KINDS)
def test_revoked_token_is_refused_through_the_leeway_after_its_expiry(kind: str) -> None:
    """The verifier accepts a token until ``exp`` + leeway (30 s): the entry must outlive that."""
    clock = FrozenClock(time.time())
    exp = int(clock.now()) + 60
    with guarded(kind, clock=clock) as g:
        token = FORGE.token(claims=FORGE.claims(exp=exp, iat=exp - 120, nbf=exp - 120))
        assert g.echo.bearer(token) == ACCEPTED
        g.revoke(token_entry(_jti(token), expires_at=exp))
        clock.t = exp + 25  # expired, but inside the leeway
        assert g.echo.bearer(token) == REFUSED
        assert g.cache.revocations.by_jti  # still held


@pytest.mark.parametrize(
    "target",
    [
        "auth.example.com:50051",
        "dns:///auth.example.com:443",
        "10.0.0.5:50051",
        "ipv4:192.168.1.1:50051",
        "[2001:db8::1]:50051",
        "0.0.0.0:50051",
    ],
)
def test_source_never_sends_its_secret_in_plaintext_to_a_non_loopback_target(target: str) -> None:
    with pytest.raises(ValueError, match="without TLS"):
        GrpcRevocationSource(target, client_id=RS_ID, client_secret=RS_SECRET)
    # inside a trusted mesh the operator may say so explicitly; loopback and unix: need not
    GrpcRevocationSource(target, client_id=RS_ID, client_secret=RS_SECRET, allow_plaintext=True).close()
    GrpcRevocationSource("127.0.0.1:50051", client_id=RS_ID, client_secret=RS_SECRET).close()
    GrpcRevocationSource("unix:/run/authsvc.sock", client_id=RS_ID, client_secret=RS_SECRET).close()


def _cut_off(g: Guarded, mono: FakeMonotonic, seconds: float) -> None:
    """The TokenService becomes unreachable (its streams drop and it refuses new ones) and
    ``seconds`` pass."""
    g.fake.secret = "rotated-away"  # reconnects are refused from now on
    g.fake.drop()
    # a refused reconnect comes after the source reported the drop to the cache
    g.fake.wait(lambda: g.fake.refused >= 1)
    assert g.cache.down_since is not None
    mono.advance(seconds)


@pytest.mark.parametrize("kind", KINDS)
def test_fail_closed_refuses_every_token_after_max_staleness(kind: str) -> None:
    mono = FakeMonotonic()
    with guarded(kind, max_staleness=30, fail_closed=True, monotonic=mono) as g:
        token = FORGE.token()
        assert g.echo.bearer(token) == ACCEPTED  # cached
        _cut_off(g, mono, 30)
        assert g.echo.bearer(token) == ACCEPTED  # down, but not longer than max_staleness
        mono.advance(1)
        assert g.cache.stale
        assert g.echo.bearer(token) == UNAVAILABLE  # the cached acceptance too
        assert g.echo.bearer(FORGE.token()) == UNAVAILABLE
        assert g.echo.bearer("not-a-token") == REFUSED  # garbage is still garbage


@pytest.mark.parametrize("kind", KINDS)
def test_fail_open_accepts_after_max_staleness_and_reports_stale(kind: str) -> None:
    mono = FakeMonotonic()
    with guarded(kind, max_staleness=30, monotonic=mono) as g:
        revoked = FORGE.token()
        g.revoke(token_entry(_jti(revoked)))
        _cut_off(g, mono, 31)
        assert g.cache.stale
        assert g.echo.bearer(FORGE.token()) == ACCEPTED
        assert g.echo.bearer(revoked) == REFUSED  # what the list held is still enforced


def _jti(token: str) -> str:
    payload = token.split(".")[1]
    return str(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))["jti"])
