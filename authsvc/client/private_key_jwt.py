"""Client authentication without a shared secret: ``private_key_jwt`` (RFC 7523 §2.2).

The client holds a private key that never leaves it and registered the public half with authsvc
(``authsvc clients create --auth-method private_key_jwt --jwks-file F`` or ``--jwks-uri URL``). For
every token request it signs a fresh assertion: ``iss`` = ``sub`` = the client id, ``aud`` = the
issuer identifier (draft-ietf-oauth-rfc7523bis: never the token endpoint URL), ``iat`` and a short
``exp`` (60 s by default), and a new random ``jti``, so a copied assertion is worth one request for
a minute at most, and the server refuses it twice. Header ``typ`` ``client-authentication+jwt``,
and the ``kid`` of the registered key when given (needed when the client registered several keys).

::

    from authsvc.client import ClientCredentials, PrivateKeyJwtCredentials

    key = PrivateKeyJwtCredentials.from_pem_file("shop-key.pem", issuer="https://auth.example",
                                                 kid="shop-2026-01")
    creds = ClientCredentials.for_target("auth.internal:50051", client_id="merchant-shop",
                                         private_key_jwt=key, scopes=["payments:write"])

Signing uses PyJWT; the key is loaded once and never shown by ``repr``.
"""

from __future__ import annotations

import base64
import secrets
import time
from collections.abc import Callable
from pathlib import Path

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

__all__ = ["CLIENT_ASSERTION_TYPE", "PrivateKeyJwtCredentials"]

CLIENT_ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
_ALGS = {"RSA": ("RS256", "PS256"), "EC": ("ES256",)}
_MIN_RSA_BITS = 2048
_TYP = "client-authentication+jwt"


class PrivateKeyJwtCredentials:
    """A client's private key and what it needs to sign client assertions for one issuer.

    ``issuer`` is the authorization server's issuer identifier (``authsvc serve --issuer``), the
    assertions' one audience. ``alg`` defaults to RS256 for an RSA key (PS256 may be chosen) and
    ES256 for a P-256 key; it must be one the client registered (``--signing-alg``).
    ``lifetime`` is how long each assertion is valid (seconds; the server refuses more than its
    ``--client-assertion-max-lifetime``, 300 by default). ``clock`` (wall time, seconds) and
    ``random`` (bytes) are the seams tests replace.
    """

    def __init__(
        self,
        private_key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey,
        *,
        issuer: str,
        kid: str | None = None,
        alg: str | None = None,
        lifetime: int = 60,
        clock: Callable[[], float] = time.time,
        random: Callable[[int], bytes] = secrets.token_bytes,
    ) -> None:
        if isinstance(private_key, rsa.RSAPrivateKey):
            if private_key.key_size < _MIN_RSA_BITS:
                raise ValueError(f"an RSA key for private_key_jwt needs at least {_MIN_RSA_BITS} bits")
            kty = "RSA"
        elif isinstance(private_key, ec.EllipticCurvePrivateKey) and isinstance(
            private_key.curve, ec.SECP256R1
        ):
            kty = "EC"
        else:
            raise ValueError("private_key_jwt signs with an RSA key (2048 bits or more) or an EC P-256 key")
        self.alg = alg or _ALGS[kty][0]
        if self.alg not in _ALGS[kty]:
            raise ValueError(f"a {kty} key signs with {' or '.join(_ALGS[kty])}, not {self.alg!r}")
        if not issuer:
            raise ValueError(
                "issuer is the authorization server's issuer identifier, the assertions' audience"
            )
        if not 1 <= lifetime <= 3600:
            raise ValueError("an assertion's lifetime is 1 to 3600 seconds (short: 60 by default)")
        self._key = private_key
        self.issuer = issuer
        self.kid = kid
        self.lifetime = lifetime
        self._clock = clock
        self._random = random

    @classmethod
    def from_pem_file(
        cls, path: Path | str, *, issuer: str, password: bytes | None = None, **options: object
    ) -> PrivateKeyJwtCredentials:
        """Load the private key from a PEM file (PKCS#8 or the traditional formats; ``password``
        if it is encrypted). ``options`` as for the constructor (``kid``, ``alg``, ``lifetime``)."""
        try:
            key = serialization.load_pem_private_key(Path(path).read_bytes(), password=password)
        except (TypeError, ValueError) as exc:  # keep the cause, never the file's contents
            raise ValueError(
                f"{path} is not a PEM private key this SDK can use (or its password is wrong)"
            ) from exc
        if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
            raise ValueError(f"{path} holds neither an RSA nor an EC private key")
        return cls(key, issuer=issuer, **options)  # type: ignore[arg-type]

    def assertion(self, client_id: str) -> str:
        """A fresh signed assertion for ``client_id``: a new ``jti``, ``exp`` ``lifetime`` from now."""
        now = int(self._clock())
        claims = {
            "iss": client_id,
            "sub": client_id,
            "aud": self.issuer,
            "iat": now,
            "exp": now + self.lifetime,
            "jti": base64.urlsafe_b64encode(self._random(24)).rstrip(b"=").decode("ascii"),
        }
        headers: dict[str, str] = {"typ": _TYP}
        if self.kid is not None:
            headers["kid"] = self.kid
        return jwt.encode(claims, self._key, algorithm=self.alg, headers=headers)

    def __repr__(self) -> str:
        return (
            f"PrivateKeyJwtCredentials(issuer={self.issuer!r}, kid={self.kid!r}, alg={self.alg!r}, "
            f"lifetime={self.lifetime}, private_key=<redacted>)"
        )
