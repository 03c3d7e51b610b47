"""A deployment's wiring: its store, its key-encryption keys, its clock and randomness, and the
secret-hashing pepper. Opening one loads the KEKs and checks them against what is stored;
changing the KEK (:meth:`Deployment.rewrap`) happens here, since it touches keys and secrets
alike. Imports no transport.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Sequence
from pathlib import Path

from authsvc.core.errors import ConfigurationError
from authsvc.core.keys import KeyEncryptionKey, KeyEncryptionKeys, private_key_aad
from authsvc.core.ports import Clock, RandomSource
from authsvc.core.secrets import SecretHasher
from authsvc.store.base import Store
from authsvc.store.sqlite import SQLiteStore

__all__ = [
    "DB_FILE",
    "DEV_KEK_FILE",
    "Deployment",
    "load_kek",
    "open_deployment",
    "open_store",
    "uses_dev_kek",
]

log = logging.getLogger("authsvc.authority")

DB_FILE = "authsvc.db"
DEV_KEK_FILE = "kek.key"
_PEPPER = "client-secret-pepper"


def _secret_aad(name: str) -> bytes:
    return b"authsvc service secret\x00" + name.encode()


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


def open_deployment(
    data_dir: Path,
    *,
    kek: str | None,
    kek_file: Path | Sequence[Path] | None,
    clock: Clock,
    random: RandomSource,
    database_url: str | None = None,
) -> Deployment:
    """Open the store (PostgreSQL at ``database_url``, else SQLite in ``data_dir``) with its KEKs,
    checked against what is stored."""
    store = open_store(data_dir, database_url)
    try:
        deployment = Deployment(
            store,
            load_kek(kek=kek, kek_file=kek_file, data_dir=data_dir),
            clock=clock,
            random=random,
            dev_kek_file=data_dir / DEV_KEK_FILE if uses_dev_kek(kek=kek, kek_file=kek_file) else None,
        )
        deployment.check_kek()
    except BaseException:
        store.close()
        raise
    return deployment


class Deployment:
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

    def hasher(self) -> SecretHasher:
        """The secret hasher, with the deployment's pepper (created on first use)."""
        if self._hasher is None:
            aad = _secret_aad(_PEPPER)
            fresh = self.kek.wrap(self.random.token_bytes(32), aad=aad, random=self.random)
            blob, kek_id = self.store.get_or_create_secret(_PEPPER, fresh, self.kek.kek_id)
            self._hasher = SecretHasher(self.keks.get(kek_id).unwrap(blob, aad=aad))
        return self._hasher

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
            aad = private_key_aad(name) if kind == "key" else _secret_aad(name)
            return target.wrap(keks.get(kek_id).unwrap(blob, aad=aad), aad=aad, random=self.random)

        changed = self.store.rewrap(reencrypt, new_kek_id=target.kek_id)
        log.warning("rewrapped %d keys and secrets to KEK %s", changed, target.kek_id)
        return changed
