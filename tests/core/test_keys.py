"""Signing keys: RFC 7638 thumbprints, public JWKs, size limits, encryption at rest."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from authsvc.core.errors import ConfigurationError
from authsvc.core.keys import (
    KeyEncryptionKey,
    KeyState,
    SigningKey,
    generate_rsa_key,
    jwks_json,
    key_factory,
    public_jwk,
    rfc7638_thumbprint,
)
from tests.core.fakes import CountingRandom
from tests.keypool import POOL, rsa_key

# RFC 7638 §3.1: the example RSA key and its SHA-256 thumbprint.
RFC7638_N = (
    "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3o"
    "knjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZH"
    "zu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8"
    "awapJzKnqDKgw"
)
RFC7638_E = "AQAB"
RFC7638_THUMBPRINT = "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"

KEK_BYTES = bytes([0xFB, 0xFF] * 16)  # base64 of this has '+' and '/', base64url '-' and '_'
KEK_B64URL = base64.urlsafe_b64encode(KEK_BYTES).rstrip(b"=").decode()
KEK_B64 = base64.standard_b64encode(KEK_BYTES).decode()


def _uint(text: str) -> int:
    return int.from_bytes(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)), "big")


def rfc7638_public_key() -> rsa.RSAPublicKey:
    return rsa.RSAPublicNumbers(_uint(RFC7638_E), _uint(RFC7638_N)).public_key()


@pytest.fixture(scope="module")
def signing_key() -> SigningKey:
    return SigningKey.from_private_key(generate_rsa_key(), state=KeyState.ACTIVE, created_at=0)


# -- thumbprints and JWKs ---------------------------------------------------------------------


def test_rfc7638_example_thumbprint() -> None:
    assert rfc7638_thumbprint(rfc7638_public_key()) == RFC7638_THUMBPRINT


def test_rfc7638_example_jwk() -> None:
    jwk = public_jwk(rfc7638_public_key())
    assert jwk == {
        "kty": "RSA",
        "use": "sig",
        "alg": "RS256",
        "kid": RFC7638_THUMBPRINT,
        "n": RFC7638_N,
        "e": RFC7638_E,
    }


def test_public_jwk_of_generated_key(signing_key: SigningKey) -> None:
    public = signing_key.private_key.public_key()
    jwk = public_jwk(public)
    assert set(jwk) == {"kty", "use", "alg", "kid", "n", "e"}
    assert "d" not in jwk and "p" not in jwk
    assert (jwk["kty"], jwk["use"], jwk["alg"], jwk["e"]) == ("RSA", "sig", "RS256", "AQAB")
    assert "=" not in jwk["n"]
    assert _uint(jwk["n"]) == public.public_numbers().n
    assert jwk["kid"] == rfc7638_thumbprint(public) == signing_key.kid
    assert signing_key.jwk == jwk


def test_jwks_json_is_a_key_set(signing_key: SigningKey) -> None:
    assert json.loads(jwks_json([signing_key.jwk])) == {"keys": [dict(signing_key.jwk)]}


# -- key sizes --------------------------------------------------------------------------------


@pytest.mark.parametrize("bits", [1024, 2047], ids=["1024", "2047"])
def test_generate_refuses_small_keys(bits: int) -> None:
    with pytest.raises(ValueError, match="2048"):
        generate_rsa_key(bits)


def test_signing_key_refuses_small_key() -> None:
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505 - must be refused
    with pytest.raises(ValueError, match="2048"):
        SigningKey.from_private_key(small, state=KeyState.ACTIVE, created_at=0)


# -- the key-factory seam (tests/keypool.py) ---------------------------------------------------

_FRESH_KEY_PROBE = """
from authsvc.core import keys
a, b = keys.generate_rsa_key(), keys.generate_rsa_key()
assert keys._key_factory is keys._fresh_rsa_key
assert a.key_size == 2048 and a.public_key().public_numbers().e == 65537
assert a.private_numbers() != b.private_numbers()
"""


def test_a_process_without_the_test_seam_generates_fresh_keys() -> None:
    """What the service runs: no factory swapped in, so keys come from cryptography's generator."""
    probe = subprocess.run(
        [sys.executable, "-c", _FRESH_KEY_PROBE], capture_output=True, text=True, timeout=60, check=False
    )
    assert probe.returncode == 0, probe.stderr


