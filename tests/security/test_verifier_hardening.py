"""Attacks on token verification found by the outside review (issue 9), one named test each.

- a revoked key's acceptances surviving in the verified-token cache (a push racing verifications);
- one forged unknown-``kid`` token freezing a sync server's dispatch thread during a slow fetch;
- forged-``kid`` bursts taking the asyncio server's default executor, which handlers need;
- method paths that resolve to another method's policy, and generic handlers under public services;
- JWK Sets with a shared ``kid``, small exponents, huge moduli, or nothing usable at all.

Servers are real (sync ``grpc.server`` and ``grpc.aio``) on free ports; a JWKS source that hangs on
demand stands in for a slow issuer, so nothing here depends on timing except the deadlines that
bound a call which, before the fix, never came back.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from authsvc.core.errors import InvalidToken
from authsvc.core.keys import MAX_RSA_BITS, jwks_json, public_jwk, rfc7638_thumbprint
from authsvc.verify import AioAuthInterceptor, AuthInterceptor, JwksCache, TokenVerifier
from authsvc.verify.jwks import WouldBlock
from tests.conftest import ISSUER
from tests.helpers import ServerThread
from tests.keypool import rsa_key as pooled_rsa_key
from tests.security.test_token_verification_attacks import (
    ACCEPTED,
    AUDIENCE,
    REFUSED,
    Answer,
    Forge,
    answer_of,
)
from tests.verify.echo import AioEcho, SyncEcho, pb2, pb2_grpc
from tests.verify.test_interceptor import AioServer

DEADLINE = 5.0  # bounds a call that, before the fixes, waited for the hung fetch to be released
ACCESS_DENIED = (grpc.StatusCode.PERMISSION_DENIED, "ACCESS_DENIED")

KEY = pooled_rsa_key()
OTHER = pooled_rsa_key()
KID = rfc7638_thumbprint(KEY.public_key())
FORGE = Forge(KEY, KID, OTHER)


def jwks_of(*keys: rsa.RSAPrivateKey) -> str:
    return jwks_json([public_jwk(k.public_key()) for k in keys])


class PushSource:
    """A JWKS source the test drives: ``fetch`` answers ``document`` (hanging while ``hang`` is
    set, until ``release``), and ``push`` delivers a set as WatchJwks would."""

    def __init__(self, document: str) -> None:
        self.document = document
        self.hang = False
        self.started = threading.Event()
        self.release = threading.Event()
        self.calls = 0
        self._callback: Callable[[str], object] | None = None

    def fetch(self) -> str:
        self.calls += 1
        if self.hang:
            self.started.set()
            assert self.release.wait(30)
        return self.document

    def subscribe(self, callback: Callable[[str], object]) -> None:
        self._callback = callback

    def push(self, document: str) -> None:
        """The issuer's set changes to ``document``; a watcher hears of it at once."""
        assert self._callback is not None
        self.document = document
        self._callback(document)


# -- item 1: a pushed revocation leaves no cached acceptance ---------------------------------------


@dataclass
class Verifying:
    """Threads that verify ``tokens`` round-robin; once ``pushed`` is set, each makes five more
    verifications and stops (it stops on its own, so no thread spins while the main thread
    waits for the GIL to see it done)."""

    verifier: TokenVerifier
    tokens: list[str]
    pushed: threading.Event
    warm: threading.Barrier

    def run(self, slot: int) -> None:
        i, after = slot, None
        while after is None or i < after:
            with suppress(InvalidToken):
                self.verifier.verify(self.tokens[i % len(self.tokens)])
            i += 1
            if i == slot + 20:
                self.warm.wait(10)
            elif after is None and self.pushed.is_set():
                after = i + 5  # the verification in flight during the push has ended


