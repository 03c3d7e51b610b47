"""Strict parsing of JWS compact serializations and RSA JWKs (RFC 7515, RFC 7517, RFC 7518).

The JWS and JSON parsing is :mod:`authsvc.core.jose`'s, shared with the token endpoint's check of
client assertions; the RSA JWK rules below are the verifier's own.

Everything here refuses rather than repairs: non-canonical base64url, JSON with duplicate
members, a byte-order mark or NaN, keys that are too small or meant for something else. A token
that is merely unusual is treated as hostile, because the cost of a false refusal is a retry and
the cost of a false acceptance is a forgery.
"""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric import rsa

from authsvc.core.errors import InvalidToken
from authsvc.core.jose import b64url_decode_strict, json_number, split_compact, strict_json_object
from authsvc.core.keys import ALGORITHM, MAX_RSA_BITS, MIN_RSA_BITS, RSA_EXPONENT

__all__ = ["b64url_decode_strict", "json_number", "parse_rsa_jwk", "split_compact", "strict_json_object"]


def _uint(value: object) -> int:
    if not isinstance(value, str):
        raise ValueError("RSA parameters are base64url strings")
    raw = b64url_decode_strict(value)
    if not raw or raw[0] == 0:
        raise ValueError("RSA parameters have no leading zero octets (RFC 7518 §6.3.1)")
    return int.from_bytes(raw, "big")


def parse_rsa_jwk(jwk: object) -> tuple[str, rsa.RSAPublicKey]:
    """The ``(kid, public key)`` of an RSA signing JWK fit for RS256, or ValueError.

    Refuses other key types, ``use`` other than ``sig``, ``alg`` other than RS256, moduli below
    2048 or above 8192 bits, exponents other than 65537, and keys without a ``kid`` (tokens are
    matched to keys only by ``kid``).
    """
    if not isinstance(jwk, dict):
        raise ValueError("a JWK is a JSON object")
    kid = jwk.get("kid")
    if not isinstance(kid, str) or not kid:
        raise ValueError("the JWK has no kid")
    if jwk.get("kty") != "RSA":
        raise ValueError("the JWK is not an RSA key")
    if jwk.get("use", "sig") != "sig":
        raise ValueError("the JWK is not a signing key")
    if jwk.get("alg", ALGORITHM) != ALGORITHM:
        raise ValueError("the JWK is not for RS256")
    try:
        e, n = _uint(jwk.get("e")), _uint(jwk.get("n"))
    except InvalidToken as exc:
        raise ValueError("the JWK's parameters are not canonical base64url") from exc
    if e != RSA_EXPONENT:
        # small exponents invite signature forgeries on sloppy padding checks (Bleichenbacher 2006);
        # every key authsvc makes or imports uses F4
        raise ValueError(f"the JWK's RSA exponent is not {RSA_EXPONENT}")
    # checked on the raw modulus, before any key object is built from a hostile size
    if not MIN_RSA_BITS <= n.bit_length() <= MAX_RSA_BITS:
        raise ValueError(f"the JWK's modulus is not between {MIN_RSA_BITS} and {MAX_RSA_BITS} bits")
    try:
        public_key = rsa.RSAPublicNumbers(e, n).public_key()
    except ValueError as exc:
        raise ValueError("the JWK is not a valid RSA public key") from exc
    return kid, public_key
