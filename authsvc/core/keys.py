"""Signing keys, their public JWKs (RFC 7517), key ids (RFC 7638) and encryption at rest.

Tokens are signed with RS256 (RFC 7518 §3.3) by an RSA key of at least 2048 bits. The key id is
the key's RFC 7638 JWK thumbprint, so it is derived from the public key and never chosen.

Private keys are stored only encrypted: AES-256-GCM under a key-encryption key (KEK), with the
key id as associated data so that a ciphertext cannot be swapped onto another key's row. A process
may hold several KEKs (:class:`KeyEncryptionKeys`): the first encrypts, any of them decrypts what it
wrapped, so that a deployment can move to a new KEK while it runs.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from typing import TypedDict

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from authsvc.core.errors import ConfigurationError
from authsvc.core.ports import RandomSource

__all__ = [
    "ALGORITHM",
    "MAX_RSA_BITS",
    "MIN_RSA_BITS",
    "RSA_EXPONENT",
    "KeyEncryptionKey",
    "KeyEncryptionKeys",
    "KeyFactory",
    "KeyState",
    "PublicJwk",
    "SigningKey",
    "b64url",
    "generate_rsa_key",
    "jwks_json",
    "key_factory",
    "private_key_aad",
    "public_jwk",
    "rfc7638_thumbprint",
]

ALGORITHM = "RS256"
_HEX_KEY = re.compile(r"[0-9a-fA-F]{64}")
_B64_KEY = re.compile(r"[A-Za-z0-9_-]{42}[AEIMQUYcgkosw048]=?")  # 32 bytes, canonical trailing bits
MIN_RSA_BITS = 2048
MAX_RSA_BITS = 8192
"""Larger moduli make each verification arbitrarily slow for no security gain."""
RSA_EXPONENT = 65537
"""The only public exponent signing keys may have (F4): verifiers refuse any other."""
DEFAULT_RSA_BITS = 2048


class KeyState(StrEnum):
    """Life cycle of a signing key (see :mod:`authsvc.core.lifecycle`). Only ``active`` signs;
    ``next``, ``active`` and ``retiring`` are published in the JWKS; ``retired`` and ``revoked``
    are kept for audit only."""

    NEXT = "next"
    ACTIVE = "active"
    RETIRING = "retiring"
    RETIRED = "retired"
    REVOKED = "revoked"


PUBLISHED_STATES = frozenset({KeyState.NEXT, KeyState.ACTIVE, KeyState.RETIRING})


class PublicJwk(TypedDict):
    """An RSA public key as an RFC 7517 JWK (RFC 7518 §6.3.1 members)."""

    kty: str
    use: str
    alg: str
    kid: str
    n: str
    e: str


def b64url(data: bytes) -> str:
    """Unpadded base64url (RFC 7515 §2)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _uint(value: int) -> str:
    return b64url(value.to_bytes((value.bit_length() + 7) // 8 or 1, "big"))


def rfc7638_thumbprint(public_key: rsa.RSAPublicKey) -> str:
    """The RFC 7638 §3 SHA-256 thumbprint: required members only, in lexicographic order,
    no whitespace, then base64url of the digest."""
    numbers = public_key.public_numbers()
    canonical = json.dumps(
        {"e": _uint(numbers.e), "kty": "RSA", "n": _uint(numbers.n)}, separators=(",", ":"), sort_keys=True
    )
    return b64url(hashlib.sha256(canonical.encode("ascii")).digest())


def public_jwk(public_key: rsa.RSAPublicKey) -> PublicJwk:
    """The public JWK of ``public_key``, with ``kid`` set to its thumbprint."""
    numbers = public_key.public_numbers()
    return PublicJwk(
        kty="RSA",
        use="sig",
        alg=ALGORITHM,
        kid=rfc7638_thumbprint(public_key),
        n=_uint(numbers.n),
        e=_uint(numbers.e),
    )


KeyFactory = Callable[[int], rsa.RSAPrivateKey]
"""Makes a new RSA private key of the given size (public exponent 65537), never one seen before."""


def _fresh_rsa_key(bits: int) -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=RSA_EXPONENT, key_size=bits)


_key_factory: KeyFactory = _fresh_rsa_key


def generate_rsa_key(bits: int = DEFAULT_RSA_BITS) -> rsa.RSAPrivateKey:
    """Generate an RSA signing key (public exponent 65537). Refuses fewer than 2048 bits.

    Every key the service generates comes from here: fresh from the operating system's random
    source, unless a test has put another factory in place with :func:`key_factory`.
    """
    if bits < MIN_RSA_BITS:
        raise ValueError(f"RSA signing keys need at least {MIN_RSA_BITS} bits")
    key = _key_factory(bits)
    if key.key_size != bits or key.public_key().public_numbers().e != RSA_EXPONENT:
        raise ValueError(f"the key factory made a key other than RSA-{bits} with exponent {RSA_EXPONENT}")
    return key


@contextmanager
def key_factory(factory: KeyFactory) -> Iterator[None]:
    """Within the block, :func:`generate_rsa_key` takes its keys from ``factory`` (process-wide).

    A seam for tests only: generating an RSA-2048 key costs tens to hundreds of milliseconds of
    CPU, and a test run makes hundreds, so the tests hand out keys generated once, each at most
    once (tests/keypool.py). No flag, setting or environment variable reaches this function, and
    nothing in the service calls it: a running service always generates fresh keys.
    """
    global _key_factory  # noqa: PLW0603 - the one seam; restored on exit
    previous, _key_factory = _key_factory, factory
    try:
        yield
    finally:
        _key_factory = previous


@dataclass(frozen=True, slots=True)
class SigningKey:
    """A key with its metadata. ``private_key`` is loaded once and reused for every signature."""

    kid: str
    state: KeyState
    private_key: rsa.RSAPrivateKey
    jwk: PublicJwk
    created_at: int
    activated_at: int | None = None
    retired_at: int | None = None

    @classmethod
    def from_private_key(
        cls,
        private_key: rsa.RSAPrivateKey,
        *,
        state: KeyState,
        created_at: int,
        activated_at: int | None = None,
    ) -> SigningKey:
        if not MIN_RSA_BITS <= private_key.key_size <= MAX_RSA_BITS:
            raise ValueError(f"RSA signing keys need {MIN_RSA_BITS} to {MAX_RSA_BITS} bits")
        if private_key.public_key().public_numbers().e != RSA_EXPONENT:
            raise ValueError(f"RSA signing keys need the public exponent {RSA_EXPONENT}")
        jwk = public_jwk(private_key.public_key())
        return cls(
            kid=jwk["kid"],
            state=state,
            private_key=private_key,
            jwk=jwk,
            created_at=created_at,
            activated_at=activated_at,
        )


def jwks_json(keys: list[PublicJwk]) -> str:
    """Serialize a JWK Set (RFC 7517 §5) the way an HTTP ``jwks_uri`` would serve it."""
    return json.dumps({"keys": keys}, separators=(",", ":"))


def private_key_aad(kid: str) -> bytes:
    """The associated data of a private key's ciphertext: binds it to its key id."""
    return b"authsvc signing key\x00" + kid.encode("ascii")


class KeyEncryptionKey:
    """A 256-bit key that encrypts private keys and other service secrets at rest.

    ``kek_id`` is a short fingerprint stored beside every ciphertext, so that a service started
    with the wrong KEK says so clearly instead of failing with an opaque decryption error.
    """

    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise ConfigurationError("the key-encryption key must be exactly 32 bytes")
        self._aead = AESGCM(key)
        self._key = key
        self.kek_id = b64url(hashlib.sha256(b"authsvc kek id\x00" + key).digest()[:12])

    @classmethod
    def from_text(cls, text: str) -> KeyEncryptionKey:
        """Parse a KEK given as 64 hex digits or as base64url/base64 of 32 bytes."""
        text = text.strip()
        if _HEX_KEY.fullmatch(text):
            return cls(bytes.fromhex(text))
        normalized = text.replace("+", "-").replace("/", "_")
        if not _B64_KEY.fullmatch(normalized):
            raise ConfigurationError("the key-encryption key is neither 64 hex digits nor base64 of 32 bytes")
        return cls(base64.urlsafe_b64decode(normalized.rstrip("=") + "="))

    def to_text(self) -> str:
        """The key as 64 hex digits, the form :meth:`from_text` reads. Only for writing a key
        file (the development ``kek.key``): never log or show it."""
        return self._key.hex()

    def __repr__(self) -> str:
        return f"KeyEncryptionKey(kek_id={self.kek_id!r})"

    def wrap(self, plaintext: bytes, *, aad: bytes, random: RandomSource) -> bytes:
        """Encrypt ``plaintext``; the result is ``nonce || ciphertext || tag``."""
        nonce = random.token_bytes(12)
        return nonce + self._aead.encrypt(nonce, plaintext, aad)

    def unwrap(self, blob: bytes, *, aad: bytes) -> bytes:
        """Decrypt what :meth:`wrap` produced. Raises :class:`ConfigurationError` on tampering or
        a wrong KEK."""
        if len(blob) < 12 + 16:
            raise ConfigurationError("a stored key is truncated")
        try:
            return self._aead.decrypt(blob[:12], blob[12:], aad)
        except InvalidTag as exc:
            raise ConfigurationError(
                "a stored key could not be decrypted with this key-encryption key"
            ) from exc

    def wrap_private_key(self, key: SigningKey, *, random: RandomSource) -> bytes:
        der = key.private_key.private_bytes(
            serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        return self.wrap(der, aad=private_key_aad(key.kid), random=random)

    def unwrap_private_key(self, blob: bytes, *, kid: str) -> rsa.RSAPrivateKey:
        der = self.unwrap(blob, aad=private_key_aad(kid))
        # The DER opened under the AEAD tag, bound to its kid: these are the bytes this service
        # wrote after making the key (cryptography's generator) or importing it (keys import loads
        # it with full validation). Validating the RSA private key again (~40 ms, the bulk of a
        # server's start-up) proves nothing more; a forged or altered blob never gets here.
        private_key = serialization.load_der_private_key(der, password=None, unsafe_skip_rsa_key_validation=True)
        if not isinstance(private_key, rsa.RSAPrivateKey):
            raise ConfigurationError("a stored signing key is not an RSA key")
        if rfc7638_thumbprint(private_key.public_key()) != kid:
            raise ConfigurationError("a stored signing key does not match its key id")
        return private_key


_ORDINALS = ("first", "second", "third", "fourth", "fifth")


class KeyEncryptionKeys:
    """An ordered list of key-encryption keys: the first wraps everything written from now on,
    and each stored ciphertext is unwrapped by the key whose ``kek_id`` it records.

    This is what makes a KEK change possible on a live deployment: processes given ``new, old``
    read rows under either and write only under ``new``, so a rewrap to ``new`` can finish while
    they keep rotating keys, and ``old`` can then be dropped.
    """

    def __init__(self, keys: Sequence[KeyEncryptionKey]) -> None:
        if not keys:
            raise ConfigurationError("at least one key-encryption key is needed")
        by_id: dict[str, KeyEncryptionKey] = {}
        for key in keys:
            if key.kek_id in by_id:
                raise ConfigurationError(f"key-encryption key {key.kek_id} is given twice")
            by_id[key.kek_id] = key
        self._keys = tuple(keys)
        self._by_id = by_id

    @classmethod
    def from_text(cls, text: str) -> KeyEncryptionKeys:
        """Parse one or more KEKs separated by commas (each as :meth:`KeyEncryptionKey.from_text`
        reads it), the one that encrypts first. Errors name the position, never the text."""
        parts = text.split(",")
        keys: list[KeyEncryptionKey] = []
        for i, part in enumerate(parts):
            try:
                keys.append(KeyEncryptionKey.from_text(part))
            except ConfigurationError as exc:
                if len(parts) == 1:
                    raise
                where = _ORDINALS[i] if i < len(_ORDINALS) else f"number {i + 1}"
                raise ConfigurationError(f"the {where} key-encryption key in the list: {exc}") from exc
        return cls(keys)

    @property
    def primary(self) -> KeyEncryptionKey:
        """The key that encrypts."""
        return self._keys[0]

    @property
    def kek_ids(self) -> tuple[str, ...]:
        return tuple(k.kek_id for k in self._keys)

    def __iter__(self) -> Iterator[KeyEncryptionKey]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def find(self, kek_id: str) -> KeyEncryptionKey | None:
        return self._by_id.get(kek_id)

    def get(self, kek_id: str) -> KeyEncryptionKey:
        """The key with this id; a :class:`ConfigurationError` naming the ids (never key
        material) if this process was not given it."""
        key = self._by_id.get(kek_id)
        if key is None:
            raise ConfigurationError(
                f"a stored key was encrypted with key-encryption key {kek_id}, "
                f"but this process was given {', '.join(self.kek_ids)}"
            )
        return key

    def missing(self, kek_ids: Iterable[str]) -> list[str]:
        """The ids among ``kek_ids`` that no key of this list has, sorted, each once."""
        return sorted({i for i in kek_ids if i not in self._by_id})

    def with_primary(self, key: KeyEncryptionKey) -> KeyEncryptionKeys:
        """This list with ``key`` first (moved there if it is in the list already)."""
        return KeyEncryptionKeys([key, *(k for k in self._keys if k.kek_id != key.kek_id)])
