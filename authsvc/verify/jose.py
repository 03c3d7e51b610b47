"""Strict parsing of JWS compact serializations and RSA JWKs (RFC 7515, RFC 7517, RFC 7518).

Everything here refuses rather than repairs: non-canonical base64url, JSON with duplicate
members, a byte-order mark or NaN, keys that are too small or meant for something else. A token
that is merely unusual is treated as hostile, because the cost of a false refusal is a retry and
the cost of a false acceptance is a forgery.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from typing import Any

from cryptography.hazmat.primitives.asymmetric import rsa

from authsvc.core.errors import InvalidToken
from authsvc.core.keys import ALGORITHM, MAX_RSA_BITS, MIN_RSA_BITS, RSA_EXPONENT

__all__ = ["b64url_decode_strict", "parse_rsa_jwk", "split_compact", "strict_json_object"]

_B64URL = re.compile(r"[A-Za-z0-9_-]*")


# The characters that may end a canonical segment whose length leaves 4 or 2 unused bits.
_ENDS_AFTER_2_CHARS = frozenset("AQgw")
_ENDS_AFTER_3_CHARS = frozenset("AEIMQUYcgkosw048")


def b64url_decode_strict(segment: str) -> bytes:
    """Decode unpadded base64url, refusing padding, foreign characters and non-zero trailing bits
    (so that one byte string has exactly one accepted encoding)."""
    tail = len(segment) % 4
    if (
        not _B64URL.fullmatch(segment)
        or tail == 1
        or (tail == 2 and segment[-1] not in _ENDS_AFTER_2_CHARS)
        or (tail == 3 and segment[-1] not in _ENDS_AFTER_3_CHARS)
    ):
        raise InvalidToken("the token is not canonical base64url")
    try:
        return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except (binascii.Error, ValueError) as exc:
        raise InvalidToken("the token is not canonical base64url") from exc


def split_compact(token: str) -> tuple[str, str, str]:
    """RFC 7515 §7.1: exactly three segments separated by dots."""
    parts = token.split(".")
    if len(parts) != 3 or not all(parts):
        raise InvalidToken("the token is not a JWS with three non-empty segments")
    return parts[0], parts[1], parts[2]


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise InvalidToken("the token's JSON repeats a member")
        obj[key] = value
    return obj


def _no_constants(name: str) -> Any:
    raise InvalidToken("the token's JSON holds a non-finite number")


_DECODER = json.JSONDecoder(object_pairs_hook=_no_duplicates, parse_constant=_no_constants)


def strict_json_object(raw: bytes) -> dict[str, Any]:
    """RFC 7515 §5.2 and RFC 7519 §7.2: a UTF-8 JSON object, members unique (RFC 7515 §4 says
    parsers MUST either reject duplicates or take the last; we reject), no BOM, no NaN."""
    if raw.startswith(b"\xef\xbb\xbf"):
        raise InvalidToken("the token's JSON starts with a byte-order mark")
    try:
        value = _DECODER.decode(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise InvalidToken("the token's segments are not valid JSON") from exc
    if not isinstance(value, dict):
        raise InvalidToken("the token's JSON is not an object")
    return value


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