def test_the_key_factory_is_used_within_the_block_and_restored_after() -> None:
    given = rsa_key()
    with key_factory(lambda bits: given):
        assert generate_rsa_key() is given
    assert generate_rsa_key() is not given  # the run's pool again


def test_a_factory_making_the_wrong_key_is_refused() -> None:
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505 - must be refused
    with key_factory(lambda bits: small), pytest.raises(ValueError, match="RSA-2048"):
        generate_rsa_key()


def test_the_pool_never_hands_out_a_key_twice() -> None:
    keys = [POOL.take() for _ in range(3)] + [generate_rsa_key()]
    assert len({k.public_key().public_numbers().n for k in keys}) == 4


def test_only_the_tests_swap_the_key_factory() -> None:
    """No module of the service calls the seam: it is reachable from no flag or setting."""
    package = Path(sys.modules["authsvc"].__file__ or "").parent
    callers = [p for p in package.rglob("*.py") if "key_factory(" in p.read_text(encoding="utf-8")]
    assert callers == [package / "core" / "keys.py"]


# -- the key-encryption key -------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 16, 31, 33, 64], ids=["0", "16", "31", "33", "64"])
def test_kek_must_be_32_bytes(size: int) -> None:
    with pytest.raises(ConfigurationError):
        KeyEncryptionKey(b"k" * size)


def test_wrap_unwrap_round_trip() -> None:
    kek = KeyEncryptionKey(KEK_BYTES)
    blob = kek.wrap(b"plaintext", aad=b"row-1", random=CountingRandom())
    assert b"plaintext" not in blob
    assert len(blob) == 12 + len(b"plaintext") + 16
    assert kek.unwrap(blob, aad=b"row-1") == b"plaintext"


def test_wrap_uses_a_fresh_nonce() -> None:
    kek = KeyEncryptionKey(KEK_BYTES)
    random = CountingRandom()
    first = kek.wrap(b"same", aad=b"a", random=random)
    second = kek.wrap(b"same", aad=b"a", random=random)
    assert first[:12] != second[:12]
    assert first != second


def _flip(blob: bytes, index: int) -> bytes:
    out = bytearray(blob)
    out[index] ^= 0x01
    return bytes(out)


@pytest.mark.parametrize(
    "tamper",
    [
        lambda b: _flip(b, 0),
        lambda b: _flip(b, 12),
        lambda b: _flip(b, len(b) - 1),
        lambda b: b[:-1],
        lambda b: b + b"\x00",
        lambda b: b[:12],
        lambda b: b[:4],
        lambda b: b"",
    ],
    ids=[
        "nonce",
        "ciphertext",
        "tag",
        "truncated-tag",
        "extended",
        "nonce-only",
        "shorter-than-nonce",
        "empty",
    ],
)
def test_tampered_blob_is_refused(tamper: Callable[[bytes], bytes]) -> None:
    kek = KeyEncryptionKey(KEK_BYTES)
    blob = kek.wrap(b"a secret value", aad=b"row-1", random=CountingRandom())
    with pytest.raises(ConfigurationError):
        kek.unwrap(tamper(blob), aad=b"row-1")


def test_wrong_aad_is_refused() -> None:
    kek = KeyEncryptionKey(KEK_BYTES)
    blob = kek.wrap(b"a secret value", aad=b"row-1", random=CountingRandom())
    with pytest.raises(ConfigurationError):
        kek.unwrap(blob, aad=b"row-2")


