"""The revocation list at the verifier: :class:`RevocationCache` (snapshot, changes, expiry, the
staleness policy), :class:`TokenVerifier` with it, and :class:`GrpcRevocationSource` against a
real gRPC server that implements ``WatchRevocations`` itself (:class:`FakeTokenService`, here,
since the TokenService's own is written beside this): Basic metadata, snapshot, changes, a
dropped stream and its resume, a forgotten sequence, a wrong secret.

Clocks are injected; waits are bounded conditions, never sleeps followed by assertions.
"""

from __future__ import annotations

import base64
import hmac
import logging
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from contextlib import contextmanager
from typing import Any
from urllib.parse import unquote_plus

import grpc
import pytest

from authsvc.core.errors import InvalidToken, TemporarilyUnavailable
from authsvc.core.keys import jwks_json, public_jwk, rfc7638_thumbprint
from authsvc.core.revocation import Revocation, RevocationSet
from authsvc.v1 import token_pb2, token_pb2_grpc
from authsvc.verify import GrpcRevocationSource, RevocationCache, StaticJwksSource, TokenVerifier
from authsvc.verify.revocations import DROP_INTERVAL, REVOKED_MESSAGE
from tests.conftest import ISSUER
from tests.core.fakes import FakeMonotonic, FrozenClock
from tests.keypool import rsa_key as pooled_rsa_key
from tests.security.test_token_verification_attacks import AUDIENCE, CLIENT_ID, Forge

WAIT = 10.0  # bounds a wait for something the test caused; never reached when all is well
RS_ID = "payments rs:1"  # a resource server's client id with characters §2.3.1 must encode
RS_SECRET = "s3cr:et/+%é"

KEY = pooled_rsa_key()
FORGE = Forge(KEY, rfc7638_thumbprint(KEY.public_key()), pooled_rsa_key())
JWKS = jwks_json([public_jwk(KEY.public_key())])


# -- a TokenService that implements WatchRevocations (and GetJwks) -------------------------------


def _message(entry: Revocation) -> token_pb2.Revocation:
    if entry.jti is not None:
        return token_pb2.Revocation(jti=entry.jti, expires_at=entry.expires_at)
    assert entry.client_id is not None
    return token_pb2.Revocation(
        client_id=entry.client_id, not_before=entry.not_before, expires_at=entry.expires_at
    )


