"""The public keys a ``private_key_jwt`` client signs its assertions with (RFC 7523 §2.2, RFC 7517).

A client registers a JWK Set (``--jwks-file``) or the URL it publishes one at (``--jwks-uri``).
Its keys are for verifying signatures only, so a set is refused at registration, and an entry is
ignored when fetched from a ``jwks_uri``, unless it is:

- RSA, with a 2048 to 8192-bit modulus and the exponent 65537 (the rule for authsvc's own keys),
  or EC on P-256 with coordinates of exactly 32 octets (RFC 7518 §6.2.1.2) on the curve;
- public only: a set with an entry carrying a private member (``d``, ``p``, ``q``, ``dp``,
  ``dq``, ``qi``, ``oth``, or a symmetric ``k``) is refused whole, at registration and when
  fetched (:class:`PrivateKeyMaterial`), since the point of the method is a key that never leaves
  the client, and a published private key can sign for anyone;
- named by a ``kid`` that no other entry of the set has, for signing (``use`` absent or ``sig``;
  ``key_ops``, if given, including ``verify``), and, if it names an ``alg``, one of
  :data:`SUPPORTED_ALGS` that fits its type.

The algorithms a client may sign with are pinned at registration (``signing_algs``, default
RS256): an assertion's ``alg`` header only selects among them and never decides on its own how the
signature is checked.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from authsvc.core.errors import InvalidRequest, InvalidToken
from authsvc.core.jose import b64url_decode_strict
from authsvc.core.keys import MAX_RSA_BITS, MIN_RSA_BITS, RSA_EXPONENT

__all__ = [
    "DEFAULT_SIGNING_ALGS",
    "MAX_JWKS_BYTES",
    "MAX_JWKS_KEYS",
    "SUPPORTED_ALGS",
    "ClientKey",
    "ClientKeySet",
    "PrivateKeyMaterial",
    "decoy_key",
    "parse_client_jwks",
    "validate_client_jwks",
    "validate_signing_algs",
    "verify_signature",
]

SUPPORTED_ALGS = ("RS256", "PS256", "ES256")
"""RFC 7518 §3.3 RSASSA-PKCS1-v1_5, §3.5 RSASSA-PSS and §3.4 ECDSA P-256, each with SHA-256."""
DEFAULT_SIGNING_ALGS = ("RS256",)
MAX_JWKS_BYTES = 64 * 1024
"""A client's JWK Set is a few keys: a larger document is refused before it is parsed."""
MAX_JWKS_KEYS = 32
_KTY = {"RS256": "RSA", "PS256": "RSA", "ES256": "EC"}
_PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})
_MAX_KID = 256
_P256_COORDINATE = 32

PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey


class PrivateKeyMaterial(ValueError):
    """A JWK Set holds private key material: refused whole, never merely the entry."""


@dataclass(frozen=True, slots=True)
class ClientKey:
    """One usable key of a client's set. ``alg`` is the JWK's own ``alg`` member, if it has one."""

    kid: str
    kty: str
    public_key: PublicKey
    alg: str | None = None

    def fits(self, alg: str) -> bool:
        """Whether this key may check a signature made with ``alg`` (a supported algorithm)."""
        return _KTY.get(alg) == self.kty and self.alg in (None, alg)


@dataclass(frozen=True, slots=True)
class ClientKeySet:
    """A client's usable keys by ``kid``."""

    keys: Mapping[str, ClientKey]

    def select(self, kid: str | None, alg: str) -> ClientKey | None:
        """The key for an assertion's ``kid`` and ``alg``; without a ``kid``, the one key of the set
        that fits ``alg``, if there is exactly one (several would leave the choice to the token)."""
        if kid is not None:
            key = self.keys.get(kid)
            return key if key is not None and key.fits(alg) else None
        fitting = [k for k in self.keys.values() if k.fits(alg)]
        return fitting[0] if len(fitting) == 1 else None


def _octets(jwk: Mapping[str, Any], name: str) -> bytes:
    value = jwk.get(name)
    if not isinstance(value, str):
        raise ValueError(f"the JWK's {name} is not a base64url string")
    try:
        return b64url_decode_strict(value)
    except InvalidToken as exc:
        raise ValueError(f"the JWK's {name} is not canonical base64url") from exc


def _uint(jwk: Mapping[str, Any], name: str) -> int:
    raw = _octets(jwk, name)
    if not raw or raw[0] == 0:
        raise ValueError(f"the JWK's {name} has leading zero octets (RFC 7518 §6.3.1)")
    return int.from_bytes(raw, "big")


