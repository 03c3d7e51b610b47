"""authsvc.core.jose: strict base64url and strict JSON, checked against the straightforward
definitions they replace (``base64.urlsafe_b64decode`` behind the canonical-form checks, and a
member-by-member duplicate check) on hostile inputs: the faster forms must refuse and accept
exactly the same inputs, with the same results."""

from __future__ import annotations

import base64
import binascii
import json
import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from authsvc.core.errors import InvalidToken
from authsvc.core.jose import b64url_decode_strict, strict_json_object

_B64URL = re.compile(r"[A-Za-z0-9_-]*")


def _reference_b64url(segment: str) -> bytes:
    """Unpadded base64url, refusing padding, foreign characters and non-zero trailing bits, by
    re-encoding: a segment is canonical exactly when it is the encoding of what it decodes to."""
    if not _B64URL.fullmatch(segment) or len(segment) % 4 == 1:
        raise InvalidToken("not base64url")
    try:
        raw = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except (binascii.Error, ValueError) as exc:
        raise InvalidToken("not base64url") from exc
    if base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii") != segment:
        raise InvalidToken("not canonical")
    return raw


def _b64_outcome(decode: Any, segment: str) -> bytes | str:
    try:
        return bytes(decode(segment))
    except InvalidToken:
        return "refused"


# base64url characters mixed with what must be refused: standard-alphabet + and /, padding,
# whitespace, the JWS dot, NUL, non-ASCII digits and letters
hostile_segments = st.text(
    alphabet=st.sampled_from(
        [*"AQgwEIMBb_-09z", "+", "/", "=", " ", "\n", "\t", ".", "\x00", "\u0660", "\uff21", "é"]
    ),
    max_size=12,
) | st.text(max_size=12)


@settings(max_examples=2000)
@given(hostile_segments)
def test_b64url_agrees_with_the_reencoding_definition(segment: str) -> None:
    assert _b64_outcome(b64url_decode_strict, segment) == _b64_outcome(_reference_b64url, segment)


@given(st.binary(max_size=64))
def test_b64url_decodes_every_canonical_encoding(raw: bytes) -> None:
    assert b64url_decode_strict(base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")) == raw


@given(st.binary(min_size=1, max_size=64), st.integers(1, 3))
def test_b64url_refuses_non_zero_trailing_bits(raw: bytes, flip: int) -> None:
    segment = base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")
    if len(segment) % 4 == 0:
        return  # no unused bits to set
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    last = alphabet[(alphabet.index(segment[-1]) ^ flip) % 64]  # changes only the unused low bits
    with pytest.raises(InvalidToken):
        b64url_decode_strict(segment[:-1] + last)


def _reference_json(raw: bytes) -> dict[str, Any]:
    """Strict JSON, defined member by member: reject a repeated member, a BOM, NaN/Infinity."""

    def pairs_hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        obj: dict[str, Any] = {}
        for key, value in pairs:
            if key in obj:
                raise InvalidToken("repeated member")
            obj[key] = value
        return obj

    def no_constants(name: str) -> Any:
        raise InvalidToken("non-finite")

    if raw.startswith(b"\xef\xbb\xbf"):
        raise InvalidToken("BOM")
    try:
        value = json.loads(raw.decode("utf-8"), object_pairs_hook=pairs_hook, parse_constant=no_constants)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise InvalidToken("not JSON") from exc
    if not isinstance(value, dict):
        raise InvalidToken("not an object")
    return value


def _json_outcome(parse: Any, raw: bytes) -> Any:
    try:
        return ("ok", parse(raw))
    except InvalidToken:
        return "refused"


_keys = st.sampled_from(["a", "b", "aud", "\u00e9", "a\u0000", "A"])
_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=4) | st.sampled_from(["NaN", "1e999"]),
    lambda inner: st.lists(inner, max_size=3) | st.lists(st.tuples(_keys, inner), max_size=4),
    max_leaves=12,
)


def _render(value: Any) -> str:
    """JSON text of a value whose objects are lists of (key, value) pairs: keys may repeat."""
    if isinstance(value, list) and value and all(isinstance(v, tuple) for v in value):
        return "{" + ",".join(f"{json.dumps(k)}:{_render(v)}" for k, v in value) + "}"
    if isinstance(value, list):
        return "[" + ",".join(_render(v) for v in value) + "]"
    if value in ("NaN", "1e999"):
        return str(value)  # bare NaN and a number that overflows to infinity
    return json.dumps(value)


@given(
    st.lists(st.tuples(_keys, _values), max_size=6),
    st.sampled_from(["", "\ufeff", " ", "\n"]),
    # what follows the object: strict_json_object scans a bare object alone, and hands anything
    # with whitespace or data after it to the full decoder
    st.sampled_from(["", " ", "\n", "x", "}", "{}", ",1"]),
)
def test_strict_json_agrees_with_the_member_by_member_definition(
    members: list[tuple[str, Any]], prefix: str, suffix: str
) -> None:
    raw = (prefix + (_render(members) if members else "{}") + suffix).encode("utf-8")
    assert _json_outcome(strict_json_object, raw) == _json_outcome(_reference_json, raw)


@pytest.mark.parametrize(
    "raw",
    [
        b'{"a":1,"a":1}',
        b'{"a":1,"b":{"c":1,"c":2}}',
        b'[{"a":1,"a":2}]',
        b'{"a":NaN}',
        b'{"a":-Infinity}',
        b'\xef\xbb\xbf{"a":1}',
        b'{"a":1}{"b":2}',
        b'{"\\u0061":1,"a":2}',
        b'{"a":"\xff"}',
    ],
    ids=[
        "duplicate",
        "nested-duplicate",
        "duplicate-in-array",
        "nan",
        "infinity",
        "bom",
        "two-objects",
        "escaped-duplicate",
        "not-utf8",
    ],
)
def test_strict_json_refuses(raw: bytes) -> None:
    with pytest.raises(InvalidToken):
        strict_json_object(raw)
    assert _json_outcome(_reference_json, raw) == "refused"
