"""Persistence behind narrow interfaces: SQLite (the default), in-memory (tests, embedding)."""

from authsvc.store.base import AlreadyExists, ClientStore, KeyStore, SecretStore, Store, StoredKey, StoreError
from authsvc.store.cache import CachedClientLookup
from authsvc.store.memory import MemoryStore
from authsvc.store.sqlite import SQLiteStore

__all__ = [
    "AlreadyExists",
    "CachedClientLookup",
    "ClientStore",
    "KeyStore",
    "MemoryStore",
    "SQLiteStore",
    "SecretStore",
    "Store",
    "StoreError",
    "StoredKey",
]
