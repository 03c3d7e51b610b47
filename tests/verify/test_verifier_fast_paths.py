"""The verifier's cheaper forms of its own checks (issue 14) give what the plain forms give.

- a principal built through the slots' setters equals, field for field, the one the frozen
  dataclass builds, and is just as frozen;
- parsed scope claims are remembered only for tokens whose signature checked: forged tokens
  (attacker's key) with made-up scope strings leave nothing behind, and a remembered scope
  string gives the same scopes as parsing it;
- acceptable header segments are remembered only for tokens whose signature checked, too;
- a principal's claims are read-only, nested arrays and objects included: the principal a cached
  token maps to answers every later call with that token, so no handler may change it;
- ``cache_size=0`` remembers no acceptance, and still refuses everything it refused;
- the common ``Bearer <token>`` spelling, read without the general parser, gives what it gives;
- the sync interceptor's guarded handler, built once per method, judges every call by that
  call's own metadata.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from types import SimpleNamespace
from typing import Any

import grpc
import pytest
from hypothesis import given
from hypothesis import strategies as st

from authsvc.core.errors import InvalidToken
from authsvc.core.keys import jwks_json, public_jwk, rfc7638_thumbprint
from authsvc.verify import (
    AioAuthInterceptor,
    AuthInterceptor,
    StaticJwksSource,
    TokenVerifier,
    current_principal,
)
from authsvc.verify.binding import DEFER_BINDING
from authsvc.verify.principal import _token_of, bearer_token
from authsvc.verify.verifier import MAX_TOKEN_BYTES, Principal, _new_principal
from tests.conftest import ISSUER
from tests.keypool import rsa_key as pooled_rsa_key
from tests.security.test_token_verification_attacks import AUDIENCE, Forge

KEY = pooled_rsa_key()
ATTACKER = pooled_rsa_key()
FORGE = Forge(KEY, rfc7638_thumbprint(KEY.public_key()), ATTACKER)


def verifier(cache_size: int = 10_000) -> TokenVerifier:
    jwks = StaticJwksSource(jwks_json([public_jwk(KEY.public_key())]))
    v = TokenVerifier(issuer=ISSUER, audience=AUDIENCE, jwks=jwks, cache_size=cache_size)
    assert v.keys.refresh()
    return v


def test_fast_principal_equals_the_dataclass_field_for_field() -> None:
    values = dict(
        client_id="c",
        subject="s",
        scopes=frozenset({"a", "b"}),
        audience=("aud",),
        issuer=ISSUER,
        jti="j",
        expires_at=2.0,
        issued_at=1.0,
        claims={"scope": "a b"},
        certificate_thumbprint="t" * 43,
    )
    fast, plain = _new_principal(**values), Principal(**values)  # type: ignore[arg-type]
    assert type(fast) is Principal
    assert fast == plain
    assert dataclasses.asdict(fast) == dataclasses.asdict(plain)
    with pytest.raises(dataclasses.FrozenInstanceError):
        fast.scopes = frozenset({"admin"})  # type: ignore[misc]


def test_verified_principal_equals_one_built_from_its_claims() -> None:
    token = FORGE.token(claims=FORGE.claims(scope="echo:read echo:write echo:read", aud=[AUDIENCE, "x"]))
    principal = verifier().verify(token)
    claims = principal.claims
    assert principal == Principal(
        client_id=claims["client_id"],
        subject=claims["sub"],
        scopes=frozenset({"echo:read", "echo:write"}),
        audience=(AUDIENCE, "x"),
        issuer=ISSUER,
        jti=claims["jti"],
        expires_at=float(claims["exp"]),
        issued_at=float(claims["iat"]),
        claims=claims,
    )


def test_forged_tokens_never_fill_the_scope_cache() -> None:
    v = verifier()
    for n in range(50):
        forged = FORGE.token(claims=FORGE.claims(scope=f"admin:{n}"), key=ATTACKER)
        with pytest.raises(InvalidToken):
            v.verify(forged)
    assert v._scope_sets == {}
    v.verify(FORGE.token(claims=FORGE.claims(scope="echo:read admin:1")))
    assert v._scope_sets == {"echo:read admin:1": frozenset({"echo:read", "admin:1"})}


def test_forged_tokens_never_fill_the_header_cache() -> None:
    # each spelling of typ is an acceptable header (RFC 7515 §4.1.9: case-insensitive, the
    # "application/" prefix optional), so each is a header segment of its own
    spellings = [
        prefix + "".join(c.upper() if bit else c for c, bit in zip("at+jwt", bits, strict=False))
        for prefix in ("", "application/")
        for bits in ((n >> i & 1 for i in range(6)) for n in range(32))
    ]
    v = verifier()
    for typ in spellings:
        with pytest.raises(InvalidToken):
            v.verify(FORGE.token(header=FORGE.header(typ=typ), key=ATTACKER))
    assert v._headers == {}
    v.verify(FORGE.token(header=FORGE.header(typ="AT+JWT")))
    assert list(v._headers.values()) == [FORGE.kid]


def test_principal_claims_are_read_only_and_cached_hits_see_them_unchanged() -> None:
    v = verifier()
    bound = {"x5t#S256": "A" * 43}
    token = FORGE.token(claims=FORGE.claims(aud=[AUDIENCE, "x"], cnf=bound, extra={"nested": [1, {"a": 2}]}))
    claims = v.verify(token, peer_certificate=DEFER_BINDING).claims
    with pytest.raises(TypeError):
        claims["scope"] = "admin"  # type: ignore[index]
    with pytest.raises(TypeError):
        del claims["aud"]  # type: ignore[attr-defined]
    with pytest.raises(AttributeError):
        claims["aud"].append("payments")
    with pytest.raises(TypeError):
        claims["cnf"]["x5t#S256"] = "B" * 43
    with pytest.raises(TypeError):
        claims["extra"]["nested"][1]["a"] = 3
    again = v.verify(token, peer_certificate=DEFER_BINDING)
    assert again.claims is claims  # the cache's principal: the same, unchanged
    assert claims["aud"] == (AUDIENCE, "x") and dict(claims["cnf"]) == bound
    assert claims["extra"]["nested"][1] == {"a": 2}


def test_a_remembered_scope_string_gives_the_parsed_scopes_and_malformed_ones_stay_refused() -> None:
    v = verifier(cache_size=0)
    for _ in range(2):  # the second time from the remembered parse
        assert v.verify(FORGE.token(claims=FORGE.claims(scope="b a b"))).scopes == {"a", "b"}
    for malformed in ("b  a", " b a", "b a ", "b\ta", 'b "a"', "b\u00a0a"):
        with pytest.raises(InvalidToken):
            v.verify(FORGE.token(claims=FORGE.claims(scope=malformed)))
    assert set(v._scope_sets) == {"b a b"}


def test_cache_size_zero_remembers_nothing_and_still_refuses() -> None:
    v = verifier(cache_size=0)
    token = FORGE.token()
    assert v.verify(token).scopes == {"echo:read"}
    assert len(v._verified) == 0
    with pytest.raises(InvalidToken):
        v.verify(token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB"))


def _general_bearer(value: str) -> str | None:
    """bearer_token's answer for one entry by the general parser alone (no fast path)."""
    try:
        token = _token_of(value, "authorization metadata entry")
    except InvalidToken:
        return "refused"
    return "refused" if token is None else token


