"""The transport-free pieces every resource-server edge shares: the Bearer parsers, the
non-blocking verification on an event loop, and the caller's context variable."""

from __future__ import annotations

import asyncio
import threading

import pytest

from authsvc.core.errors import InvalidRequest, InvalidToken, OAuthError, TemporarilyUnavailable
from authsvc.core.keys import jwks_json, public_jwk, rfc7638_thumbprint
from authsvc.verify import (
    JwksCache,
    TokenVerifier,
    bearer_token,
    bound_principal,
    current_principal,
    http_bearer_token,
    verify_on_event_loop,
)
from tests.conftest import ISSUER
from tests.keypool import rsa_key as pooled_rsa_key
from tests.security.test_token_verification_attacks import AUDIENCE, CLIENT_ID, Forge

KEY = pooled_rsa_key()
OTHER = pooled_rsa_key()
FORGE = Forge(KEY, rfc7638_thumbprint(KEY.public_key()), OTHER)
JWKS = jwks_json([public_jwk(KEY.public_key())])


class GatedSource:
    """Answers JWKS; while ``hang`` is set, a fetch waits for ``release``."""

    def __init__(self, *, fail: bool = False) -> None:
        self.hang = False
        self.fail = fail
        self.started = threading.Event()
        self.release = threading.Event()
        self.calls = 0

    def fetch(self) -> str:
        self.calls += 1
        if self.hang:
            self.started.set()
            assert self.release.wait(30)
        if self.fail:
            raise OSError("issuer down")
        return JWKS


def verifier_on(source: GatedSource, now: list[float]) -> TokenVerifier:
    cache = JwksCache(source, cooldown=5, max_age=3600, monotonic=lambda: now[0])
    return TokenVerifier(issuer=ISSUER, audience=AUDIENCE, jwks=cache)


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        pytest.param([], None, id="no_header"),
        pytest.param(["Bearer abc.def.ghi"], "abc.def.ghi", id="bearer"),
        pytest.param(["bearer   abc"], "abc", id="scheme_case_insensitive_1_star_sp"),
        pytest.param(["Basic c2hvcDpzZWNyZXQ="], None, id="another_scheme_is_no_bearer_credential"),
    ],
)
def test_http_bearer_token_reads_exactly_one_header(values: list[str], expected: str | None) -> None:
    assert http_bearer_token(values) == expected


@pytest.mark.parametrize(
    ("values", "error"),
    [
        pytest.param(["Bearer a", "Bearer b"], InvalidRequest, id="two_headers"),
        pytest.param(["Bearer"], InvalidToken, id="scheme_without_token"),
        pytest.param(["Bearer  "], InvalidToken, id="scheme_and_spaces_only"),
        pytest.param(["Bearer a b"], InvalidToken, id="token_with_a_space"),
        pytest.param(["Bearer " + "a" * 9000], InvalidToken, id="too_long"),
    ],
)
def test_http_bearer_token_refuses_malformed_credentials(values: list[str], error: type[OAuthError]) -> None:
    with pytest.raises(error):
        http_bearer_token(values)


def test_grpc_bearer_token_keeps_its_rules() -> None:
    assert bearer_token([("authorization", "Bearer t")]) == "t"
    for metadata in ([], [("authorization", "Basic x")], [("authorization", "Bearer a")] * 2):
        with pytest.raises(InvalidToken):
            bearer_token(metadata)


def test_bound_principal_sets_and_restores_the_caller() -> None:
    verifier = TokenVerifier(issuer=ISSUER, audience=AUDIENCE, jwks=JwksCache(GatedSource()))
    principal = verifier.verify(FORGE.token())
    with pytest.raises(LookupError):
        current_principal()
    with bound_principal(principal):
        assert current_principal().client_id == CLIENT_ID
        with bound_principal(None), pytest.raises(LookupError):
            current_principal()  # a public route inside hides the enclosing caller
        assert current_principal() is principal
    with pytest.raises(LookupError):
        current_principal()


def test_verify_on_event_loop_awaits_a_fetch_without_blocking_the_loop() -> None:
    source, now = GatedSource(), [1000.0]
    verifier = verifier_on(source, now)
    source.hang = True  # the very first fetch hangs

    async def run() -> str:
        pending = asyncio.create_task(verify_on_event_loop(verifier, FORGE.token()))
        # the loop stays free while the fetch hangs in the cache's own thread
        assert await asyncio.to_thread(source.started.wait, 10)
        for _ in range(3):
            await asyncio.sleep(0)
        assert not pending.done()
        source.release.set()
        return (await pending).client_id

    assert asyncio.run(run()) == CLIENT_ID
    assert source.calls == 1


def test_verify_on_event_loop_never_waits_twice_and_says_why() -> None:
    source, now = GatedSource(fail=True), [1000.0]
    verifier = verifier_on(source, now)
    with pytest.raises(TemporarilyUnavailable):
        asyncio.run(verify_on_event_loop(verifier, FORGE.token()))
    source.fail = False
    assert verifier.keys.refresh()
    now[0] += 10  # past the cooldown: an unknown kid fetches once, finds nothing, is refused
    forged = FORGE.token(header=FORGE.header(kid="made-up"))
    with pytest.raises(InvalidToken):
        asyncio.run(verify_on_event_loop(verifier, forged))
    assert source.calls == 3


def test_a_verifier_bug_becomes_a_clean_invalid_token() -> None:
    class Broken(TokenVerifier):
        def verify(self, token: str, *, block: bool = True) -> object:  # type: ignore[override]
            raise RuntimeError("bug")

    broken = Broken(issuer=ISSUER, audience=AUDIENCE, jwks=JwksCache(GatedSource()))
    with pytest.raises(InvalidToken):
        asyncio.run(verify_on_event_loop(broken, "a.b.c", where="/x\n"))