class FakeTokenService(token_pb2_grpc.TokenServiceServicer):
    """WatchRevocations as the contract says: the caller authenticates with ``authorization:
    Basic`` (RFC 6749 §2.3.1, decoded here independently of the client's encoder) as
    ``client_id``/``secret``; ``after_sequence`` 0, unknown or forgotten gets a snapshot, any
    other the changes after it (an empty message when there are none, so the caller knows the
    stream works); then every change as :meth:`add` makes it. :meth:`drop` ends every open
    stream with UNAVAILABLE. GetJwks serves ``jwks``."""

    def __init__(self, client_id: str = RS_ID, secret: str = RS_SECRET, jwks: str = JWKS) -> None:
        self.client_id, self.secret, self.jwks = client_id, secret, jwks
        self.changes: list[tuple[int, Revocation]] = []
        self.sequence = 0
        self.forgotten = 0  # resuming after a sequence below this gets a snapshot
        self.requests: list[int] = []  # after_sequence of each authenticated stream
        self.refused = 0
        self.open_streams = 0
        self._generation = 0
        self._cond = threading.Condition()

    # driving it

    def add(self, *entries: Revocation) -> int:
        with self._cond:
            for entry in entries:
                self.sequence += 1
                self.changes.append((self.sequence, entry))
            self._cond.notify_all()
            return self.sequence

    def forget(self, keep: list[Revocation]) -> None:
        """Replace the list (a compaction, or another store) and end the open streams: their
        resumes get a fresh snapshot."""
        with self._cond:
            self.sequence += 1
            self.changes = [(self.sequence, e) for e in keep]
            self.forgotten = self.sequence
            self._generation += 1
            self._cond.notify_all()

    def drop(self) -> None:
        """End every open stream (UNAVAILABLE), as a restart or a network failure would."""
        with self._cond:
            self._generation += 1
            self._cond.notify_all()

    def wait(self, predicate: Callable[[], bool]) -> None:
        with self._cond:
            assert self._cond.wait_for(predicate, WAIT), "the server never saw what the test waited for"

    # serving it

    def _authenticated(self, context: grpc.ServicerContext) -> bool:
        values = [v for k, v in context.invocation_metadata() if k == "authorization"]
        if len(values) != 1 or not isinstance(values[0], str) or not values[0].startswith("Basic "):
            return False
        try:
            pair = base64.b64decode(values[0][6:], validate=True).decode("utf-8")
        except ValueError:
            return False
        raw_id, sep, raw_secret = pair.partition(":")
        ok_id = hmac.compare_digest(unquote_plus(raw_id).encode(), self.client_id.encode())
        ok_secret = hmac.compare_digest(unquote_plus(raw_secret).encode(), self.secret.encode())
        return bool(sep) and ok_id and ok_secret

    def IssueToken(self, request: Any, context: grpc.ServicerContext) -> token_pb2.IssueTokenResponse:
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "not in this fake")

    def WatchJwks(self, request: Any, context: grpc.ServicerContext) -> Iterator[token_pb2.WatchJwksResponse]:
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "not in this fake")

    def GetJwks(self, request: Any, context: grpc.ServicerContext) -> token_pb2.GetJwksResponse:
        return token_pb2.GetJwksResponse(jwks_json=self.jwks, max_age_seconds=60)

    def WatchRevocations(
        self, request: token_pb2.WatchRevocationsRequest, context: grpc.ServicerContext
    ) -> Iterator[token_pb2.WatchRevocationsResponse]:
        if not self._authenticated(context):
            with self._cond:
                self.refused += 1
                self._cond.notify_all()
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "client authentication failed")
        with self._cond:
            after = int(request.after_sequence)
            self.requests.append(after)
            self.open_streams += 1
            generation = self._generation
            self._cond.notify_all()
            if after == 0 or after < self.forgotten or after > self.sequence:
                first = self._response(True, 0)
            else:
                first = self._response(False, after)
            sent = self.sequence
        try:
            yield first
            while True:
                with self._cond:
                    self._cond.wait_for(
                        lambda sent=sent: (  # type: ignore[misc]
                            self.sequence > sent or self._generation != generation or not context.is_active()
                        ),
                        0.05,  # re-checks is_active(): a cancelled stream frees its worker
                    )
                    if self._generation != generation:
                        context.abort(grpc.StatusCode.UNAVAILABLE, "stream dropped")
                    if not context.is_active():
                        return
                    update = self._response(False, sent) if self.sequence > sent else None
                    sent = self.sequence
                if update is not None:
                    yield update
        finally:
            with self._cond:
                self.open_streams -= 1
                self._cond.notify_all()

    def _response(self, snapshot: bool, after: int) -> token_pb2.WatchRevocationsResponse:
        """The caller holds the lock."""
        if snapshot:
            entries = RevocationSet.of([e for _, e in self.changes], sequence=self.sequence).entries()
        else:
            entries = [e for s, e in self.changes if s > after]
        return token_pb2.WatchRevocationsResponse(
            snapshot=snapshot, sequence=self.sequence, revocations=[_message(e) for e in entries]
        )