def parse_client_jwk(jwk: object) -> ClientKey:
    """One entry of a client's JWK Set as a :class:`ClientKey`, or ``ValueError`` saying why not."""
    if not isinstance(jwk, dict):
        raise ValueError("a JWK is a JSON object")
    kid = jwk.get("kid")
    if not isinstance(kid, str) or not kid or len(kid) > _MAX_KID or not kid.isprintable():
        raise ValueError("every JWK needs a kid: 1 to 256 printable characters")
    shown = kid[:64]
    private = sorted(_PRIVATE_MEMBERS & jwk.keys())
    if private:
        raise PrivateKeyMaterial(
            f"the JWK {shown!r} holds private key material ({', '.join(private)}): publish public keys only"
        )
    if jwk.get("use", "sig") != "sig":
        raise ValueError(f"the JWK {shown!r} is not a signing key (use)")
    key_ops = jwk.get("key_ops")
    if key_ops is not None and (not isinstance(key_ops, list) or "verify" not in key_ops):
        raise ValueError(f"the JWK {shown!r} is not for verifying signatures (key_ops)")
    alg = jwk.get("alg")
    if alg is not None and alg not in SUPPORTED_ALGS:
        raise ValueError(
            f"the JWK {shown!r} names alg {str(alg)[:16]!r}; supported: {', '.join(SUPPORTED_ALGS)}"
        )
    kty = jwk.get("kty")
    public_key: PublicKey
    if kty == "RSA":
        e, n = _uint(jwk, "e"), _uint(jwk, "n")
        if e != RSA_EXPONENT:
            raise ValueError(f"the JWK {shown!r} has an RSA exponent other than {RSA_EXPONENT}")
        if not MIN_RSA_BITS <= n.bit_length() <= MAX_RSA_BITS:  # before a key is built from a hostile size
            raise ValueError(f"the JWK {shown!r} has a modulus outside {MIN_RSA_BITS} to {MAX_RSA_BITS} bits")
        try:
            public_key = rsa.RSAPublicNumbers(e, n).public_key()
        except ValueError as exc:
            raise ValueError(f"the JWK {shown!r} is not a valid RSA public key") from exc
    elif kty == "EC":
        if jwk.get("crv") != "P-256":
            raise ValueError(f"the JWK {shown!r} is not on the curve P-256")
        x, y = _octets(jwk, "x"), _octets(jwk, "y")
        if len(x) != _P256_COORDINATE or len(y) != _P256_COORDINATE:
            raise ValueError(f"the JWK {shown!r} has P-256 coordinates that are not 32 octets")
        try:
            public_key = ec.EllipticCurvePublicNumbers(
                int.from_bytes(x, "big"), int.from_bytes(y, "big"), ec.SECP256R1()
            ).public_key()
        except ValueError as exc:
            raise ValueError(f"the JWK {shown!r} is not a point on P-256") from exc
    else:
        raise ValueError(f"the JWK {shown!r} is neither RSA nor EC (kty)")
    if alg is not None and _KTY[alg] != kty:
        raise ValueError(f"the JWK {shown!r} names alg {alg}, which does not fit a {kty} key")
    return ClientKey(kid=kid, kty=kty, public_key=public_key, alg=alg)


def _entries(text: str) -> list[object]:
    if len(text.encode("utf-8", "surrogatepass")) > MAX_JWKS_BYTES:
        raise ValueError(f"the JWK Set is larger than {MAX_JWKS_BYTES} bytes")
    try:
        document = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise ValueError("the JWK Set is not JSON") from exc
    entries = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        raise ValueError("the JWK Set has no keys array")
    if len(entries) > MAX_JWKS_KEYS:
        raise ValueError(f"the JWK Set has more than {MAX_JWKS_KEYS} keys")
    return entries


def parse_client_jwks(text: str) -> tuple[ClientKeySet, list[str]]:
    """The usable keys of a JWK Set as fetched from a client's ``jwks_uri``, and why each other
    entry was ignored. A ``kid`` that two entries share is unusable. ``ValueError`` when the
    document is not a JWK Set at all, :class:`PrivateKeyMaterial` when any entry is private."""
    keys: dict[str, ClientKey] = {}
    shared: set[str] = set()
    problems: list[str] = []
    for entry in _entries(text):
        try:
            key = parse_client_jwk(entry)
        except PrivateKeyMaterial:
            raise
        except ValueError as exc:
            problems.append(str(exc))
            continue
        if key.kid in keys or key.kid in shared:
            shared.add(key.kid)
            keys.pop(key.kid, None)
            continue
        keys[key.kid] = key
    problems += [f"the kid {kid[:64]!r} names more than one key" for kid in sorted(shared)]
    return ClientKeySet(MappingProxyType(keys)), problems


