"""Offline verification of RFC 9068 access tokens.

:class:`TokenVerifier` checks a token against one issuer and one audience using keys from a
:class:`~authsvc.verify.jwks.JwksCache`, cheapest checks first, so that garbage costs
microseconds and never causes a key fetch:

1. size (8 KiB), three canonical base64url segments, strict JSON;
2. header: only ``alg``, ``kid`` and ``typ``; ``alg`` exactly RS256 (the algorithm is pinned,
   never read from the token: RFC 8725 §3.1); ``typ`` ``at+jwt`` (RFC 9068 §4);
3. claims: every one of ``iss aud exp iat nbf sub jti client_id scope`` present and well typed,
   exact issuer, our audience, time window with a small leeway, bounded lifetime;
4. the key, by ``kid``, from memory (an unknown kid may trigger one throttled refresh);
5. the RSA signature.

A token bound to a client certificate (RFC 8705 §3.1, ``cnf.x5t#S256``; any other ``cnf`` is
refused) is accepted only with the matching ``peer_certificate``: :mod:`authsvc.verify.binding`.

A token that passed is remembered (keyed by its SHA-256) until it expires, so a repeated token
costs a hash and a dict lookup; only under the epoch of the key set that verified it, so that a
key leaving the set (revocation) ends every acceptance it backed. Failures are never cached.
The header segments and the scope strings of tokens whose signature checked are kept parsed
(bounded, and never filled by a forged token), so a fresh token with a known header and scope
string is not parsed twice over; every check above still runs on it. The principal's claims
are read-only: one principal answers every call that presents its token.

With a :class:`~authsvc.verify.revocations.RevocationCache`, every acceptance, fresh or from
that cache, is then checked against the revocation list (two dict lookups), so a token revoked
after it was cached is refused on its next use: the cache is never a way around the list. The
list is consulted only once the signature has checked, so a forged token learns nothing of it.
The certificate binding, likewise, is checked on every call, cached or not: the cache remembers
that a token is valid, never who presented it.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding

from authsvc.core.errors import InsufficientScope, InvalidScope
from authsvc.core.keys import ALGORITHM
from authsvc.core.ports import Clock, SystemClock
from authsvc.core.scopes import parse_scope
from authsvc.verify import outcomes as o
from authsvc.verify.binding import DeferBinding, bound_thumbprint, check_binding
from authsvc.verify.jose import b64url_decode_strict, json_number, split_compact, strict_json_object
from authsvc.verify.jwks import JwksCache, JwksSource, WouldBlock
from authsvc.verify.outcomes import Refused, VerifierMetrics, outcome_of
from authsvc.verify.revocations import RevocationCache

__all__ = ["ACCEPTED_TYPS", "ANY_AUDIENCE", "MAX_TOKEN_BYTES", "AnyAudience", "Principal", "TokenVerifier"]

MAX_TOKEN_BYTES = 8 * 1024
ACCEPTED_TYPS = frozenset({"at+jwt", "application/at+jwt"})
_HEADER_MEMBERS = frozenset({"alg", "kid", "typ"})
_PKCS1V15 = padding.PKCS1v15()
_SHA256 = hashes.SHA256()


@dataclass(frozen=True, slots=True)
class Principal:
    """The verified caller: who it is, what it may do, and until when."""

    client_id: str
    subject: str
    scopes: frozenset[str]
    audience: tuple[str, ...]
    issuer: str
    jti: str
    expires_at: float
    issued_at: float
    # every claim of the token, read-only (arrays as tuples, objects as read-only mappings)
    claims: Mapping[str, Any] = field(repr=False, compare=False)
    # RFC 8705 §3.1: the x5t#S256 of the client certificate the token is bound to, or None
    certificate_thumbprint: str | None = None

    def has_scopes(self, required: Iterable[str]) -> bool:
        return self.scopes.issuperset(required)


_PRINCIPAL_FIELDS = (
    "client_id",
    "subject",
    "scopes",
    "audience",
    "issuer",
    "jti",
    "expires_at",
    "issued_at",
    "claims",
    "certificate_thumbprint",
)
if tuple(f.name for f in fields(Principal)) != _PRINCIPAL_FIELDS:  # pragma: no cover
    raise ImportError("Principal's fields changed: update _new_principal")
(
    _set_client_id,
    _set_subject,
    _set_scopes,
    _set_audience,
    _set_issuer,
    _set_jti,
    _set_expires_at,
    _set_issued_at,
    _set_claims,
    _set_certificate_thumbprint,
) = (getattr(Principal, name).__set__ for name in _PRINCIPAL_FIELDS)


def _new_principal(
    *,
    client_id: str,
    subject: str,
    scopes: frozenset[str],
    audience: tuple[str, ...],
    issuer: str,
    jti: str,
    expires_at: float,
    issued_at: float,
    claims: Mapping[str, Any],
    certificate_thumbprint: str | None,
) -> Principal:
    """``Principal(...)`` with the same fields, built through the slots' own setters (one call
    each, no loop): a frozen dataclass's ``__init__`` sets each field through
    ``object.__setattr__``, which costs a third of the claims check of a fresh token. The result
    is the same frozen object."""
    principal: Principal = object.__new__(Principal)
    _set_client_id(principal, client_id)
    _set_subject(principal, subject)
    _set_scopes(principal, scopes)
    _set_audience(principal, audience)
    _set_issuer(principal, issuer)
    _set_jti(principal, jti)
    _set_expires_at(principal, expires_at)
    _set_issued_at(principal, issued_at)
    _set_claims(principal, claims)
    _set_certificate_thumbprint(principal, certificate_thumbprint)
    return principal


def _check_header(header_b64: str) -> str:
    """The kid of an acceptable header segment; raises InvalidToken otherwise."""
    header = strict_json_object(b64url_decode_strict(header_b64))
    if not set(header) <= _HEADER_MEMBERS:
        raise Refused(o.MALFORMED, "the token's header has members other than alg, kid and typ")
    if header.get("alg") != ALGORITHM:
        raise Refused(o.WRONG_ALGORITHM, "the token is not signed with RS256")
    typ = header.get("typ")
    # RFC 7515 §4.1.9: media types compare case-insensitively, "application/" may be omitted
    if not isinstance(typ, str) or typ.lower() not in ACCEPTED_TYPS:
        raise Refused(o.WRONG_TYPE, "the token is not an at+jwt access token")
    kid = header.get("kid")
    if not isinstance(kid, str) or not 0 < len(kid) <= 128:
        raise Refused(o.MALFORMED, "the token's kid is missing or malformed")
    return kid


def _number(claims: Mapping[str, Any], name: str) -> float:
    value = json_number(claims.get(name))
    if value is None:
        raise Refused(o.INVALID_CLAIMS, f"the token's {name} claim is missing or not a number")
    return value


def _string(claims: Mapping[str, Any], name: str) -> str:
    value = claims.get(name)
    if not isinstance(value, str) or not value:
        raise Refused(o.INVALID_CLAIMS, f"the token's {name} claim is missing or empty")
    return value


def _frozen(value: Any) -> Any:
    if isinstance(value, dict):
        return MappingProxyType({k: _frozen(v) for k, v in value.items()})
    if isinstance(value, list):
        return tuple(_frozen(v) for v in value)
    return value


def _read_only(claims: dict[str, Any]) -> Mapping[str, Any]:
    """``claims`` (this call's own dict, fresh from the JSON parser, so uncopied) as a read-only
    view, its arrays as tuples and its objects as read-only views too: one principal serves every
    call that presents its token (the verified-token cache), so no handler may change what the
    next one sees. Only for a token whose signature checked: the walk is recursive, and a claim
    nested nearly as deep as the parser allows would exhaust the stack (refused, not raised)."""
    for value in claims.values():
        if type(value) is dict or type(value) is list:  # what the parser makes; rare in a token
            try:
                for name, nested in claims.items():
                    claims[name] = _frozen(nested)
            except RecursionError:
                raise Refused(o.MALFORMED, "the token's claims are nested too deeply") from None
            break
    return MappingProxyType(claims)


def _check_bound(principal: Principal, peer_certificate: bytes | DeferBinding | None) -> None:
    if principal.certificate_thumbprint is not None and not isinstance(peer_certificate, DeferBinding):
        check_binding(principal.certificate_thumbprint, peer_certificate)


class AnyAudience:
    """The type of :data:`ANY_AUDIENCE`."""

    def __repr__(self) -> str:
        return "ANY_AUDIENCE"


ANY_AUDIENCE = AnyAudience()
"""Accept tokens for any audience. Only for the issuer itself (token introspection, RFC 7662):
a resource server that passes it accepts tokens minted for every other service."""


class TokenVerifier:
    """Verifies access tokens issued by ``issuer`` for ``audience``.

    ``jwks`` is a :class:`JwksSource` (wrapped in a :class:`JwksCache` with default settings) or a
    configured :class:`JwksCache`. ``leeway`` (seconds) absorbs clock skew on ``exp``, ``nbf``
    and ``iat``; keep it small. ``max_lifetime`` refuses tokens whose ``exp - iat`` exceeds it,
    so a stolen signing key cannot mint tokens that live for years.

    ``revocations`` is the revocation list (:class:`RevocationCache`, fed by a
    :class:`~authsvc.verify.revocations.GrpcRevocationSource`): a token it refuses is
    InvalidToken ("the token has been revoked"); its staleness policy (fail open or closed) is
    the cache's. Without it, a revoked token is accepted until it expires.

    ``metrics`` (settable later, before serving) counts each verification once, by outcome
    (:mod:`authsvc.verify.outcomes`), and whether the verified-token cache answered; a
    verification that must wait for a key fetch (:class:`~authsvc.verify.jwks.WouldBlock`) is
    counted when it is asked again.
    """

    def __init__(
        self,
        *,
        issuer: str,
        audience: str | AnyAudience,
        jwks: JwksSource | JwksCache,
        leeway: float = 30.0,
        max_lifetime: float = 86_400.0,
        cache_size: int = 10_000,
        clock: Clock | None = None,
        revocations: RevocationCache | None = None,
        metrics: VerifierMetrics | None = None,
    ) -> None:
        if not issuer or not audience:
            raise ValueError("issuer and audience are required")
        if not 0 <= leeway <= 300:
            raise ValueError("leeway must be between 0 and 300 seconds")
        self.issuer = issuer
        self.audience = audience
        self.keys = jwks if isinstance(jwks, JwksCache) else JwksCache(jwks)
        self.leeway = leeway
        self.revocations = revocations
        self.metrics = metrics
        self.max_lifetime = max_lifetime
        # the system clock is time.time itself: no Python frame per call
        self._now: Callable[[], float] = (
            time.time if clock is None or type(clock) is SystemClock else clock.now
        )
        self._cache_size = cache_size
        self._verified: OrderedDict[bytes, tuple[float, int, Principal]] = OrderedDict()
        self._cached_epoch = self.keys.epoch
        # header segments of tokens whose signature checked (so forged tokens never fill it)
        self._headers: dict[str, str] = {}
        # scope claims of tokens that passed, parsed: many tokens share a few scope strings.
        # Filled only after a signature checked, so forged tokens never fill it
        self._scope_sets: dict[str, frozenset[str]] = {}
        self._lock = threading.Lock()

    def verify(
        self,
        token: str,
        *,
        block: bool = True,
        peer_certificate: bytes | DeferBinding | None = None,
    ) -> Principal:
        """The principal of a valid token; raises :class:`InvalidToken` (or
        :class:`~authsvc.core.errors.TemporarilyUnavailable` when no keys can be had).

        ``peer_certificate`` is the DER certificate the caller presented in the TLS handshake of
        this call's connection, None when it presented none: a token bound to a certificate
        (RFC 8705 §3) is accepted only with that one, on every call. Leaving it None refuses every
        bound token. :data:`~authsvc.verify.binding.DEFER_BINDING` skips the check, for a caller
        that makes it itself (see there).

        With ``block=False`` it never waits on the network: where the key set must be fetched
        first it raises :class:`~authsvc.verify.jwks.WouldBlock`, whose ``future`` an event loop
        awaits before it calls again."""
        metrics = self.metrics
        cached = False
        try:
            if len(token) > MAX_TOKEN_BYTES:
                raise Refused(o.MALFORMED, f"the token is longer than {MAX_TOKEN_BYTES} bytes")
            now = self._now()
            if self._cache_size > 0:
                digest = hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()
                hit = self._verified.get(digest)
            else:  # nothing is remembered: no key to look up
                digest, hit = b"", None
            if hit is not None and now < hit[0] and hit[1] == self.keys.epoch:
                cached = True
                principal = hit[2]
                if self.revocations is not None:
                    self._check_revoked(self.revocations, principal)
                if principal.certificate_thumbprint is not None:  # _check_bound, inlined
                    _check_bound(principal, peer_certificate)
            else:
                principal = self._verify_and_remember(token, digest, now, block, peer_certificate)
        except WouldBlock:
            raise  # not decided yet: counted when it is asked again
        except Exception as exc:
            if metrics is not None:
                metrics.refused(outcome_of(exc), cached)
            raise
        if metrics is not None:
            metrics.accepted(cached)
        return principal

    def _verify_and_remember(
        self,
        token: str,
        digest: bytes,
        now: float,
        block: bool,
        peer_certificate: bytes | DeferBinding | None,
    ) -> Principal:
        principal, epoch = self._verify_fully(token, now, block)
        if self.revocations is not None:
            self._check_revoked(self.revocations, principal)
        _check_bound(principal, peer_certificate)
        if len(self._scope_sets) < 1024:
            self._scope_sets.setdefault(principal.claims["scope"], principal.scopes)
        if self._cache_size <= 0:
            return principal  # nothing is remembered: no entry to add or evict
        with self._lock:
            current = self.keys.epoch
            if current != self._cached_epoch:
                # a key left the set: every acceptance cached under the old set goes with it
                self._verified.clear()
                self._cached_epoch = current
            # cached only under the epoch of the set whose key checked the signature: if a key
            # left the set meanwhile, this acceptance is not remembered
            if epoch == current:
                self._verified[digest] = (principal.expires_at, epoch, principal)
                while len(self._verified) > self._cache_size:
                    self._verified.popitem(last=False)
        return principal

    @staticmethod
    def _check_revoked(revocations: RevocationCache, principal: Principal) -> None:
        revocations.check(jti=principal.jti, client_id=principal.client_id, issued_at=principal.issued_at)

    def _verify_fully(self, token: str, now: float, block: bool) -> tuple[Principal, int]:
        if not token.isascii():
            raise Refused(o.MALFORMED, "the token is not ASCII")
        header_b64, payload_b64, signature_b64 = split_compact(token)
        kid = self._headers.get(header_b64)
        known_header = kid is not None
        if kid is None:
            kid = _check_header(header_b64)

        claims = strict_json_object(b64url_decode_strict(payload_b64))
        principal = self._check_claims(claims, now)
        signature = b64url_decode_strict(signature_b64)

        found = self.keys.find(kid, block=block)
        if found is None:
            raise Refused(o.UNKNOWN_KID, "the token is signed with an unknown key")
        key, epoch = found
        if len(signature) != (key.key_size + 7) // 8:
            raise Refused(o.BAD_SIGNATURE, "the token's signature has the wrong length")
        try:
            # the signing input is the token up to its last dot (ASCII, checked above)
            key.verify(signature, token[: -len(signature_b64) - 1].encode("ascii"), _PKCS1V15, _SHA256)
        except InvalidSignature as exc:
            raise Refused(o.BAD_SIGNATURE, "the token's signature is invalid") from exc
        # the claims become read-only only now: a forged token never pays for the walk
        _set_claims(principal, _read_only(claims))
        if not known_header and len(self._headers) < 256:
            # remembered only once a signature checked, so forged tokens never fill it; one header
            # per signing key, a few at most in practice
            self._headers[header_b64] = kid
        return principal, epoch

    def _check_claims(self, claims: dict[str, Any], now: float) -> Principal:
        if claims.get("iss") != self.issuer:
            raise Refused(o.WRONG_ISSUER, "the token is from another issuer")
        aud = claims.get("aud")
        if isinstance(aud, str):
            audiences: tuple[str, ...] = (aud,)
        elif isinstance(aud, list) and aud and all(isinstance(a, str) for a in aud):
            audiences = tuple(aud)
        else:
            raise Refused(o.INVALID_CLAIMS, "the token's aud claim is missing or malformed")
        if self.audience is not ANY_AUDIENCE and self.audience not in audiences:
            raise Refused(o.WRONG_AUDIENCE, "the token is meant for another audience")
        # _number and _string, inlined: six calls less per fresh token
        exp, iat, nbf = (
            json_number(claims.get("exp")),
            json_number(claims.get("iat")),
            json_number(claims.get("nbf")),
        )
        if exp is None or iat is None or nbf is None:
            for name in ("exp", "iat", "nbf"):
                _number(claims, name)  # raises, naming the first bad one
            raise AssertionError("unreachable")  # pragma: no cover
        leeway = self.leeway
        if now >= exp + leeway:
            raise Refused(o.EXPIRED, "the token has expired")
        if nbf > now + leeway:
            raise Refused(o.NOT_YET_VALID, "the token is not valid yet")
        if iat > now + leeway:
            raise Refused(o.NOT_YET_VALID, "the token was issued in the future")
        if exp - iat > self.max_lifetime or exp < iat:
            raise Refused(o.LIFETIME_TOO_LONG, "the token's lifetime is too long")
        subject, jti, client_id = claims.get("sub"), claims.get("jti"), claims.get("client_id")
        if not (
            isinstance(subject, str)
            and subject
            and isinstance(jti, str)
            and jti
            and isinstance(client_id, str)
            and client_id
        ):
            for name in ("sub", "jti", "client_id"):
                _string(claims, name)  # raises, naming the first bad one
            raise AssertionError("unreachable")  # pragma: no cover
        scope = claims.get("scope")
        if not isinstance(scope, str):
            raise Refused(o.INVALID_CLAIMS, "the token's scope claim is missing")
        scopes = self._scope_sets.get(scope)
        if scopes is None:
            try:
                scopes = frozenset(parse_scope(scope))
            except InvalidScope as exc:
                raise Refused(o.INVALID_CLAIMS, "the token's scope claim is malformed") from exc
        thumbprint = bound_thumbprint(claims)
        return _new_principal(
            client_id=client_id,
            subject=subject,
            scopes=scopes,
            audience=audiences,
            issuer=self.issuer,
            jti=jti,
            expires_at=exp,
            issued_at=iat,
            claims=claims,  # made read-only once the signature has checked (_verify_fully)
            certificate_thumbprint=thumbprint,
        )

    def close(self) -> None:
        """Stop background key refreshes (WatchJwks) and the revocation stream. The verifier keeps
        the keys and the list it has."""
        self.keys.close()
        if self.revocations is not None:
            self.revocations.close()

    @staticmethod
    def require_scopes(principal: Principal, required: Iterable[str]) -> None:
        """RFC 6750 §3.1 insufficient_scope unless the principal holds every required scope. The
        error's ``metadata["scope"]`` names every scope required, space-separated, as RFC 6750
        §3's ``scope`` attribute does: what a token for this call must hold, not what it lacked
        and nothing of the token's own scopes."""
        required = tuple(required)
        missing = [s for s in required if s not in principal.scopes]
        if missing:
            raise InsufficientScope(
                f"the token lacks the scope {' '.join(missing)}",
                metadata={"scope": " ".join(dict.fromkeys(required))},
            )