def _stale_after_pushed_revocation(tokens: list[str]) -> bool:
    """One trial: True if a token of the revoked KEY is still accepted after the push."""
    source = PushSource(jwks_of(KEY, OTHER))
    cache = JwksCache(source, cooldown=3600, max_age=3600)
    source.push(jwks_of(KEY, OTHER))
    verifier = TokenVerifier(issuer=ISSUER, audience=AUDIENCE, jwks=cache, cache_size=4)
    work = Verifying(verifier, tokens, threading.Event(), threading.Barrier(5))
    threads = [threading.Thread(target=work.run, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    work.warm.wait(10)  # every thread is verifying
    source.push(jwks_of(OTHER))  # KEY revoked
    work.pushed.set()
    for t in threads:
        t.join(10)
    for token in tokens:
        with suppress(InvalidToken):
            verifier.verify(token)
            return True
    return False


def test_pushed_revocation_leaves_no_stale_cached_acceptance() -> None:
    """Threads verify tokens of KEY while a push removes KEY. Afterwards, no token of KEY may be
    accepted: a verification in flight during the push must not be cached under the new set.
    The 4-entry cache and 8 tokens make every call a full verification, so pushes land inside
    one in almost every trial."""
    tokens = [FORGE.token() for _ in range(8)]
    trials = 60
    stale = sum(_stale_after_pushed_revocation(tokens) for _ in range(trials))
    assert stale == 0, f"{stale} of {trials} trials still accepted a token of the revoked key"


def test_revocation_drops_cached_acceptances_but_adding_a_key_keeps_them() -> None:
    source = PushSource(jwks_of(KEY))
    cache = JwksCache(source, cooldown=3600, max_age=3600)
    source.push(jwks_of(KEY))
    verifier = TokenVerifier(issuer=ISSUER, audience=AUDIENCE, jwks=cache)
    token = FORGE.token()
    verifier.verify(token)
    epoch = cache.epoch
    source.push(jwks_of(KEY, OTHER))  # a rotation's next key: nothing to invalidate
    assert cache.epoch == epoch
    assert verifier.verify(token).client_id
    source.push(jwks_of(OTHER))  # KEY revoked
    assert cache.epoch != epoch
    with pytest.raises(InvalidToken):
        verifier.verify(token)


class _SwapWatched(JwksCache):
    """A JwksCache that runs ``between`` just before each write of its epoch or its set while
    ``between`` is set: the moments a reader on another thread could land in during a swap."""

    between: Callable[[], None] | None = None

    def __setattr__(self, name: str, value: Any) -> None:
        if name in ("epoch", "_set") and self.between is not None:
            self.between()
        super().__setattr__(name, value)


def test_no_verification_during_a_key_set_swap_accepts_a_key_the_set_no_longer_holds() -> None:
    """JwksCache writes a new set's epoch before the set (the verifier's cached path reads the
    epoch alone). At every moment of the swap, a token is accepted only while its key is still
    installed, from the cache or not, and nothing verified during the swap outlives the
    revocation. Written the other way round, a reader between the two writes would meet the new
    set under the old epoch, and a cached token of the revoked key would still pass."""
    source = PushSource(jwks_of(KEY, OTHER))
    cache = _SwapWatched(source, cooldown=3600, max_age=3600)
    assert cache.refresh()
    verifier = TokenVerifier(issuer=ISSUER, audience=AUDIENCE, jwks=cache, cache_size=100)
    cached, fresh = FORGE.token(), FORGE.token()
    verifier.verify(cached)  # remembered under the old epoch
    moments: list[tuple[bool, bool]] = []  # (KEY installed, a token of KEY accepted)

    def between() -> None:
        cache.between = None  # the verifications below must not recurse into the hook
        try:
            for token in (cached, fresh):
                try:
                    verifier.verify(token)
                    accepted = True
                except InvalidToken:
                    accepted = False
                moments.append((KID in cache.kids, accepted))
        finally:
            cache.between = between

    cache.between = between
    source.push(jwks_of(OTHER))  # KEY revoked
    cache.between = None
    assert len(moments) == 4, moments  # two writes, two tokens at each
    assert all(installed for installed, accepted in moments if accepted), moments
    for token in (cached, fresh):
        with pytest.raises(InvalidToken):
            verifier.verify(token)


def test_a_fetch_answered_before_a_push_does_not_undo_it() -> None:
    """A GetJwks answer computed before a revocation, arriving after the WatchJwks push of it,
    must not bring the revoked key back."""
    source = PushSource(jwks_of(KEY))
    cache = JwksCache(source, cooldown=0, max_age=3600)
    assert cache.refresh()
    source.hang = True
    with pytest.raises(WouldBlock) as pending:  # an unknown kid starts a fetch in the background
        cache.find("unknown", block=False)
    assert source.started.wait(5)
    source.push(jwks_of(OTHER))  # revocation pushed while the (old) fetch is in flight
    source.release.set()
    assert pending.value.future.result(5)
    assert cache.kids == {rfc7638_thumbprint(OTHER.public_key())}


# -- items 2 and 3: a slow fetch for a forged kid stalls nobody else --------------------------------


class StoreBackedEcho(AioEcho):
    """Echo that, like the PaymentService's store, does its work on the default executor."""

    async def Echo(self, request: Any, context: Any) -> Any:
        return await asyncio.to_thread(lambda: pb2.EchoResponse(text=request.text, caller=_caller()))


def _caller() -> str:
    from authsvc.verify import current_principal

    return current_principal().client_id


@dataclass
class Served:
    stub: Any
    channel: grpc.Channel

    def bearer(self, token: str, timeout: float = DEADLINE) -> Answer:
        try:
            response = self.stub.Echo(
                pb2.EchoRequest(text="x"), metadata=(("authorization", f"Bearer {token}"),), timeout=timeout
            )
        except grpc.RpcError as err:
            return answer_of(err)
        return grpc.StatusCode.OK, str(response.caller)

    def bearer_future(self, token: str) -> Any:
        return self.stub.Echo.future(
            pb2.EchoRequest(text="x"), metadata=(("authorization", f"Bearer {token}"),), timeout=30
        )

    def raw(self, method: str) -> Answer:
        try:
            call: Any = self.channel.unary_unary(method)
            call(b"", timeout=DEADLINE)
        except grpc.RpcError as err:
            return answer_of(err)
        return grpc.StatusCode.OK, ""


def _backdoor(request: bytes, context: Any) -> bytes:
    return b"opened"


async def _aio_backdoor(request: bytes, context: Any) -> bytes:
    return b"opened"


def _generic(kind: str) -> list[grpc.GenericRpcHandler]:
    """Handlers at paths that look like public or declared methods and are neither."""
    fn = _backdoor if kind == "sync" else _aio_backdoor
    return [
        grpc.method_handlers_generic_handler(
            "grpc.health.v1.Health", {"Backdoor": grpc.unary_unary_rpc_method_handler(fn)}
        ),
        # /echo.v1/EchoService.Ping: the same dotted name as the public /echo.v1.EchoService/Ping
        grpc.method_handlers_generic_handler(
            "echo.v1", {"EchoService.Ping": grpc.unary_unary_rpc_method_handler(fn)}
        ),
    ]


@contextmanager
def served(kind: str, cache: JwksCache, *, store_backed: bool = False) -> Iterator[Served]:
    """An EchoService of ``kind`` behind the interceptor, with the handlers of :func:`_generic`."""
    verifier = TokenVerifier(issuer=ISSUER, audience=AUDIENCE, jwks=cache)
    if kind == "sync":
        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=4), interceptors=[AuthInterceptor(verifier)]
        )
        pb2_grpc.add_EchoServiceServicer_to_server(SyncEcho(), server)
        server.add_generic_rpc_handlers(_generic(kind))
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        stop: Callable[[], object] = lambda: server.stop(0).wait()  # noqa: E731
    else:

        async def start() -> AioServer:
            aio = grpc.aio.server(interceptors=[AioAuthInterceptor(verifier)])
            pb2_grpc.add_EchoServiceServicer_to_server(StoreBackedEcho() if store_backed else AioEcho(), aio)
            aio.add_generic_rpc_handlers(_generic(kind))
            bound = aio.add_insecure_port("127.0.0.1:0")
            await aio.start()
            return AioServer(aio, bound)

        thread: ServerThread[AioServer] = ServerThread(start)
        port = thread.start().port
        stop = lambda: thread.stop(0)  # noqa: E731
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield Served(pb2_grpc.EchoServiceStub(channel), channel)
    finally:
        stop()


