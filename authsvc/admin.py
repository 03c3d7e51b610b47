"""The operations an operator or the server performs on a deployment's state.

This is the layer between the pure core and a store that both the ``authsvc`` command and the
gRPC server use: opening the data directory, loading the key-encryption key, bootstrapping the
signing key and the secret-hashing pepper, and managing clients. It imports no gRPC.
"""

from __future__ import annotations

import json
import logging
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from authsvc.core.clients import DEFAULT_TOKEN_TTL, Client, new_client, validate_client_id
from authsvc.core.errors import ConfigurationError, InvalidRequest, NotFound
from authsvc.core.keys import (
    MAX_RSA_BITS,
    MIN_RSA_BITS,
    RSA_EXPONENT,
    KeyEncryptionKey,
    KeyEncryptionKeys,
    KeyState,
    PublicJwk,
    SigningKey,
    b64url,
    generate_rsa_key,
    jwks_json,
    private_key_aad,
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
from authsvc.core.secrets import SecretHasher, generate_client_secret
from authsvc.store.base import AlreadyExists, Store, StoredKey
from authsvc.store.sqlite import SQLiteStore

__all__ = ["Authority", "KeyInfo", "load_kek", "open_authority", "open_store", "uses_dev_kek"]

log = logging.getLogger("authsvc.admin")

DB_FILE = "authsvc.db"
DEV_KEK_FILE = "kek.key"
_PEPPER = "client-secret-pepper"


def open_store(data_dir: Path, database_url: str | None = None) -> Store:
    """The PostgreSQL store at ``database_url`` if one is given, else the data directory's SQLite
    store (the directory is created, mode 0700, if needed)."""
    if database_url:
        if not database_url.startswith(("postgresql://", "postgres://")):
            raise ConfigurationError("--database-url must be a postgresql:// URL")
        from authsvc.store.postgres import PostgresStore  # noqa: PLC0415 - psycopg only when asked for

        return PostgresStore(database_url)
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    return SQLiteStore(data_dir / DB_FILE)


def _kek_files(kek_file: Path | Sequence[Path] | None) -> list[Path]:
    if kek_file is None:
        return []
    return [kek_file] if isinstance(kek_file, Path) else list(kek_file)


def uses_dev_kek(*, kek: str | None, kek_file: Path | Sequence[Path] | None) -> bool:
    """True when neither a KEK nor a KEK file is given: the data dir's ``kek.key`` is the KEK."""
    return not kek and not _kek_files(kek_file)


def load_kek(*, kek: str | None, kek_file: Path | Sequence[Path] | None, data_dir: Path) -> KeyEncryptionKeys:
    """The key-encryption keys, the one that encrypts first: from their text (``AUTHSVC_KEK``,
    several separated by commas), from key files (one key each, in the order given), or, when
    neither is given, the development default: a key generated once in the data directory (mode
    0600), with a warning, because a key beside the data it protects protects little."""
    files = _kek_files(kek_file)
    if kek and files:
        raise ConfigurationError("give the key-encryption keys either as text or as files, not both")
    if kek:
        return KeyEncryptionKeys.from_text(kek)
    if files:
        keys: list[KeyEncryptionKey] = []
        for path in files:
            try:
                mode = path.stat().st_mode
                text = path.read_text()
            except OSError as exc:
                raise ConfigurationError(
                    f"cannot read the key-encryption key file {path}: {exc.strerror}"
                ) from exc
            if mode & (stat.S_IRWXG | stat.S_IRWXO):
                log.warning("key-encryption key file %s is readable by group or others; chmod 600 it", path)
            try:
                keys.append(KeyEncryptionKey.from_text(text))
            except ConfigurationError as exc:
                raise ConfigurationError(f"{path}: {exc}") from exc
        return KeyEncryptionKeys(keys)
    path = data_dir / DEV_KEK_FILE
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    else:
        with os.fdopen(fd, "w") as f:
            f.write(os.urandom(32).hex() + "\n")
            f.flush()
            os.fsync(f.fileno())
        log.warning(
            "generated a development key-encryption key at %s; in production pass AUTHSVC_KEK or --kek-file "
            "and keep the key away from the data directory",
            path,
        )
    return KeyEncryptionKeys([KeyEncryptionKey.from_text(path.read_text())])


def _write_private_file(path: Path, text: str) -> Path:
    """Write ``text`` to a fresh temporary file beside ``path`` (mode 0600, fsynced); returns it.
    The caller renames it over ``path`` (atomic) or removes it."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    return tmp


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def open_authority(
    data_dir: Path,
    *,
    kek: str | None,
    kek_file: Path | Sequence[Path] | None,
    clock: Clock,
    random: RandomSource,
    database_url: str | None = None,
) -> Authority:
    """Open the store (PostgreSQL at ``database_url``, else SQLite in ``data_dir``) with its KEKs,
    checked against what is stored."""
    store = open_store(data_dir, database_url)
    try:
        authority = Authority(
            store,
            load_kek(kek=kek, kek_file=kek_file, data_dir=data_dir),
            clock=clock,
            random=random,
            dev_kek_file=data_dir / DEV_KEK_FILE if uses_dev_kek(kek=kek, kek_file=kek_file) else None,
        )
        authority.check_kek()
    except BaseException:
        store.close()
        raise
    return authority


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


class Authority:
    """A deployment's state: its store, key-encryption keys, clock and randomness.

    ``kek`` is one key or an ordered list of them: the first encrypts everything written, any of
    them decrypts (the stored ``kek_id`` says which). ``dev_kek_file`` is the development key file
    when it is the KEK (nothing else given): :meth:`rewrap` replaces it."""

    def __init__(
        self,
        store: Store,
        kek: KeyEncryptionKey | KeyEncryptionKeys,
        *,
        clock: Clock,
        random: RandomSource,
        dev_kek_file: Path | None = None,
    ) -> None:
        self.store = store
        self.keks = kek if isinstance(kek, KeyEncryptionKeys) else KeyEncryptionKeys([kek])
        self.clock = clock
        self.random = random
        self.dev_kek_file = dev_kek_file
        self._hasher: SecretHasher | None = None

    @property
    def kek(self) -> KeyEncryptionKey:
        """The key-encryption key that encrypts what this process writes."""
        return self.keks.primary

    def check_kek(self) -> None:
        """Create the deployment's pepper on first use, and make sure every stored ciphertext is
        under one of this process's KEKs. Call once after opening: a missing KEK must fail at
        start-up, not when the first key or secret is needed. Refuses naming the kek ids only."""
        stored = [k.kek_id for k in self.store.list_keys()]
        stored += [kek_id for _, _, kek_id in self.store.list_secrets()]
        missing = self.keks.missing(stored)
        if missing:
            raise ConfigurationError(
                f"stored keys are encrypted with key-encryption key {', '.join(missing)}, "
                f"which this process was not given (it has {', '.join(self.keks.kek_ids)})"
            )
        self.hasher()

    def _now(self) -> int:
        return int(self.clock.now())

    # -- service secrets -------------------------------------------------------------------

    def hasher(self) -> SecretHasher:
        """The secret hasher, with the deployment's pepper (created on first use)."""
        if self._hasher is None:
            aad = b"authsvc service secret\x00" + _PEPPER.encode()
            fresh = self.kek.wrap(self.random.token_bytes(32), aad=aad, random=self.random)
            blob, kek_id = self.store.get_or_create_secret(_PEPPER, fresh, self.kek.kek_id)
            self._hasher = SecretHasher(self.keks.get(kek_id).unwrap(blob, aad=aad))
        return self._hasher

    # -- signing keys ----------------------------------------------------------------------

    def _stored(self, key: SigningKey, *, state: KeyState, now: int, origin: str) -> StoredKey:
        return StoredKey(
            kid=key.kid,
            state=state.value,
            public_jwk=json.dumps(key.jwk),
            private_key_enc=self.kek.wrap_private_key(key, random=self.random),
            kek_id=self.kek.kek_id,
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

    def rewrap(self, new_kek: KeyEncryptionKey | None = None) -> int:
        """Re-encrypt every private key and service secret under ``new_kek`` (default: this
        process's first KEK), in one transaction; returns how many ciphertexts changed (rows
        already under it are left alone, so an interrupted rewrap can simply be run again).

        Safe while servers run: the store reads the rows inside the transaction that rewrites
        them, serialized with every key write, so a key a server writes meanwhile (a rotation, a
        revoked key's successor) is rewrapped too or written after, and success means every row
        is under ``new_kek``. Servers given ``new_kek`` first in their list write under it; a
        server lacking it is refused further key writes (:class:`~authsvc.store.base.StaleKek`).
        With the development key file as the KEK, the file is replaced by ``new_kek`` (atomically,
        and only once the store is rewrapped: a crash between leaves the store under the new key
        the operator still holds, never under a key that is lost)."""
        target = new_kek or self.kek
        keks = self.keks.with_primary(target)
        if new_kek is None and len(self.keks) == 1:
            raise ConfigurationError(
                "give the new key-encryption key (--new-kek-file or AUTHSVC_NEW_KEK), "
                "or give the KEKs as a list with the new one first"
            )
        pending = None
        if self.dev_kek_file is not None and target.kek_id != self._dev_file_kek_id():
            pending = _write_private_file(self.dev_kek_file, target.to_text() + "\n")
        try:
            changed = self._rewrap_store(target, keks)
            if pending is not None and self.dev_kek_file is not None:
                # only now: a kek.key replaced before the rows would lock the deployment out
                os.replace(pending, self.dev_kek_file)
                pending = None
                _fsync_dir(self.dev_kek_file.parent)
                log.warning("replaced the development key-encryption key %s", self.dev_kek_file)
        finally:
            if pending is not None:
                pending.unlink(missing_ok=True)
        self.keks = keks
        return changed

    def _dev_file_kek_id(self) -> str | None:
        assert self.dev_kek_file is not None
        try:
            return KeyEncryptionKey.from_text(self.dev_kek_file.read_text()).kek_id
        except (OSError, ConfigurationError):
            return None

    def _rewrap_store(self, target: KeyEncryptionKey, keks: KeyEncryptionKeys) -> int:
        def reencrypt(kind: str, name: str, kek_id: str, blob: bytes) -> bytes:
            # AES-GCM only (no RSA parsing): this runs inside the store's key-locked transaction
            aad = private_key_aad(name) if kind == "key" else b"authsvc service secret\x00" + name.encode()
            return target.wrap(keks.get(kek_id).unwrap(blob, aad=aad), aad=aad, random=self.random)

        changed = self.store.rewrap(reencrypt, new_kek_id=target.kek_id)
        log.warning("rewrapped %d keys and secrets to KEK %s", changed, target.kek_id)
        return changed

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
        """The JWK Set of every published key (``next``, ``active``, ``retiring``)."""
        published = {KeyState.NEXT.value, KeyState.ACTIVE.value, KeyState.RETIRING.value}
        jwks: list[PublicJwk] = [
            json.loads(k.public_jwk) for k in self.store.list_keys() if k.state in published
        ]
        return jwks_json(jwks)

    # -- clients ---------------------------------------------------------------------------

    def create_client(
        self,
        *,
        client_id: str | None,
        scopes: list[str],
        audiences: list[str],
        token_ttl: int = DEFAULT_TOKEN_TTL,
    ) -> tuple[Client, str]:
        """Register a client; returns it and its secret, which is not stored and cannot be
        shown again."""
        if client_id is None:
            client_id = "client_" + b64url(self.random.token_bytes(12))
        secret = generate_client_secret(self.random)
        client = new_client(
            client_id=client_id,
            secret_hash=self.hasher().hash(secret),
            scopes=scopes,
            audiences=audiences,
            token_ttl=token_ttl,
            now=self._now(),
        )
        self.store.create_client(client)
        return client, secret

    def get_client(self, client_id: str) -> Client:
        client = self.store.get_client(validate_client_id(client_id))
        if client is None:
            raise NotFound(f"no client {client_id!r}")
        return client

    def list_clients(self) -> list[Client]:
        return self.store.list_clients()

    def set_enabled(self, client_id: str, enabled: bool) -> Client:
        """Enable or disable a client. Only that column changes, so a concurrent secret rotation
        cannot undo a disable."""
        client = self.store.update_client_fields(
            validate_client_id(client_id), {"enabled": enabled, "updated_at": self._now()}
        )
        if client is None:
            raise NotFound(f"no client {client_id!r}")
        return client

    def rotate_secret(self, client_id: str) -> tuple[Client, str]:
        """Give the client a new secret; the old one stops working at once (within the
        servers' client-cache lifetime)."""
        secret = generate_client_secret(self.random)
        client = self.store.update_client_fields(
            validate_client_id(client_id),
            {"secret_hash": self.hasher().hash(secret), "updated_at": self._now()},
        )
        if client is None:
            raise NotFound(f"no client {client_id!r}")
        return client, secret
