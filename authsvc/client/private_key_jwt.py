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

On the command line, the client side of the registration and a one-off assertion (for curl)::

    python -m authsvc.client.private_key_jwt jwks shop-key.pem --kid shop-2026-01 > shop-jwks.json
    python -m authsvc.client.private_key_jwt assertion shop-key.pem --client-id shop \
        --issuer https://auth.example --kid shop-2026-01
"""

from __future__ import annotations

import argparse
import base64
import json
import secrets
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

__all__ = ["CLIENT_ASSERTION_TYPE", "PrivateKeyJwtCredentials", "load_private_key", "main"]

CLIENT_ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
_ALGS = {"RSA": ("RS256", "PS256"), "EC": ("ES256",)}
_MIN_RSA_BITS = 2048
_TYP = "client-authentication+jwt"


def load_private_key(
    path: Path | str, password: bytes | None = None
) -> rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey:
    """An RSA or EC private key from a PEM file; ``ValueError`` for anything else."""
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=password)
    except (TypeError, ValueError) as exc:  # keep the cause, never the file's contents
        raise ValueError(
            f"{path} is not a PEM private key this SDK can use (or its password is wrong)"
        ) from exc
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        raise ValueError(f"{path} holds neither an RSA nor an EC private key")
    return key


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
        return cls(load_private_key(path, password), issuer=issuer, **options)  # type: ignore[arg-type]

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

    def public_jwks(self) -> str:
        """The public half as a JWK Set (RFC 7517 §5), with the ``kid``, ``use`` and ``alg``: what to
        register with ``authsvc clients create --jwks-file`` or to publish at the ``--jwks-uri``."""
        public = self._key.public_key()
        if isinstance(public, rsa.RSAPublicKey):
            jwk = json.loads(RSAAlgorithm.to_jwk(public))
        else:
            jwk = json.loads(ECAlgorithm.to_jwk(public))
        jwk.pop("key_ops", None)
        jwk.update({"use": "sig", "alg": self.alg})
        if self.kid is not None:
            jwk["kid"] = self.kid
        return json.dumps({"keys": [jwk]}, indent=2)

    def __repr__(self) -> str:
        return (
            f"PrivateKeyJwtCredentials(issuer={self.issuer!r}, kid={self.kid!r}, alg={self.alg!r}, "
            f"lifetime={self.lifetime}, private_key=<redacted>)"
        )


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m authsvc.client``: ``jwks KEY [--kid K]`` prints the public JWK Set of a PEM
    private key; ``assertion KEY --client-id ID --issuer URL`` prints one fresh client assertion."""
    parser = argparse.ArgumentParser(prog="python -m authsvc.client", allow_abbrev=False)
    sub = parser.add_subparsers(dest="command", required=True)
    jwks = sub.add_parser(
        "jwks", help="print the public JWK Set of a PEM private key, to register or publish"
    )
    assertion = sub.add_parser("assertion", help="print one fresh client assertion (RFC 7523 §2.2)")
    for p in (jwks, assertion):
        p.add_argument(
            "key", type=Path, metavar="KEY", help="PEM private key file (RSA >= 2048 bits or EC P-256)"
        )
        p.add_argument("--kid", help="the key's id in the JWK Set (needed when a client has several keys)")
        p.add_argument("--alg", choices=["RS256", "PS256", "ES256"], help="default RS256 (RSA) or ES256 (EC)")
    assertion.add_argument("--client-id", required=True)
    assertion.add_argument("--issuer", required=True, help="the authorization server's issuer identifier")
    assertion.add_argument(
        "--lifetime", type=int, default=60, help="seconds the assertion is valid (default 60)"
    )
    args = parser.parse_args(argv)
    try:
        private_key = load_private_key(args.key)
        if args.command == "jwks":
            print(PrivateKeyJwtCredentials(private_key, issuer="-", kid=args.kid, alg=args.alg).public_jwks())
        else:
            signer = PrivateKeyJwtCredentials(
                private_key, issuer=args.issuer, kid=args.kid, alg=args.alg, lifetime=args.lifetime
            )
            print(signer.assertion(args.client_id))
    except (OSError, ValueError) as exc:
        print(f"authsvc.client: error: {exc}", file=sys.stderr)
        return 1
    return 0