def _forged_kid() -> str:
    return FORGE.token(header=FORGE.header(kid=secrets.token_urlsafe(24)))


def _hung_cache() -> tuple[PushSource, JwksCache]:
    """A cache that holds KEY, past its cooldown, whose next fetch (due for any unknown kid)
    hangs until released."""
    source = PushSource(jwks_of(KEY))
    now = [1000.0]
    cache = JwksCache(source, cooldown=5, max_age=3600, monotonic=lambda: now[0])
    assert cache.refresh()
    now[0] += 10
    source.hang = True
    return source, cache


def test_forged_kid_during_a_slow_fetch_never_freezes_sync_dispatch() -> None:
    """Before: the fetch ran in grpcio's dispatch thread, so every call waited for it."""
    source, cache = _hung_cache()
    try:
        with served("sync", cache) as echo:
            first = echo.bearer_future(_forged_kid())
            assert source.started.wait(DEADLINE), "the forged kid did not start a fetch"
            # more forged kids while the fetch hangs: refused at once, not queued behind it
            assert [echo.bearer(_forged_kid()) for _ in range(8)] == [REFUSED] * 8
            # and a caller with a valid token is served meanwhile
            assert echo.bearer(FORGE.token()) == ACCEPTED
            assert not first.done(), "the fetch was released early: the test proved nothing"
            source.release.set()
            with pytest.raises(grpc.RpcError) as refused:
                first.result()
            assert answer_of(refused.value) == REFUSED
    finally:
        source.release.set()