def _bearer(value: str) -> str | None:
    try:
        return bearer_token((("authorization", value),))
    except InvalidToken:
        return "refused"


_PIECES = ["Bearer", "bearer", "BEARER", "Basic", " ", "  ", "\t", "a.b", "\u0130", "x", "\u00a0"]


@given(st.lists(st.sampled_from(_PIECES), max_size=6).map("".join))
def test_bearer_fast_path_agrees_with_the_general_parser(value: str) -> None:
    assert _bearer(value) == _general_bearer(value)


@pytest.mark.parametrize(
    "value",
    [
        "Bearer ",
        "Bearer  x",
        "Bearer x y",
        "Bearer x ",
        "Bearerx",
        "Bearer\tx",
        "Bearer " + "x" * MAX_TOKEN_BYTES + "x",
    ],
    ids=["empty", "two-spaces", "inner-space", "trailing-space", "no-space", "tab", "too-long"],
)
def test_bearer_spellings_agree_with_the_general_parser(value: str) -> None:
    assert _bearer(value) == _general_bearer(value)


def test_bearer_still_refuses_two_entries_and_bytes() -> None:
    with pytest.raises(InvalidToken):
        bearer_token((("authorization", "Bearer a"), ("authorization", "Bearer a")))
    with pytest.raises(InvalidToken):
        bearer_token((("authorization", b"Bearer a"),))


class _Aborted(Exception):
    pass


class _Context:
    """The parts of a sync ``grpc.ServicerContext`` the guarded handler uses."""

    def __init__(self, metadata: tuple[tuple[str, str], ...]) -> None:
        self._metadata = metadata
        self.status: grpc.Status | None = None

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._metadata

    def auth_context(self) -> dict[str, list[bytes]]:
        return {}

    def abort_with_status(self, status: grpc.Status) -> None:
        self.status = status
        raise _Aborted


