"""Signing-key management: the first key, rotation, import, revocation, the life cycle, and which
keys are published (the one place that decides it). Needs only the store's key interface and the
deployment's key-encryption keys."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from authsvc.core.errors import InvalidRequest, NotFound
from authsvc.core.keys import (
    MAX_RSA_BITS,
    MIN_RSA_BITS,
    PUBLISHED_STATES,
    RSA_EXPONENT,
    KeyEncryptionKeys,
    KeyState,
    PublicJwk,
    SigningKey,
    generate_rsa_key,
    jwks_json,
)
from authsvc.core.lifecycle import (
    KeyRecord,
    LifecyclePolicy,
    Transition,
    TransitionKind,
    due_transitions,
    publication_time,
)
from authsvc.core.ports import Clock, RandomSource
from authsvc.logsetup import audit
from authsvc.store.base import AlreadyExists, KeyStore, StoredKey

__all__ = ["KeyCustody", "KeyInfo", "KeyManager", "published", "published_jwks"]

log = logging.getLogger("authsvc.authority")


class KeyCustody(Protocol):
    """Who holds the key-encryption keys (the :class:`~authsvc.authority.deployment.Deployment`;
    they change when it is rewrapped)."""

    @property
    def keks(self) -> KeyEncryptionKeys: ...


def published(stored: Iterable[StoredKey]) -> list[StoredKey]:
    """The keys verifiers are shown among ``stored`` (``next``, ``active``, ``retiring``): the one
    rule for what is published, whoever publishes it."""
    return [k for k in stored if KeyState(k.state) in PUBLISHED_STATES]


def published_jwks(stored: Iterable[StoredKey]) -> str:
    """The JWK Set of the :func:`published` keys among ``stored``."""
    keys: list[PublicJwk] = [json.loads(k.public_jwk) for k in published(stored)]
    return jwks_json(keys)


@dataclass(frozen=True, slots=True)
class KeyInfo:
    """What an operator may see of a signing key (never the private part)."""

    kid: str
    state: str
    origin: str
    created_at: int
    activated_at: int | None
    deactivated_at: int | None
    retire_after: int | None
    retired_at: int | None
    revoked_at: int | None
    kek_id: str


class KeyManager:
    """The deployment's signing keys. Every write is under the custody's first KEK."""

    def __init__(self, store: KeyStore, custody: KeyCustody, *, clock: Clock, random: RandomSource) -> None:
        self.store = store
        self._custody = custody
        self.clock = clock
        self.random = random

    @property
    def keks(self) -> KeyEncryptionKeys:
        return self._custody.keks

    def _stored(self, key: SigningKey, *, state: KeyState, now: int, origin: str) -> StoredKey:
        return StoredKey(
            kid=key.kid,
            state=state.value,
            public_jwk=json.dumps(key.jwk),
            private_key_enc=self.keks.primary.wrap_private_key(key, random=self.random),
            kek_id=self.keks.primary.kek_id,
            created_at=now,
            activated_at=now if state == KeyState.ACTIVE else None,
            origin=origin,
        )

    def ensure_signing_key(self, *, bits: int = 2048) -> SigningKey:
        """The active signing key, generating the first one if the deployment has none.

        Processes starting at once may each generate a key; the store keeps exactly one.
        """
        return self._ensure_active(bits=bits)[0]

    def _ensure_active(self, *, bits: int = 2048) -> tuple[SigningKey, bool]:
        """The active key, and whether this call created it (False when it existed or another
        process's key won the race)."""
        for stored in self.store.list_keys():
            if stored.state == KeyState.ACTIVE:
                return self.load_key(stored), False
        now = publication_time(self.clock.now())
        key = SigningKey.from_private_key(
            generate_rsa_key(bits), state=KeyState.ACTIVE, created_at=now, activated_at=now
        )
        winner = self.store.activate_first_key(
            self._stored(key, state=KeyState.ACTIVE, now=now, origin="generated"), kek_ids=self.keks.kek_ids
        )
        if winner.kid == key.kid:
            log.info("generated signing key kid=%s (RSA-%d), active at once", key.kid, bits)
            return key, True
        return self.load_key(winner), False

    def load_key(self, stored: StoredKey) -> SigningKey:
        """Decrypt a stored key with the KEK its row names. Raises ConfigurationError if this
        process lacks that KEK or the ciphertext does not open."""
        private_key = self.keks.get(stored.kek_id).unwrap_private_key(stored.private_key_enc, kid=stored.kid)
        return SigningKey.from_private_key(
            private_key,
            state=KeyState(stored.state),
            created_at=stored.created_at,
            activated_at=stored.activated_at,
        )

    def list_keys(self) -> list[KeyInfo]:
        return [
            KeyInfo(
                k.kid,
                k.state,
                k.origin,
                k.created_at,
                k.activated_at,
                k.deactivated_at,
                k.retire_after,
                k.retired_at,
                k.revoked_at,
                k.kek_id,
            )
            for k in self.store.list_keys()
        ]

    def _info(self, kid: str) -> KeyInfo:
        for info in self.list_keys():
            if info.kid == kid:
                return info
        raise NotFound(f"no key {kid!r}")

    def rotate(self, *, bits: int = 2048) -> KeyInfo:
        """Generate a key in state ``next``: published now, signing once it has been published for
        the servers' publication delay."""
        now = publication_time(self.clock.now())
        key = SigningKey.from_private_key(generate_rsa_key(bits), state=KeyState.NEXT, created_at=now)
        self.store.add_key(
            self._stored(key, state=KeyState.NEXT, now=now, origin="generated"), kek_ids=self.keks.kek_ids
        )
        log.info("generated next signing key kid=%s", key.kid)
        audit("key.rotated", {"kid": key.kid, "state": "next", "origin": "generated"})
        return self._info(key.kid)

    def import_key(self, pem: bytes, *, password: bytes | None = None) -> KeyInfo:
        """Bring an operator's own RSA private key (PEM, PKCS#1 or PKCS#8), in state ``next``."""
        try:
            private_key = serialization.load_pem_private_key(pem, password=password)
        except (ValueError, TypeError) as exc:
            raise InvalidRequest("the file is not a PEM private key (or the password is wrong)") from exc
        if not isinstance(private_key, rsa.RSAPrivateKey):
            raise InvalidRequest("only RSA keys can sign RS256 tokens")
        if not MIN_RSA_BITS <= private_key.key_size <= MAX_RSA_BITS:
            raise InvalidRequest(
                f"the key has {private_key.key_size} bits; {MIN_RSA_BITS} to {MAX_RSA_BITS} are required"
            )
        if private_key.public_key().public_numbers().e != RSA_EXPONENT:
            # verifiers refuse other exponents (authsvc.verify.jose): such a key could never verify
            raise InvalidRequest(f"the key's public exponent must be {RSA_EXPONENT}")
        now = publication_time(self.clock.now())
        key = SigningKey.from_private_key(private_key, state=KeyState.NEXT, created_at=now)
        try:
            self.store.add_key(
                self._stored(key, state=KeyState.NEXT, now=now, origin="imported"), kek_ids=self.keks.kek_ids
            )
        except AlreadyExists as exc:
            raise InvalidRequest(f"key {key.kid} is known already") from exc
        log.info("imported signing key kid=%s as next", key.kid)
        audit("key.imported", {"kid": key.kid, "state": "next", "origin": "imported"})
        return self._info(key.kid)

    def revoke(self, kid: str) -> KeyInfo:
        """Unpublish a key at once (compromise): tokens it signed fail as soon as verifiers refresh
        their key set. Revoking the active key activates the oldest ``next`` key at once, or a
        freshly generated one: signing never stops, but verifiers meet a key they have not seen."""
        now = int(self.clock.now())
        before = self.store.revoke(kid, now=now)
        if before is None:
            raise NotFound(f"no published or pending key {kid!r}")
        log.warning("revoked signing key kid=%s (was %s)", kid, before.state)
        audit("key.revoked", {"kid": kid, "was": before.state}, level=logging.WARNING)
        if before.state == KeyState.ACTIVE:
            pending = sorted(
                (k for k in self.store.list_keys() if k.state == KeyState.NEXT),
                key=lambda k: (k.created_at, k.kid),
            )
            if pending and self.store.promote(pending[0].kid, now=now, retire_after=now):
                log.warning("activated next key kid=%s early, replacing the revoked key", pending[0].kid)
            else:
                self.ensure_signing_key()
        return self._info(kid)

    def apply_lifecycle(self, policy: LifecyclePolicy) -> list[Transition]:
        """Apply the transitions due now (see :mod:`authsvc.core.lifecycle`); returns those this
        process applied (another process may have applied the rest)."""
        now = self.clock.now()
        records = [
            KeyRecord(
                k.kid, KeyState(k.state), k.created_at, k.activated_at, k.deactivated_at, k.retire_after
            )
            for k in self.store.list_keys()
        ]
        applied: list[Transition] = []
        for due in due_transitions(records, now, policy):
            t = due
            stamp = int(now)
            if t.kind == TransitionKind.PROMOTE and t.kid is not None:
                done = self.store.promote(t.kid, now=stamp, retire_after=stamp + policy.retiring_for)
            elif t.kind == TransitionKind.RETIRE and t.kid is not None:
                done = self.store.retire(t.kid, now=stamp)
            elif t.kind == TransitionKind.CREATE_NEXT:
                created = publication_time(now)
                key = SigningKey.from_private_key(generate_rsa_key(), state=KeyState.NEXT, created_at=created)
                done = self.store.add_key(
                    self._stored(key, state=KeyState.NEXT, now=created, origin="generated"),
                    only_if_no_next=True,
                    kek_ids=self.keks.kek_ids,
                )
                t = Transition(t.kind, key.kid)
            else:
                active, done = self._ensure_active()
                t = Transition(t.kind, active.kid)
            if done:
                log.info("key lifecycle: %s %s", t.kind.value, t.kid or "")
                applied.append(t)
        return applied

    def jwks_json(self) -> str:
        """The JWK Set of the published keys, as stored now. Servers publish the
        :class:`~authsvc.authority.keyring.Keyring`'s copy, reloaded every tick."""
        return published_jwks(self.store.list_keys())