def test_forged_kid_burst_during_a_slow_fetch_never_takes_the_aio_executor() -> None:
    """Before: each forged kid waited for the fetch on the default executor, which the handlers'
    store work also needs; 40 of them stalled every legitimate call until the fetch ended."""
    source, cache = _hung_cache()
    try:
        with served("aio", cache, store_backed=True) as echo:
            burst = [echo.bearer_future(_forged_kid()) for _ in range(40)]
            assert source.started.wait(DEADLINE), "the forged kids did not start a fetch"
            assert echo.bearer(FORGE.token()) == ACCEPTED
            assert not all(f.done() for f in burst), "the fetch ended early: the test proved nothing"
            source.release.set()
            answers = []
            for f in burst:
                try:
                    f.result()
                    answers.append(ACCEPTED)
                except grpc.RpcError as err:
                    answers.append(answer_of(err))
            assert set(answers) == {REFUSED}
            assert source.calls == 2, "the burst caused more than one fetch"
    finally:
        source.release.set()


# -- item 7: a method path means exactly one method -----------------------------------------------


@pytest.mark.parametrize("kind", ["sync", "aio"])
@pytest.mark.parametrize(
    "method",
    [
        pytest.param("/grpc.health.v1.Health/Backdoor", id="generic_handler_under_health"),
        pytest.param("/echo.v1/EchoService.Ping", id="dotted_method_aliasing_a_public_one"),
    ],
)
def test_method_path_is_matched_exactly(kind: str, method: str) -> None:
    source = PushSource(jwks_of(KEY))
    cache = JwksCache(source)
    with served(kind, cache) as echo:
        assert echo.raw(method) == ACCESS_DENIED
        # the real public methods still are
        assert echo.stub.Ping(pb2.EchoRequest(text="x"), timeout=DEADLINE).text == "x"


