"""The narrow interfaces every store implements (SQLite, in-memory, later PostgreSQL).

Stores persist values and enforce uniqueness; they know nothing of OAuth or cryptography.
Private keys and the secret-hashing pepper reach a store only as ciphertext.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Protocol

from authsvc.core.clients import Client
from authsvc.core.errors import TemporarilyUnavailable
from authsvc.core.revocation import Revocation

__all__ = [
    "UPDATABLE_CLIENT_FIELDS",
    "AlreadyExists",
    "AssertionStore",
    "ClientStore",
    "KeyStore",
    "Reencrypt",
    "RevocationStore",
    "SecretStore",
    "StaleKek",
    "Store",
    "StoreError",
    "StoreUnavailable",
    "StoredKey",
]


Reencrypt = Callable[[str, str, str, bytes], bytes]
"""``(kind, name, kek_id, ciphertext) -> ciphertext`` under the new KEK (see ``KeyStore.rewrap``)."""


class StoreError(Exception):
    """Base of the errors a store raises."""


class StoreUnavailable(StoreError, TemporarilyUnavailable):
    """The database cannot be reached now; the request may be retried (UNAVAILABLE)."""

    def __init__(self, description: str) -> None:
        TemporarilyUnavailable.__init__(self, description)


class AlreadyExists(StoreError):
    """A row with this identity exists already."""


class StaleKek(StoreError):
    """A write was refused because the store holds ciphertexts under a key-encryption key the
    writer was not given: the deployment was rewrapped to a KEK this process lacks, and a key it
    wrote now would be under a KEK the operator is about to drop."""


@dataclass(frozen=True, slots=True)
class StoredKey:
    """A signing key as persisted: public JWK in JSON, private key encrypted under ``kek_id``."""

    kid: str
    state: str
    public_jwk: str
    private_key_enc: bytes
    kek_id: str
    created_at: int
    activated_at: int | None = None
    retired_at: int | None = None
    deactivated_at: int | None = None
    retire_after: int | None = None
    revoked_at: int | None = None
    origin: str = "generated"


class ClientStore(Protocol):
    def get_client(self, client_id: str) -> Client | None: ...

    def list_clients(self) -> list[Client]: ...

    def create_client(self, client: Client) -> None:
        """Insert; raises :class:`AlreadyExists` if the id is taken."""

    def update_client(self, client: Client) -> bool:
        """Replace the row with the same id; returns False if there is none."""

    def update_client_fields(
        self,
        client_id: str,
        fields: Mapping[str, object],
        *,
        expect: Mapping[str, object] | None = None,
    ) -> Client | None:
        """Change only these columns (:data:`UPDATABLE_CLIENT_FIELDS`) in one transaction and
        return the client as stored, or None if there is none. Concurrent updates of different
        columns do not undo each other.

        With ``expect`` (column → value, None meaning NULL), a compare-and-set: the row changes
        only if those columns hold those values, else nothing changes and None is returned (a
        secret rotation racing another one: the caller re-reads to tell which case it was)."""


class KeyStore(Protocol):
    """Signing keys. Every state change is a compare-and-set on the key's current state, applied
    atomically, so that several processes running the life cycle at once agree; the schema also
    refuses a second ``active`` key."""

    def list_keys(self) -> list[StoredKey]: ...

    def activate_first_key(self, key: StoredKey, *, kek_ids: Collection[str] | None = None) -> StoredKey:
        """Insert ``key`` (state ``active``) unless an active key exists; return the active key.
        Atomic, so that processes starting at once agree on one key. With ``kek_ids`` (the KEKs
        the writer holds), raise :class:`StaleKek` and insert nothing if any stored ciphertext is
        under another KEK."""

    def add_key(
        self, key: StoredKey, *, only_if_no_next: bool = False, kek_ids: Collection[str] | None = None
    ) -> bool:
        """Insert ``key`` as it is (usually state ``next``). With ``only_if_no_next``, insert
        nothing and return False when a ``next`` key exists already (automatic rotation by several
        processes at once). ``kek_ids`` as for :meth:`activate_first_key`."""

    def promote(self, kid: str, *, now: int, retire_after: int) -> bool:
        """``kid`` next → active and the active key (if any) → retiring, in one transaction.
        False, changing nothing, if ``kid`` is not in state next."""

    def retire(self, kid: str, *, now: int) -> bool:
        """retiring → retired; False if the key is not retiring."""

    def revoke(self, kid: str, *, now: int) -> StoredKey | None:
        """Any state but retired/revoked → revoked (unpublished at once). Returns the key as it
        was, or None if there is no such revocable key."""

    def rewrap(self, reencrypt: Reencrypt, *, new_kek_id: str) -> int:
        """Replace the ciphertext of every signing key and service secret not under
        ``new_kek_id`` by ``reencrypt(kind, name, kek_id, ciphertext)`` (``kind`` is ``"key"``,
        with the kid as name, or ``"secret"``), in one transaction serialized with every key
        change; returns how many rows changed.

        The rows are read inside that transaction, so a key another process writes meanwhile is
        either seen and re-encrypted, or written after the commit: success means every row is
        under ``new_kek_id``. If ``reencrypt`` raises, nothing changes."""

    def list_secrets(self) -> list[tuple[str, bytes, str]]:
        """(name, ciphertext, kek_id) of every service secret."""


class SecretStore(Protocol):
    def get_or_create_secret(self, name: str, value_enc: bytes, kek_id: str) -> tuple[bytes, str]:
        """Return the encrypted service secret ``name`` and its KEK id, storing the given one
        first if there is none. Atomic."""


class RevocationStore(Protocol):
    """The revocation list (:mod:`authsvc.core.revocation`), shared by every replica of a
    deployment. Each entry gets a sequence number, assigned in commit order and never reused, even
    after its entry is purged: a verifier that has seen up to N asks for what came after N."""

    def add_revocation(self, entry: Revocation, *, now: int) -> int:
        """Store ``entry`` and return its sequence (greater than every sequence before it). In the
        same transaction, delete the entries with ``expires_at <= now``, so the table stays
        bounded by what can still be refused."""

    def revocations_after(self, sequence: int) -> list[tuple[int, Revocation]]:
        """The stored entries with a sequence greater than ``sequence``, in sequence order."""

    def revocation_snapshot(self, now: int) -> tuple[int, list[Revocation]]:
        """The highest sequence ever assigned (0 if none) and the unexpired entries, read
        consistently: every entry up to that sequence that is still stored is among them, and
        none after it."""

    def oldest_revocation_sequence(self) -> int:
        """The lowest sequence still stored, 0 if none. A verifier resuming from before it may
        have missed purged entries and must take a fresh snapshot."""


class AssertionStore(Protocol):
    """The ``jti`` of every client assertion accepted (RFC 7523 §3: "the authorization server
    ... MAY ensure that JWTs are not replayed by maintaining the set of used jti values for the
    length of time for which the JWT would be considered valid"), shared by every replica."""

    def use_assertion_jti(self, client_id: str, jti: str, *, expires_at: int, now: int) -> bool:
        """Record that ``client_id`` used the assertion ``jti``, valid until ``expires_at``; False,
        recording nothing, if an entry for it exists that has not expired (a replay). Atomic across
        every process sharing the store: of two requests with one jti, one gets True. Entries with
        ``expires_at <= now`` are deleted now and then."""


UPDATABLE_CLIENT_FIELDS = frozenset(
    {"enabled", "secret_hash", "updated_at", "previous_secret_hash", "previous_secret_expires_at"}
    | {"jwks", "jwks_uri", "signing_algs"}  # a private_key_jwt client's keys (clients set-keys)
)
"""The columns :meth:`ClientStore.update_client_fields` may change (or compare)."""


class Store(ClientStore, KeyStore, SecretStore, RevocationStore, AssertionStore, Protocol):
    def close(self) -> None: ...
