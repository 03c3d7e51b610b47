"""``private_key_jwt``: a client authenticates with a JWT it signed with its own key (RFC 7523 §2.2,
§3; RFC 7521 §4.2), with the tightenings of draft-ietf-oauth-rfc7523bis.

A request carries ``client_assertion_type`` = :data:`CLIENT_ASSERTION_TYPE` and the JWT in
``client_assertion``, and no secret (RFC 6749 §2.3: one method per request). The
:class:`PrivateKeyJwt` handler accepts it only when every check below holds; each failure is the
same ``invalid_client`` on the wire (RFC 7521 §4.2.1) with its precise reason in the audit log:

- at most :data:`MAX_ASSERTION_LENGTH` characters, refused before it is parsed; three canonical
  base64url segments of strict JSON (:mod:`authsvc.core.jose`); header members only ``alg``,
  ``kid`` and ``typ`` (so never ``crit``, ``jku``, ``jwk``, ``x5u``, ``x5c``: the token never
  names its own key);
- ``typ`` absent, ``JWT`` or ``client-authentication+jwt`` (rfc7523bis), never ``at+jwt``, so
  that an access token is never taken for an assertion;
- ``alg`` one of the algorithms the client registered (RS256, PS256, ES256; default RS256):
  ``none``, HS256 or an algorithm the client did not pin never select how a signature is checked;
- ``iss`` and ``sub`` both the client id (§3 items 1, 2); a ``client_id`` parameter, if sent, the
  same (RFC 7521 §4.2);
- ``aud`` the issuer identifier as a single string (rfc7523bis §4: "MUST reject any JWT that does
  not contain its issuer identifier as its sole audience value"). Behind the compatibility switch
  :attr:`AssertionPolicy.accept_token_endpoint_audience` the token endpoint URL is accepted too,
  as a string or within an array, as RFC 7523 §3 item 3 allowed, since common client libraries
  send it;
- ``exp`` present (§3 item 4), not passed beyond the leeway, and at most
  :attr:`AssertionPolicy.max_lifetime` (plus the leeway) ahead; ``nbf`` and ``iat``, when present,
  not in the future beyond the leeway (§3 items 5, 6);
- the signature, by a key of the client's JWK Set (:mod:`authsvc.core.client_keys`) chosen by
  ``kid`` (or the one key fitting ``alg`` when there is no ``kid``);
- ``jti`` present and never seen before for this client while the assertion is valid (§3 item 7),
  across replicas: recorded in the store only once everything above passed, so a forgery cannot
  spend a legitimate client's ``jti``.

An unknown client, or one registered for another method, costs the same work: the assertion is
parsed and checked, and its signature verified against a decoy key, whatever fails first.
The assertion is never logged, and never part of an error's text.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from authsvc.core.client_keys import ClientKeySet
from authsvc.core.clients import Client
from authsvc.core.errors import ConfigurationError, InvalidClient, InvalidRequest, InvalidToken, with_detail
from authsvc.core.jose import b64url_decode_strict, json_number, split_compact, strict_json_object

__all__ = [
    "CLIENT_ASSERTION_TYPE",
    "DEFAULT_ASSERTION_LEEWAY",
    "DEFAULT_ASSERTION_MAX_LIFETIME",
    "MAX_ASSERTION_LENGTH",
    "AssertionPolicy",
    "AssertionReplayGuard",
    "ClientKeyLookup",
    "ClientKeysUnavailable",
    "ParsedAssertion",
    "assertion_number",
    "parse_assertion",
    "peek_subject",
]

CLIENT_ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
"""RFC 7523 §2.2: the one ``client_assertion_type`` accepted."""
MAX_ASSERTION_LENGTH = 8192
"""An assertion is a few hundred bytes to 2 KiB (RSA-4096): a longer one is refused unparsed."""
DEFAULT_ASSERTION_MAX_LIFETIME = 300
"""How far ahead an assertion's ``exp`` may be, in seconds (Authlib signs for 3600 by default:
its clients set ``expires_in`` lower, or the server is configured to allow more)."""
DEFAULT_ASSERTION_LEEWAY = 30
MAX_JTI_LENGTH = 256
HEADER_MEMBERS = frozenset({"alg", "kid", "typ"})
TYPES = frozenset({"jwt", "client-authentication+jwt"})
"""``typ`` values accepted (compared in lower case, an ``application/`` prefix ignored: RFC 7515 §4.1.9)."""
MAX_KID_LENGTH = 256


class ClientKeysUnavailable(Exception):
    """No keys of a client can be had now (its ``jwks_uri`` never answered, or published private
    key material): its assertions are refused. The message is safe to log."""


class ClientKeyLookup(Protocol):
    """Where a private_key_jwt client's keys come from: its registered JWK Set, or its
    ``jwks_uri`` fetched and cached (:class:`authsvc.authority.client_keys.ClientKeys`)."""

    def keys_for(self, client: Client, kid: str | None) -> ClientKeySet:
        """The client's usable keys; an unknown ``kid`` may refresh a fetched set (throttled).
        Raises :class:`ClientKeysUnavailable`."""
        ...


class AssertionReplayGuard(Protocol):
    """The store's record of used assertion ``jti`` values (:class:`authsvc.store.base.AssertionStore`)."""

    def use_assertion_jti(self, client_id: str, jti: str, *, expires_at: int, now: int) -> bool: ...