def test_wrong_kek_is_refused() -> None:
    blob = KeyEncryptionKey(KEK_BYTES).wrap(b"a secret value", aad=b"row-1", random=CountingRandom())
    other = KeyEncryptionKey(bytes(32))
    assert other.kek_id != KeyEncryptionKey(KEK_BYTES).kek_id
    with pytest.raises(ConfigurationError):
        other.unwrap(blob, aad=b"row-1")


def test_private_key_round_trip(signing_key: SigningKey) -> None:
    kek = KeyEncryptionKey(KEK_BYTES)
    blob = kek.wrap_private_key(signing_key, random=CountingRandom())
    restored = kek.unwrap_private_key(blob, kid=signing_key.kid)
    assert restored.private_numbers() == signing_key.private_key.private_numbers()


def test_private_key_under_another_kid_is_refused(signing_key: SigningKey) -> None:
    kek = KeyEncryptionKey(KEK_BYTES)
    blob = kek.wrap_private_key(signing_key, random=CountingRandom())
    with pytest.raises(ConfigurationError):
        kek.unwrap_private_key(blob, kid=RFC7638_THUMBPRINT)


def _der(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def test_private_key_not_matching_its_kid_is_refused(signing_key: SigningKey) -> None:
    # A validly encrypted row whose key is not the one its kid names (a row swapped by someone
    # holding the KEK, or a bug): the thumbprint check catches what the AAD cannot.
    kek = KeyEncryptionKey(KEK_BYTES)
    aad = b"authsvc signing key\x00" + RFC7638_THUMBPRINT.encode()
    blob = kek.wrap(_der(signing_key.private_key), aad=aad, random=CountingRandom())
    with pytest.raises(ConfigurationError, match="key id"):
        kek.unwrap_private_key(blob, kid=RFC7638_THUMBPRINT)


def test_non_rsa_private_key_is_refused() -> None:
    kek = KeyEncryptionKey(KEK_BYTES)
    aad = b"authsvc signing key\x00" + RFC7638_THUMBPRINT.encode()
    blob = kek.wrap(_der(ec.generate_private_key(ec.SECP256R1())), aad=aad, random=CountingRandom())
    with pytest.raises(ConfigurationError, match="RSA"):
        kek.unwrap_private_key(blob, kid=RFC7638_THUMBPRINT)


# -- KEK text forms -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        KEK_BYTES.hex(),
        KEK_BYTES.hex().upper(),
        KEK_B64URL,
        KEK_B64URL + "=",
        KEK_B64,
        f"  {KEK_BYTES.hex()}\n",
        f"{KEK_B64URL}\n",
    ],
    ids=[
        "hex",
        "hex-upper",
        "base64url",
        "base64url-padded",
        "base64",
        "hex-with-whitespace",
        "base64url-newline",
    ],
)
def test_from_text_accepts(text: str) -> None:
    assert KeyEncryptionKey.from_text(text).kek_id == KeyEncryptionKey(KEK_BYTES).kek_id


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "not a key",
        KEK_BYTES.hex()[:-1],
        KEK_BYTES.hex() + "00",
        "zz" * 32,
        base64.urlsafe_b64encode(bytes(31)).decode(),
        base64.urlsafe_b64encode(bytes(33)).decode(),
        "\u00e9" * 43,
        KEK_B64URL[:20] + "!!" + KEK_B64URL[20:],
        KEK_B64URL[:20] + " " + KEK_B64URL[20:],
        KEK_B64URL + "=garbage",
    ],
    ids=[
        "empty",
        "blank",
        "words",
        "63-hex-digits",
        "66-hex-digits",
        "non-hex-64-chars",
        "31-bytes",
        "33-bytes",
        "non-ascii",
        "base64url-with-junk-chars",
        "base64url-with-inner-space",
        "base64url-with-trailing-junk",
    ],
)
def test_from_text_refuses_junk(text: str) -> None:
    with pytest.raises(ConfigurationError):
        KeyEncryptionKey.from_text(text)
