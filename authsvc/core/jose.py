"""Strict parsing of JWS compact serializations (RFC 7515 §7.1) and their JSON (RFC 7519 §7.2).

Everything here refuses rather than repairs: non-canonical base64url, JSON with duplicate
members, a byte-order mark or NaN. A JWT that is merely unusual is treated as hostile, because the
cost of a false refusal is a retry and the cost of a false acceptance is a forgery. Shared by the
verifier of access tokens (:mod:`authsvc.verify`) and the token endpoint's check of client
assertions (:mod:`authsvc.core.client_assertion`); errors are :class:`InvalidToken`, which a
caller re-raises as what it means in its place.
"""

from __future__ import annotations

import binascii
import json
import math
from collections.abc import Callable
from typing import Any

from authsvc.core.errors import InvalidToken

__all__ = ["b64url_decode_strict", "json_number", "split_compact", "strict_json_object"]

# The characters that may end a canonical segment whose length leaves 4 or 2 unused bits.
_ENDS_AFTER_2_CHARS = frozenset("AQgw")
_ENDS_AFTER_3_CHARS = frozenset("AEIMQUYcgkosw048")
_TO_STANDARD = bytes.maketrans(b"-_", b"+/")
_PADDING = (b"", b"", b"==", b"=")  # by the segment's length modulo 4 (1 is refused before)


def b64url_decode_strict(segment: str) -> bytes:
    """Decode unpadded base64url, refusing padding, foreign characters and non-zero trailing bits
    (so that one byte string has exactly one accepted encoding)."""
    tail = len(segment) % 4
    if (
        not segment.isascii()
        or "+" in segment  # the standard alphabet's two characters, and padding, are not base64url
        or "/" in segment
        or "=" in segment
        or tail == 1
        or (tail == 2 and segment[-1] not in _ENDS_AFTER_2_CHARS)
        or (tail == 3 and segment[-1] not in _ENDS_AFTER_3_CHARS)
    ):
        raise InvalidToken("the token is not canonical base64url")
    # strict binascii refuses every other character outside the (translated) alphabet, whitespace
    # included: three substring scans and one C call instead of a regex and base64's Python layers
    try:
        standard = segment.encode("ascii").translate(_TO_STANDARD) + _PADDING[tail]
        return binascii.a2b_base64(standard, strict_mode=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidToken("the token is not canonical base64url") from exc


def split_compact(token: str) -> tuple[str, str, str]:
    """RFC 7515 §7.1: exactly three segments separated by dots."""
    parts = token.split(".")
    if len(parts) != 3 or not all(parts):
        raise InvalidToken("the token is not a JWS with three non-empty segments")
    return parts[0], parts[1], parts[2]


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # a dict keeps one entry per distinct key: it is shorter than the pairs exactly when a member
    # is repeated (built in C, rather than a Python loop over the members)
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise InvalidToken("the token's JSON repeats a member")
    return obj


def _no_constants(name: str) -> Any:
    raise InvalidToken("the token's JSON holds a non-finite number")


_DECODER = json.JSONDecoder(object_pairs_hook=_no_duplicates, parse_constant=_no_constants)
# the C scanner under JSONDecoder.decode, with the same hooks (typeshed does not declare it)
_SCAN: Callable[[str, int], tuple[Any, int]] = _DECODER.scan_once  # type: ignore[attr-defined]


def strict_json_object(raw: bytes) -> dict[str, Any]:
    """RFC 7515 §5.2 and RFC 7519 §7.2: a UTF-8 JSON object, members unique (RFC 7515 §4 says
    parsers MUST either reject duplicates or take the last; we reject), no BOM, no NaN."""
    if raw.startswith(b"\xef\xbb\xbf"):
        raise InvalidToken("the token's JSON starts with a byte-order mark")
    try:
        text = raw.decode("utf-8")
        # a token's JSON is one object with nothing around it: the scanner alone reads it, as
        # decode() would (same hooks), without decode()'s two whitespace matches; anything else
        # (whitespace around it, trailing data, a scan error) goes through decode() itself
        try:
            value, end = _SCAN(text, 0) if text[:1] == "{" else (None, -1)
        except StopIteration:
            end = -1
        if end != len(text):
            value = _DECODER.decode(text)
    # ValueError: JSONDecodeError, and an integer of more digits than int() converts (4300)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise InvalidToken("the token's segments are not valid JSON") from exc
    if not isinstance(value, dict):
        raise InvalidToken("the token's JSON is not an object")
    return value


def json_number(value: object) -> float | None:
    """A JSON number (a NumericDate claim, RFC 7519 §2) as a finite float; None for anything else:
    a boolean, a string, an infinite float (``1e400`` parses as one) or an integer too large for
    a float (``1`` and 400 zeros), which must be refused like any malformed claim, never raise."""
    # the exact types the JSON parser makes (bool, a subclass of int, is not a number here)
    if type(value) is float:
        return value if math.isfinite(value) else None
    if type(value) is int:
        try:
            return float(value)
        except OverflowError:
            return None
    return None