def validate_client_jwks(text: str, signing_algs: Sequence[str]) -> str:
    """A JWK Set given at registration, checked whole (any unusable entry refuses the set), as the
    compact JSON to store. Every algorithm in ``signing_algs`` needs a key that fits it.
    :class:`InvalidRequest` saying what is wrong."""
    try:
        entries = _entries(text)
        if not entries:
            raise ValueError("the JWK Set has no keys")
        keys = [parse_client_jwk(entry) for entry in entries]
    except ValueError as exc:
        raise InvalidRequest(str(exc)) from exc
    kids = [k.kid for k in keys]
    if len(set(kids)) != len(kids):
        raise InvalidRequest("two keys of the JWK Set share a kid")
    for alg in signing_algs:
        if not any(k.fits(alg) for k in keys):
            raise InvalidRequest(f"no key of the JWK Set can verify {alg} signatures")
    return json.dumps({"keys": entries}, separators=(",", ":"), sort_keys=True)


def validate_signing_algs(algs: Sequence[str]) -> tuple[str, ...]:
    """The algorithms a client may sign its assertions with: at least one, each supported."""
    pinned = tuple(dict.fromkeys(algs))
    if not pinned:
        raise InvalidRequest("a private_key_jwt client needs at least one signing algorithm")
    unsupported = [a for a in pinned if a not in SUPPORTED_ALGS]
    if unsupported:
        raise InvalidRequest(
            f"unsupported signing algorithm {unsupported[0][:16]!r}; supported: {', '.join(SUPPORTED_ALGS)}"
        )
    return pinned


def verify_signature(key: ClientKey, alg: str, signing_input: bytes, signature: bytes) -> bool:
    """Check a JWS signature (RFC 7518 §3.3-3.5) with a key that :meth:`~ClientKey.fits` ``alg``."""
    public_key = key.public_key
    try:
        if alg == "ES256" and isinstance(public_key, ec.EllipticCurvePublicKey):
            # §3.4: R and S as two 32-octet big-endian integers, not DER
            if len(signature) != 2 * _P256_COORDINATE:
                return False
            r = int.from_bytes(signature[:_P256_COORDINATE], "big")
            s = int.from_bytes(signature[_P256_COORDINATE:], "big")
            public_key.verify(encode_dss_signature(r, s), signing_input, ec.ECDSA(hashes.SHA256()))
        elif alg == "RS256" and isinstance(public_key, rsa.RSAPublicKey):
            public_key.verify(signature, signing_input, padding.PKCS1v15(), hashes.SHA256())
        elif alg == "PS256" and isinstance(public_key, rsa.RSAPublicKey):
            # §3.5: MGF1 with SHA-256 and a salt as long as the hash
            pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)
            public_key.verify(signature, signing_input, pss, hashes.SHA256())
        else:
            return False
    except InvalidSignature:
        return False
    return True


def _decoy_rsa() -> ClientKey:
    # a fixed 2048-bit modulus nobody holds a private key for (not even a product of two known
    # primes): checking a signature against it costs what checking against a client's key costs
    n = int.from_bytes(hashlib.sha512(b"authsvc decoy client key").digest() * 4, "big") | (1 << 2047) | 1
    return ClientKey(kid="", kty="RSA", public_key=rsa.RSAPublicNumbers(RSA_EXPONENT, n).public_key())


def _decoy_ec() -> ClientKey:
    # the base point of P-256 (FIPS 186-4 D.1.2.3) as a public key: a valid point, public knowledge
    gx = 0x6B17D1F2E12C4247F8BCE6E563A440F277037D812DEB33A0F4A13945D898C296
    gy = 0x4FE342E2FE1A7F9B8EE7EB4A7C0F9E162BCE33576B315ECECBB6406837BF51F5
    key = ec.EllipticCurvePublicNumbers(gx, gy, ec.SECP256R1()).public_key()
    return ClientKey(kid="", kty="EC", public_key=key)


_DECOYS = {"RSA": _decoy_rsa(), "EC": _decoy_ec()}


def decoy_key(alg: str) -> ClientKey:
    """A key of the type ``alg`` needs, for checking an assertion of a client that does not exist
    (or is registered for another method) with the same work as a real one; its result is never
    taken as an answer."""
    return _DECOYS[_KTY.get(alg, "RSA")]
