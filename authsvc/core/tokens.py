"""JWT access tokens in the profile of RFC 9068.

Header (RFC 9068 §2.1): ``{"alg":"RS256","kid":<RFC 7638 thumbprint>,"typ":"at+jwt"}``.
Claims (RFC 9068 §2.2): ``iss``, ``sub`` (= client_id, §2.2 for client credentials), ``aud``,
``exp``, ``iat``, ``nbf``, ``jti``, ``client_id`` and ``scope``; and ``cnf`` (RFC 8705 §3.1,
``{"x5t#S256": thumbprint}``) on a token issued over mutual TLS, bound to the client's certificate.

The JWS compact serialization (RFC 7515 §7.1) is built here directly: the header segment is
fixed per key and computed once, so issuing a token costs one JSON encoding of the claims and
one RSA signature.
"""

from __future__ import annotations

import json
from typing import NotRequired, TypedDict

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding

from authsvc.core.certs import Confirmation
from authsvc.core.keys import ALGORITHM, SigningKey, b64url

__all__ = ["ACCESS_TOKEN_TYP", "AccessTokenClaims", "TokenSigner"]

ACCESS_TOKEN_TYP = "at+jwt"  # noqa: S105 - a media type, not a secret
"""RFC 9068 §2.1: the ``typ`` header of a JWT access token."""


class AccessTokenClaims(TypedDict):
    """RFC 9068 §2.2 claims. ``aud`` is a string for one audience, a list for several."""

    iss: str
    sub: str
    aud: str | list[str]
    exp: int
    iat: int
    nbf: int
    jti: str
    client_id: str
    scope: str
    cnf: NotRequired[Confirmation]  # RFC 8705 §3.1: only on a token bound to a client certificate


# json.dumps with any argument builds a new encoder per call; one configured encoder is reused
_COMPACT_JSON = json.JSONEncoder(separators=(",", ":"), ensure_ascii=True)


class TokenSigner:
    """Signs access tokens with one key, keeping the key object and header segment loaded."""

    def __init__(self, key: SigningKey) -> None:
        self.key = key
        header = {"alg": ALGORITHM, "kid": key.kid, "typ": ACCESS_TOKEN_TYP}
        self._header_segment = b64url(json.dumps(header, separators=(",", ":")).encode("ascii"))

    def sign(self, claims: AccessTokenClaims) -> str:
        payload = b64url(_COMPACT_JSON.encode(claims).encode("ascii"))
        signing_input = f"{self._header_segment}.{payload}"
        signature = self.key.private_key.sign(
            signing_input.encode("ascii"), padding.PKCS1v15(), hashes.SHA256()
        )
        return f"{signing_input}.{b64url(signature)}"