# -- item 8: JWKS hygiene -------------------------------------------------------------------------


def _b64uint(value: int) -> str:
    raw = value.to_bytes((value.bit_length() + 7) // 8, "big")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _cache_with(document: str) -> JwksCache:
    return JwksCache(PushSource(document), cooldown=3600, max_age=3600)


def test_jwks_with_a_duplicate_kid_makes_that_kid_unusable() -> None:
    """Two keys under one kid: a token naming it is refused, whichever key signed it."""
    decoy = public_jwk(OTHER.public_key())
    decoy["kid"] = KID
    third = pooled_rsa_key()
    cache = _cache_with(
        json.dumps({"keys": [public_jwk(KEY.public_key()), decoy, public_jwk(third.public_key())]})
    )
    verifier = TokenVerifier(issuer=ISSUER, audience=AUDIENCE, jwks=cache)
    for key in (KEY, OTHER):
        with pytest.raises(InvalidToken):
            verifier.verify(FORGE.token(key=key))


def test_jwks_with_a_small_rsa_exponent_is_refused() -> None:
    weak = rsa.generate_private_key(public_exponent=3, key_size=2048)
    jwk = public_jwk(weak.public_key())
    cache = _cache_with(jwks_json([jwk, public_jwk(KEY.public_key())]))
    forge = Forge(weak, jwk["kid"], OTHER)
    verifier = TokenVerifier(issuer=ISSUER, audience=AUDIENCE, jwks=cache)
    with pytest.raises(InvalidToken):
        verifier.verify(forge.token())
    assert cache.kids == {KID}


def test_jwks_with_a_huge_modulus_is_refused() -> None:
    """A modulus above 8192 bits would make each verification arbitrarily slow."""
    n = (1 << (MAX_RSA_BITS + 8)) | 1
    huge = {"kty": "RSA", "kid": "huge", "e": "AQAB", "n": _b64uint(n)}
    cache = _cache_with(json.dumps({"keys": [huge, public_jwk(KEY.public_key())]}))
    assert cache.get("huge") is None
    assert cache.get(KID) is not None


def test_jwks_of_only_malformed_entries_never_replaces_the_last_good_set() -> None:
    source = PushSource(jwks_of(KEY))
    cache = JwksCache(source, cooldown=3600, max_age=3600)
    assert cache.refresh()
    source.push(json.dumps({"keys": [{"kty": "RSA", "kid": "x"}, {"kty": "EC", "kid": "y"}, "junk"]}))
    assert cache.kids == {KID}
    verifier = TokenVerifier(issuer=ISSUER, audience=AUDIENCE, jwks=cache)
    assert verifier.verify(FORGE.token()).client_id


# -- resource exhaustion: a flood of forged tokens writes a bounded amount of log ------------------


@pytest.mark.parametrize("kind", ["sync", "aio"])
def test_forged_token_flood_writes_a_bounded_amount_of_log(
    kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    source = PushSource(jwks_of(KEY))
    cache = JwksCache(source, cooldown=3600, max_age=3600)
    assert cache.refresh()
    forged = FORGE.token(key=OTHER)  # a known kid, a signature that does not verify
    with served(kind, cache) as echo, caplog.at_level(logging.INFO, logger="authsvc.verify"):
        started = time.monotonic()
        answers = {echo.bearer(forged) for _ in range(400)}
        elapsed = time.monotonic() - started
    assert answers == {REFUSED}
    lines = [r for r in caplog.records if r.name == "authsvc.verify"]
    # the limiter's burst, its rate over the flood's duration, and summary lines
    assert 0 < len(lines) <= 50 + 10 * elapsed * 2 + 2, f"{len(lines)} lines for 400 refusals"