def test_sync_guarded_handler_is_built_once_and_judges_each_call_by_its_own_metadata() -> None:
    path = "/bench.v1.Bench/Ping"
    interceptor = AuthInterceptor(verifier(), policy={path: ["echo:read"]})
    handler: Any = grpc.unary_unary_rpc_method_handler(lambda request, context: current_principal().client_id)
    # the details carry a token that is never the one judged: each call's own metadata is
    details: Any = SimpleNamespace(
        method=path, invocation_metadata=(("authorization", f"Bearer {FORGE.token()}"),)
    )

    guarded: list[Any] = [interceptor.intercept_service(lambda _: handler, details) for _ in range(3)]
    assert guarded[0] is guarded[1] is guarded[2] and guarded[0] is not handler
    call = guarded[0].unary_unary
    token = FORGE.token()
    assert call(b"", _Context((("authorization", f"Bearer {token}"),))) == FORGE.claims()["client_id"]
    for metadata, code in (
        ((), grpc.StatusCode.UNAUTHENTICATED),
        ((("authorization", f"Bearer {FORGE.token(key=ATTACKER)}"),), grpc.StatusCode.UNAUTHENTICATED),
        (
            (("authorization", f"Bearer {FORGE.token(claims=FORGE.claims(scope='other'))}"),),
            grpc.StatusCode.PERMISSION_DENIED,
        ),
    ):
        context = _Context(metadata)
        with pytest.raises(_Aborted):
            call(b"", context)
        assert context.status is not None and context.status.code == code


def test_a_method_whose_handler_changes_is_guarded_with_the_new_handler() -> None:
    """The guarded handlers are remembered per method: a generic handler that answers the method
    with another handler later gets that one guarded, never the old one."""
    path = "/bench.v1.Bench/Ping"
    interceptor = AuthInterceptor(verifier(), policy={path: ["echo:read"]})
    details: Any = SimpleNamespace(method=path, invocation_metadata=())
    old: Any = grpc.unary_unary_rpc_method_handler(lambda request, context: "old")
    new: Any = grpc.unary_unary_rpc_method_handler(lambda request, context: "new")
    metadata = (("authorization", f"Bearer {FORGE.token()}"),)
    first: Any = interceptor.intercept_service(lambda _: old, details)
    assert first is not None and first.unary_unary(b"", _Context(metadata)) == "old"
    second: Any = interceptor.intercept_service(lambda _: new, details)
    assert second is not None and second is not first
    assert second.unary_unary(b"", _Context(metadata)) == "new"
    assert interceptor.intercept_service(lambda _: new, details) is second


class _Broken(TokenVerifier):
    """A verifier with a bug: every verification raises something that is not an OAuthError."""

    def verify(self, token: str, **_: Any) -> Principal:
        raise RuntimeError("bug")


class _AioContext:
    def __init__(self) -> None:
        self.status: grpc.Status | None = None

    async def abort_with_status(self, status: grpc.Status) -> None:
        self.status = status
        raise _Aborted


def test_a_verifier_bug_is_a_clean_refusal_through_both_interceptors(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Through either interceptor (each calls verify_token in its own cached path) an
    unexpected error from the verifier must be UNAUTHENTICATED, logged once with its traceback,
    never an UNKNOWN status with the bug's message."""
    path = "/bench.v1.Bench/Ping"
    broken = _Broken(
        issuer=ISSUER, audience=AUDIENCE, jwks=StaticJwksSource(jwks_json([public_jwk(KEY.public_key())]))
    )
    metadata = (("authorization", f"Bearer {FORGE.token()}"),)
    details: Any = SimpleNamespace(method=path, invocation_metadata=metadata)

    sync_handler: Any = grpc.unary_unary_rpc_method_handler(lambda request, context: "ran")
    guarded: Any = AuthInterceptor(broken, policy={path: ["echo:read"]}).intercept_service(
        lambda _: sync_handler, details
    )
    assert guarded is not None
    context = _Context(metadata)
    with caplog.at_level(logging.ERROR, logger="authsvc.verify"), pytest.raises(_Aborted):
        guarded.unary_unary(b"", context)
    assert context.status is not None and context.status.code == grpc.StatusCode.UNAUTHENTICATED
    assert "bug" not in context.status.details

    async def ran(request: Any, context: Any) -> str:
        return "ran"

    aio_handler: Any = grpc.unary_unary_rpc_method_handler(ran)

    async def continuation(_: Any) -> Any:
        return aio_handler

    async def call() -> _AioContext:
        interceptor = AioAuthInterceptor(broken, policy={path: ["echo:read"]})
        handler: Any = await interceptor.intercept_service(continuation, details)
        assert handler is not None and handler is not aio_handler
        aio_context = _AioContext()
        with pytest.raises(_Aborted):
            await handler.unary_unary(b"", aio_context)
        return aio_context

    with caplog.at_level(logging.ERROR, logger="authsvc.verify"):
        aio_context = asyncio.run(call())
    assert aio_context.status is not None and aio_context.status.code == grpc.StatusCode.UNAUTHENTICATED
    assert "bug" not in aio_context.status.details
    failures = [
        r for r in caplog.records if "failed unexpectedly on '/bench.v1.Bench/Ping'" in r.getMessage()
    ]
    assert len(failures) == 2 and all(r.exc_info and r.exc_info[0] is RuntimeError for r in failures)