@contextmanager
def fake_token_service(fake: FakeTokenService | None = None) -> Iterator[tuple[FakeTokenService, str]]:
    """The fake on a sync grpc server on a free loopback port; yields it and its target."""
    fake = fake or FakeTokenService()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    token_pb2_grpc.add_TokenServiceServicer_to_server(fake, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield fake, f"127.0.0.1:{port}"
    finally:
        fake.drop()
        server.stop(0).wait()


def source_for(target: str, **kw: Any) -> GrpcRevocationSource:
    kw.setdefault("client_id", RS_ID)
    kw.setdefault("client_secret", RS_SECRET)
    kw.setdefault("min_backoff", 0.01)
    kw.setdefault("max_backoff", 0.05)
    return GrpcRevocationSource(target, **kw)


def token_entry(jti: str, expires_at: float | None = None) -> Revocation:
    return Revocation(expires_at=int(expires_at or time.time() + 600), jti=jti)


def client_entry(client_id: str, not_before: float) -> Revocation:
    return Revocation(expires_at=int(not_before) + 86_400, client_id=client_id, not_before=int(not_before))


def verifier_with(revocations: RevocationCache) -> TokenVerifier:
    return TokenVerifier(
        issuer=ISSUER, audience=AUDIENCE, jwks=StaticJwksSource(JWKS), revocations=revocations
    )


# -- the cache -------------------------------------------------------------------------------------


def test_a_snapshot_replaces_the_list_and_changes_merge_into_it() -> None:
    cache = RevocationCache()
    cache.apply(snapshot=True, sequence=3, entries=[token_entry("a"), token_entry("b")])
    cache.apply(snapshot=False, sequence=4, entries=[token_entry("c")])
    assert set(cache.revocations.by_jti) == {"a", "b", "c"}
    assert cache.sequence == 4
    cache.apply(snapshot=True, sequence=9, entries=[token_entry("z")])
    assert set(cache.revocations.by_jti) == {"z"}
    assert cache.sequence == 9
    assert cache.wait_for(9, timeout=0)


def test_each_change_is_a_new_immutable_set() -> None:
    cache = RevocationCache()
    cache.apply(snapshot=True, sequence=1, entries=[token_entry("a")])
    before = cache.revocations
    cache.apply(snapshot=False, sequence=2, entries=[token_entry("b")])
    assert set(before.by_jti) == {"a"}  # a reader holding the old view sees it unchanged
    assert cache.revocations is not before


def test_entries_expiring_one_by_one_rebuild_the_list_at_most_once_per_drop_interval() -> None:
    """Each drop rebuilds the whole list under the lock a verification takes then: 1,000 entries
    expiring a second apart must not cost a rebuild each (that was O(n) per entry), and no
    entry may go before no token it refuses can pass (its expiry plus keep_after_expiry)."""
    clock = FrozenClock(1_000_000.0)
    cache = RevocationCache(clock=clock, keep_after_expiry=30)
    entries = [token_entry(f"jti-{i}", 1_000_000 + i) for i in range(1, 1001)]
    cache.apply(snapshot=True, sequence=1, entries=entries)
    views, seconds = [cache.revocations], 300  # held, so that no view's id is reused
    for _ in range(seconds):
        clock.advance(1)
        now = clock.now()
        cache.check(jti="unrelated", client_id="x", issued_at=now)  # what drops, as verification does
        if cache.revocations is not views[-1]:
            views.append(cache.revocations)
        held = cache.revocations.by_jti
        assert all(f"jti-{i}" in held for i in range(1, 1001) if 1_000_000 + i + 30 > now)
    assert len(views) <= seconds / DROP_INTERVAL + 2, f"{len(views)} rebuilds in {seconds} s"
    assert "jti-1" not in cache.revocations.by_jti  # and they do go


def test_entries_are_dropped_once_no_token_they_refuse_can_pass() -> None:
    clock = FrozenClock(1_000_000.0)
    cache = RevocationCache(clock=clock, keep_after_expiry=30)
    cache.apply(
        snapshot=True,
        sequence=1,
        entries=[
            token_entry("short", 1_000_100),
            Revocation(expires_at=1_000_500, client_id="c", not_before=999_000),
        ],
    )
    clock.advance(100 + 29)  # past "short"'s exp, but inside the leeway a verifier may still allow
    with pytest.raises(InvalidToken):
        cache.check(jti="short", client_id="x", issued_at=999_900)
    clock.advance(1)
    cache.check(jti="short", client_id="x", issued_at=999_900)
    assert set(cache.revocations.by_jti) == set() and set(cache.revocations.by_client) == {"c"}
    clock.advance(400)
    assert len(cache.revocations) == 0
    # an entry that arrives already expired is not kept either
    cache.apply(snapshot=False, sequence=2, entries=[token_entry("old", clock.now() - 31)])
    assert len(cache.revocations) == 0


def test_fail_open_keeps_verifying_reports_stale_and_logs_once(caplog: pytest.LogCaptureFixture) -> None:
    mono = FakeMonotonic()
    cache = RevocationCache(max_staleness=10, monotonic=mono)
    assert not cache.has_list
    cache.check(jti="j", client_id="c", issued_at=0)  # no list yet: fail open verifies
    cache.apply(snapshot=True, sequence=1, entries=[])
    cache.stream_down()
    mono.advance(10)
    assert not cache.stale
    mono.advance(0.5)
    assert cache.stale
    with caplog.at_level(logging.INFO, logger="authsvc.verify.revocations"):
        for _ in range(3):
            cache.check(jti="j", client_id="c", issued_at=0)
        cache.apply(snapshot=False, sequence=2, entries=[])
        assert not cache.stale
    messages = [r.getMessage() for r in caplog.records]
    assert sum("stale" in m for m in messages) == 1, messages
    assert any("current again" in m for m in messages), messages


def test_fail_closed_refuses_without_a_list_and_once_stale() -> None:
    mono = FakeMonotonic()
    cache = RevocationCache(max_staleness=10, fail_closed=True, monotonic=mono)
    with pytest.raises(TemporarilyUnavailable):  # nothing to check tokens against yet
        cache.check(jti="j", client_id="c", issued_at=0)
    cache.apply(snapshot=False, sequence=1, entries=[])  # changes alone are not the whole list
    with pytest.raises(TemporarilyUnavailable):
        cache.check(jti="j", client_id="c", issued_at=0)
    cache.apply(snapshot=True, sequence=1, entries=[])
    cache.check(jti="j", client_id="c", issued_at=0)
    cache.stream_down()
    mono.advance(10)
    cache.check(jti="j", client_id="c", issued_at=0)  # down, but within max_staleness
    mono.advance(1)
    with pytest.raises(TemporarilyUnavailable):
        cache.check(jti="j", client_id="c", issued_at=0)
    cache.apply(snapshot=False, sequence=2, entries=[])  # the stream works again
    cache.check(jti="j", client_id="c", issued_at=0)


@pytest.mark.parametrize(
    "kw",
    [{"max_staleness": 0}, {"max_staleness": float("nan")}, {"keep_after_expiry": -1}],
    ids=["zero-staleness", "nan-staleness", "negative-keep"],
)
def test_cache_settings_out_of_range_are_refused(kw: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        RevocationCache(**kw)  # type: ignore[arg-type]


# -- the verifier ----------------------------------------------------------------------------------


def test_a_revoked_token_is_refused_even_when_its_verification_is_cached() -> None:
    cache = RevocationCache()
    cache.apply(snapshot=True, sequence=1, entries=[])
    verifier = verifier_with(cache)
    token, other = FORGE.token(), FORGE.token()
    jti = verifier.verify(token).jti
    assert verifier.verify(token).jti == jti  # cached now
    verifier.verify(other)
    cache.apply(snapshot=False, sequence=2, entries=[token_entry(jti)])
    with pytest.raises(InvalidToken, match=REVOKED_MESSAGE):
        verifier.verify(token)
    assert verifier.verify(other).client_id == CLIENT_ID


def test_a_client_entry_refuses_only_that_clients_older_tokens() -> None:
    now = int(time.time())
    cache = RevocationCache()
    cache.apply(snapshot=True, sequence=1, entries=[client_entry(CLIENT_ID, now)])
    verifier = verifier_with(cache)
    with pytest.raises(InvalidToken, match=REVOKED_MESSAGE):
        verifier.verify(FORGE.token(claims=FORGE.claims(iat=now - 1)))
    assert verifier.verify(FORGE.token(claims=FORGE.claims(iat=now))).client_id == CLIENT_ID
    other = FORGE.claims(iat=now - 1, client_id="another", sub="another")
    assert verifier.verify(FORGE.token(claims=other)).client_id == "another"


def test_the_list_is_consulted_only_after_the_signature_checked() -> None:
    """A forged token naming a revoked jti is refused for its signature: it learns nothing of
    the list."""
    cache = RevocationCache()
    cache.apply(snapshot=True, sequence=1, entries=[token_entry("stolen")])
    forged = FORGE.token(claims=FORGE.claims(jti="stolen"), key=FORGE.attacker)
    with pytest.raises(InvalidToken) as refused:
        verifier_with(cache).verify(forged)
    assert str(refused.value) != REVOKED_MESSAGE
    assert "signature" in str(refused.value)


def test_the_verifier_closes_its_revocation_source() -> None:
    closed = []

    class Source:
        def subscribe(self, sink: object) -> None:
            pass

        def close(self) -> None:
            closed.append(True)

    verifier_with(RevocationCache(Source())).close()
    assert closed == [True]


# -- GrpcRevocationSource against a real server ------------------------------------------------------


def test_source_takes_the_snapshot_then_each_change_as_it_is_made() -> None:
    with fake_token_service() as (fake, target):
        fake.add(token_entry("before"))
        cache = RevocationCache(source_for(target))
        try:
            assert cache.wait_for(1, WAIT)
            assert set(cache.revocations.by_jti) == {"before"}
            seq = fake.add(token_entry("after"), client_entry("gone", time.time()))
            assert cache.wait_for(seq, WAIT)
            assert set(cache.revocations.by_jti) == {"before", "after"}
            assert set(cache.revocations.by_client) == {"gone"}
            assert fake.requests == [0]
        finally:
            cache.close()


def test_source_resumes_after_a_dropped_stream_from_the_last_sequence() -> None:
    with fake_token_service() as (fake, target):
        fake.add(token_entry("one"))
        source = source_for(target)
        cache = RevocationCache(source)
        try:
            assert cache.wait_for(1, WAIT)
            fake.drop()
            seq = fake.add(token_entry("while-down"))  # made while the verifier reconnects
            fake.wait(lambda: len(fake.requests) == 2)
            assert fake.requests == [0, 1]  # resumed after the last sequence seen, no snapshot
            assert cache.wait_for(seq, WAIT)
            assert set(cache.revocations.by_jti) == {"one", "while-down"}
            fake.forget([token_entry("kept")])  # the server no longer knows sequence 2
            fake.wait(lambda: len(fake.requests) == 3)
            assert cache.wait_for(fake.sequence, WAIT)
            assert set(cache.revocations.by_jti) == {"kept"}  # a fresh snapshot replaced the list
            assert source.attempts == 3
        finally:
            cache.close()


def test_a_wrong_secret_is_logged_and_retried_with_growing_backoff(caplog: pytest.LogCaptureFixture) -> None:
    bounds: list[float] = []

    def jitter(low: float, high: float) -> float:
        bounds.append(high)
        return high

    with fake_token_service() as (fake, target):
        source = source_for(
            target, client_secret="wrong-secret-7f3a", min_backoff=0.001, max_backoff=0.016, jitter=jitter
        )
        with caplog.at_level(logging.DEBUG, logger="authsvc.verify.revocations"):
            cache = RevocationCache(source)
            try:
                fake.wait(lambda: fake.refused >= 7)
            finally:
                cache.close()
        assert source.last_error == grpc.StatusCode.UNAUTHENTICATED
        assert bounds[:6] == [0.001, 0.002, 0.004, 0.008, 0.016, 0.016]  # doubling, capped
        assert not cache.has_list and fake.requests == []
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1, [r.getMessage() for r in warnings]  # once, not once per retry
        assert "wrong-secret-7f3a" not in caplog.text  # nor the secret, ever


def test_the_source_repr_never_shows_the_secret() -> None:
    assert RS_SECRET not in repr(source_for("127.0.0.1:9"))


def test_close_ends_the_stream_and_stops_reconnecting() -> None:
    with fake_token_service() as (fake, target):
        source = source_for(target)
        cache = RevocationCache(source)
        assert cache.wait_for(0, WAIT)
        cache.close()
        fake.wait(lambda: fake.open_streams == 0)
        attempts = source.attempts
        assert source._thread is not None
        source._thread.join(WAIT)
        assert not source._thread.is_alive()
        assert source.attempts == attempts == 1


@pytest.mark.parametrize(
    "kw",
    [{"client_id": ""}, {"client_secret": ""}, {"min_backoff": 0}, {"min_backoff": 2, "max_backoff": 1}],
    ids=["no-id", "no-secret", "zero-backoff", "inverted-backoff"],
)
def test_source_settings_out_of_range_are_refused(kw: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        source_for("127.0.0.1:9", **kw)
