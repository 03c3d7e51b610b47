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
from dataclasses import dataclass
from pathlib import Path

from authsvc.core.clients import DEFAULT_TOKEN_TTL, Client, new_client, validate_client_id
from authsvc.core.errors import ConfigurationError, NotFound
from authsvc.core.keys import (
    KeyEncryptionKey,
    KeyState,
    PublicJwk,
    SigningKey,
    b64url,
    generate_rsa_key,
    jwks_json,
)
from authsvc.core.ports import Clock, RandomSource
from authsvc.core.secrets import SecretHasher, generate_client_secret
from authsvc.store.base import Store, StoredKey
from authsvc.store.sqlite import SQLiteStore

__all__ = ["Authority", "KeyInfo", "load_kek", "open_authority", "open_store"]

log = logging.getLogger("authsvc.admin")

DB_FILE = "authsvc.db"
DEV_KEK_FILE = "kek.key"
_PEPPER = "client-secret-pepper"


def open_store(data_dir: Path) -> SQLiteStore:
    """Open (creating if needed, mode 0700) the data directory's SQLite store."""
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    return SQLiteStore(data_dir / DB_FILE)


def load_kek(*, kek: str | None, kek_file: Path | None, data_dir: Path) -> KeyEncryptionKey:
    """The key-encryption key from its text (``AUTHSVC_KEK``), a key file, or, when neither is
    given, the development default: a key generated once in the data directory (mode 0600),
    with a warning, because a key beside the data it protects protects little."""
    if kek and kek_file:
        raise ConfigurationError("give the key-encryption key either as text or as a file, not both")
    if kek:
        return KeyEncryptionKey.from_text(kek)
    if kek_file is not None:
        try:
            mode = kek_file.stat().st_mode
            text = kek_file.read_text()
        except OSError as exc:
            raise ConfigurationError(
                f"cannot read the key-encryption key file {kek_file}: {exc.strerror}"
            ) from exc
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            log.warning("key-encryption key file %s is readable by group or others; chmod 600 it", kek_file)
        return KeyEncryptionKey.from_text(text)
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
    return KeyEncryptionKey.from_text(path.read_text())


def open_authority(
    data_dir: Path, *, kek: str | None, kek_file: Path | None, clock: Clock, random: RandomSource
) -> Authority:
    """Open the data directory's store with its KEK, checked against what is stored."""
    store = open_store(data_dir)
    try:
        authority = Authority(
            store, load_kek(kek=kek, kek_file=kek_file, data_dir=data_dir), clock=clock, random=random
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
    created_at: int
    activated_at: int | None
    retired_at: int | None
    kek_id: str


class Authority:
    """A deployment's state: its store, key-encryption key, clock and randomness."""

    def __init__(self, store: Store, kek: KeyEncryptionKey, *, clock: Clock, random: RandomSource) -> None:
        self.store = store
        self.kek = kek
        self.clock = clock
        self.random = random
        self._hasher: SecretHasher | None = None

    def check_kek(self) -> None:
        """Create the deployment's pepper on first use, and make sure this process's KEK is the
        one everything stored was encrypted with. Call once after opening: a wrong KEK must fail
        at start-up, not when the first key or secret is needed."""
        self.hasher()
        for stored in self.store.list_keys():
            self._check_kek(stored.kek_id)

    def _now(self) -> int:
        return int(self.clock.now())

    # -- service secrets -------------------------------------------------------------------

    def hasher(self) -> SecretHasher:
        """The secret hasher, with the deployment's pepper (created on first use)."""
        if self._hasher is None:
            aad = b"authsvc service secret\x00" + _PEPPER.encode()
            fresh = self.kek.wrap(self.random.token_bytes(32), aad=aad, random=self.random)
            blob, kek_id = self.store.get_or_create_secret(_PEPPER, fresh, self.kek.kek_id)
            self._check_kek(kek_id)
            self._hasher = SecretHasher(self.kek.unwrap(blob, aad=aad))
        return self._hasher

    def _check_kek(self, kek_id: str) -> None:
        if kek_id != self.kek.kek_id:
            raise ConfigurationError(
                f"the stored keys were encrypted with key-encryption key {kek_id}, "
                f"but this process was given {self.kek.kek_id}"
            )

    # -- signing keys ----------------------------------------------------------------------

    def ensure_signing_key(self, *, bits: int = 2048) -> SigningKey:
        """The active signing key, generating the first one if the deployment has none.

        Processes starting at once may each generate a key; the store keeps exactly one.
        """
        for stored in self.store.list_keys():
            if stored.state == KeyState.ACTIVE:
                return self._load(stored)
        private_key = generate_rsa_key(bits)
        now = self._now()
        key = SigningKey.from_private_key(
            private_key, state=KeyState.ACTIVE, created_at=now, activated_at=now
        )
        stored = StoredKey(
            kid=key.kid,
            state=KeyState.ACTIVE.value,
            public_jwk=json.dumps(key.jwk),
            private_key_enc=self.kek.wrap_private_key(key, random=self.random),
            kek_id=self.kek.kek_id,
            created_at=now,
            activated_at=now,
        )
        winner = self.store.activate_first_key(stored)
        if winner.kid == key.kid:
            log.info("generated signing key kid=%s (RSA-%d)", key.kid, bits)
            return key
        return self._load(winner)

    def _load(self, stored: StoredKey) -> SigningKey:
        self._check_kek(stored.kek_id)
        private_key = self.kek.unwrap_private_key(stored.private_key_enc, kid=stored.kid)
        return SigningKey.from_private_key(
            private_key,
            state=KeyState(stored.state),
            created_at=stored.created_at,
            activated_at=stored.activated_at,
        )

    def list_keys(self) -> list[KeyInfo]:
        return [
            KeyInfo(k.kid, k.state, k.created_at, k.activated_at, k.retired_at, k.kek_id)
            for k in self.store.list_keys()
        ]

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
        client = self.get_client(client_id).with_changes(enabled=enabled, updated_at=self._now())
        if not self.store.update_client(client):
            raise NotFound(f"no client {client_id!r}")
        return client

    def rotate_secret(self, client_id: str) -> tuple[Client, str]:
        """Give the client a new secret; the old one stops working at once (within the
        servers' client-cache lifetime)."""
        secret = generate_client_secret(self.random)
        client = self.get_client(client_id).with_changes(
            secret_hash=self.hasher().hash(secret), updated_at=self._now()
        )
        if not self.store.update_client(client):
            raise NotFound(f"no client {client_id!r}")
        return client, secret