@dataclass(frozen=True, slots=True)
class AssertionPolicy:
    """What a client assertion must satisfy beyond its signature. ``issuer`` is the issuer
    identifier (RFC 8414), the one audience accepted; ``token_endpoint`` is accepted too only with
    ``accept_token_endpoint_audience``."""

    issuer: str
    token_endpoint: str | None = None
    accept_token_endpoint_audience: bool = False
    max_lifetime: int = DEFAULT_ASSERTION_MAX_LIFETIME
    leeway: int = DEFAULT_ASSERTION_LEEWAY

    def __post_init__(self) -> None:
        if not self.issuer:
            raise ConfigurationError("client assertions need the issuer identifier as their audience")
        if self.accept_token_endpoint_audience and not self.token_endpoint:
            raise ConfigurationError("accepting the token endpoint as an audience needs its URL")
        if not 10 <= self.max_lifetime <= 3600:
            raise ConfigurationError(
                "the longest client assertion lifetime must be between 10 and 3600 seconds"
            )
        if not 0 <= self.leeway <= 300:
            raise ConfigurationError("the client assertion leeway must be between 0 and 300 seconds")

    def audience_failure(self, aud: object) -> str | None:
        """None if ``aud`` names this authorization server as the policy allows, else the reason."""
        accepted = {self.issuer}
        if self.accept_token_endpoint_audience and self.token_endpoint:
            accepted.add(self.token_endpoint)
            if isinstance(aud, list) and aud and all(isinstance(a, str) for a in aud):
                return None if accepted & set(aud) else "wrong_audience"
        if not isinstance(aud, str):
            return "missing_aud" if aud is None else "audience_not_a_string"
        return None if aud in accepted else "wrong_audience"


@dataclass(frozen=True, slots=True)
class ParsedAssertion:
    """A client assertion split and decoded, its signature not yet checked."""

    header: dict[str, Any]
    claims: dict[str, Any]
    signing_input: bytes
    signature: bytes

    @property
    def alg(self) -> str:
        alg = self.header.get("alg")
        return alg if isinstance(alg, str) else ""

    @property
    def kid(self) -> str | None:
        kid = self.header.get("kid")
        return kid if isinstance(kid, str) else None


def parse_assertion(text: str) -> ParsedAssertion:
    """RFC 7515 §7.1 compact serialization, strictly; :class:`InvalidClient` (reason
    ``assertion_malformed``) for anything else. Longer than :data:`MAX_ASSERTION_LENGTH`:
    :class:`InvalidRequest`, before any parsing."""
    if len(text) > MAX_ASSERTION_LENGTH:
        raise InvalidRequest("client_assertion is too long")
    try:
        head, payload, signature = split_compact(text)
        header = strict_json_object(b64url_decode_strict(head))
        claims = strict_json_object(b64url_decode_strict(payload))
        raw_signature = b64url_decode_strict(signature)
    except (InvalidToken, UnicodeError) as exc:
        raise with_detail(InvalidClient("the client assertion is malformed"), "assertion_malformed") from exc
    return ParsedAssertion(header, claims, f"{head}.{payload}".encode("ascii"), raw_signature)


def peek_subject(text: str) -> str:
    """The ``sub`` of a client assertion, unverified: which client it claims to be, to look that
    client up (RFC 7523 §3: ``sub`` is the client id). Raises as :func:`parse_assertion`, and
    ``assertion_malformed`` when there is no string ``sub``."""
    sub = parse_assertion(text).claims.get("sub")
    if not isinstance(sub, str) or not sub:
        raise with_detail(InvalidClient("the client assertion is malformed"), "assertion_malformed")
    return sub


def assertion_number(value: object) -> float | None:
    """A NumericDate claim (RFC 7519 §2) as a float, or None if it is not a finite number."""
    return json_number(value)
