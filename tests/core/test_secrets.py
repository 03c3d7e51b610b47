"""Client secrets: generation, keyed hashing and verification."""

from __future__ import annotations

import base64
import hmac

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from authsvc.core.ports import SystemRandom
from authsvc.core.secrets import SECRET_BYTES, SECRET_PREFIX, SecretHasher, generate_client_secret
from tests.core.fakes import CountingRandom

PEPPER = bytes(range(32))
HASHER = SecretHasher(PEPPER)


def _random_part(secret: str) -> bytes:
    assert secret.startswith(SECRET_PREFIX)
    body = secret[len(SECRET_PREFIX) :]
    assert "=" not in body
    return base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))


def test_generated_secret_has_prefix_and_256_random_bits() -> None:
    random = CountingRandom()
    secret = generate_client_secret(random)
    raw = _random_part(secret)
    assert len(raw) == SECRET_BYTES == 32
    assert raw == CountingRandom().token_bytes(32)  # exactly the bytes the random source gave


def test_generated_secret_is_base64url() -> None:
    body = generate_client_secret(SystemRandom())[len(SECRET_PREFIX) :]
    assert set(body) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    assert len(body) == 43


def test_two_generated_secrets_differ() -> None:
    random = SystemRandom()
    assert generate_client_secret(random) != generate_client_secret(random)


def test_hash_does_not_contain_the_secret() -> None:
    secret = generate_client_secret(CountingRandom())
    stored = HASHER.hash(secret)
    assert stored.startswith("hmac-sha256$")
    assert secret not in stored
    assert secret[len(SECRET_PREFIX) :] not in stored


@given(st.text(max_size=512))
def test_hash_verify_round_trip(secret: str) -> None:
    assert HASHER.verify(secret, HASHER.hash(secret))


@given(st.text(max_size=512), st.text(max_size=512))
def test_verify_fails_for_any_other_secret(secret: str, other: str) -> None:
    assume(secret != other)
    assert not HASHER.verify(other, HASHER.hash(secret))


@pytest.mark.parametrize(
    "secret", ["", "s3cret", "\x00unknown-client\x00"], ids=["empty", "plain", "the-dummy-secret"]
)
def test_verify_against_no_stored_hash_is_false(secret: str) -> None:
    assert HASHER.verify(secret, None) is False


@pytest.mark.parametrize(
    "stored",
    ["", "hmac-sha256$", "caf\u00e9", "plaintext-secret"],
    ids=["empty", "no-digest", "non-ascii", "junk"],
)
def test_verify_against_malformed_stored_hash_is_false(stored: str) -> None:
    assert HASHER.verify("plaintext-secret", stored) is False


@pytest.mark.parametrize("size", [0, 16, 31], ids=["empty", "16-bytes", "31-bytes"])
def test_short_pepper_is_refused(size: int) -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        SecretHasher(b"p" * size)


def test_32_byte_pepper_is_accepted() -> None:
    SecretHasher(b"p" * 32)


def test_hashes_with_different_peppers_differ() -> None:
    other = SecretHasher(bytes(range(1, 33)))
    assert HASHER.hash("same secret") != other.hash("same secret")
    assert not other.verify("same secret", HASHER.hash("same secret"))


def test_unknown_client_decoy_hash_matches_no_secret() -> None:
    """The decoy an unknown id is checked against: the shape of a stored hash, matched by none of
    the secrets an attacker might guess from the code (the old decoy was a hashed constant)."""
    hasher = HASHER
    decoy = hasher.unknown_client_hash
    assert decoy.partition("$")[0] == "hmac-sha256" and len(decoy) == len(hasher.hash("x"))
    for guess in ("", "\x00unknown-client\x00", "unknown-client", decoy):
        assert not hmac.compare_digest(hasher.hash(guess), decoy)
        assert not hasher.verify(guess, None)
