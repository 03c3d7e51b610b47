"""Client keys and RFC 7523 client assertions for the tests, made with PyJWT (an implementation
independent of authsvc's own checks). Keys are generated per test session, never stored."""

from __future__ import annotations

import functools
import json
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from tests import keypool

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


@dataclass(frozen=True)
class ClientKeyPair:
    """A client's private key and its public JWK (with a ``kid``)."""

    kid: str
    private_key: PrivateKey

    @property
    def public_jwk(self) -> dict[str, Any]:
        public = self.private_key.public_key()
        if isinstance(public, rsa.RSAPublicKey):
            jwk = json.loads(RSAAlgorithm.to_jwk(public))
        else:
            jwk = json.loads(ECAlgorithm.to_jwk(public))
        jwk["kid"] = self.kid
        return dict(jwk)

    @property
    def private_jwk(self) -> dict[str, Any]:
        if isinstance(self.private_key, rsa.RSAPrivateKey):
            jwk = json.loads(RSAAlgorithm.to_jwk(self.private_key))
        else:
            jwk = json.loads(ECAlgorithm.to_jwk(self.private_key))
        jwk["kid"] = self.kid
        return dict(jwk)

    def pem(self) -> bytes:
        return self.private_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    def write_pem(self, path: Path) -> Path:
        path.write_bytes(self.pem())
        path.chmod(0o600)
        return path


@functools.cache
def _rsa(name: str, bits: int) -> rsa.RSAPrivateKey:
    if bits == keypool.BITS:
        return keypool.rsa_key()
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def rsa_key(kid: str = "rsa-1", *, bits: int = 2048) -> ClientKeyPair:
    """An RSA key pair, the same for the same ``kid`` within one test run (generation is slow)."""
    return ClientKeyPair(kid, _rsa(kid, bits))


def ec_key(kid: str = "ec-1") -> ClientKeyPair:
    return ClientKeyPair(kid, ec.generate_private_key(ec.SECP256R1()))


def jwks_json(*keys: ClientKeyPair) -> str:
    return json.dumps({"keys": [k.public_jwk for k in keys]})


def assertion(
    key: ClientKeyPair,
    *,
    client_id: str = "shop",
    audience: object = "https://auth.test",
    alg: str = "RS256",
    lifetime: int = 120,
    now: float | None = None,
    headers: Mapping[str, object] | None = None,
    drop: tuple[str, ...] = (),
    **claims: object,
) -> str:
    """A signed client assertion (RFC 7523 §3): ``iss`` = ``sub`` = ``client_id``, ``aud``, ``exp``,
    ``iat``, a fresh ``jti``; ``claims`` override, ``drop`` removes. ``headers`` adds header members
    (``kid`` is the key's unless given; None removes one)."""
    issued = int(time.time() if now is None else now)
    body: dict[str, object] = {
        "iss": client_id,
        "sub": client_id,
        "aud": audience,
        "exp": issued + lifetime,
        "iat": issued,
        "jti": uuid.uuid4().hex,
    }
    body.update(claims)
    for name in drop:
        body.pop(name, None)
    header: dict[str, Any] = {"kid": key.kid, **(headers or {})}
    if header["kid"] is None:
        del header["kid"]
    # PyJWT adds typ "JWT" unless typ is given; None makes it leave typ out
    return jwt.encode(body, key.private_key, algorithm=alg, headers=header)
