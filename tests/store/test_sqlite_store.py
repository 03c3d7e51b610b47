"""What only the SQLite store promises: WAL, migrations, durability, cross-instance atomicity."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest

from authsvc.core.keys import KeyState
from authsvc.store.base import StoredKey, StoreError
from authsvc.store.migrations import MIGRATIONS, SCHEMA_VERSION
from authsvc.store.sqlite import SQLiteStore
from tests.store.contract import make_client, make_key

THREADS = 8


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "authsvc.db"


@pytest.fixture
def store(db_path: Path) -> Iterator[SQLiteStore]:
    s = SQLiteStore(db_path)
    try:
        yield s
    finally:
        s.close()


def _query(path: Path, sql: str) -> list[tuple[object, ...]]:
    with closing(sqlite3.connect(path)) as conn:
        return list(conn.execute(sql).fetchall())


def test_wal_journal_mode_is_on(store: SQLiteStore, db_path: Path) -> None:
    assert _query(db_path, "PRAGMA journal_mode") == [("wal",)]


def test_migrations_record_every_version_once(store: SQLiteStore, db_path: Path) -> None:
    assert store.schema_version() == SCHEMA_VERSION
    rows = _query(db_path, "SELECT version, applied_at FROM schema_migrations ORDER BY version")
    assert [r[0] for r in rows] == [v for v, _ in MIGRATIONS]
    assert all(isinstance(r[1], int) for r in rows)


def test_reopening_does_not_reapply_migrations(db_path: Path) -> None:
    SQLiteStore(db_path).close()
    before = _query(db_path, "SELECT version, applied_at FROM schema_migrations")
    reopened = SQLiteStore(db_path)  # would fail with "table clients already exists" if re-applied
    try:
        assert reopened.schema_version() == SCHEMA_VERSION
    finally:
        reopened.close()
    assert _query(db_path, "SELECT version, applied_at FROM schema_migrations") == before


def test_newer_schema_is_refused(db_path: Path) -> None:
    with closing(sqlite3.connect(db_path)) as conn:
        conn.execute("CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, applied_at BIGINT)")
        conn.execute("INSERT INTO schema_migrations VALUES (999, 0)")
        conn.commit()
    with pytest.raises(StoreError, match="999"):
        SQLiteStore(db_path)
    # Nothing was applied on top of the newer schema.
    assert _query(db_path, "SELECT name FROM sqlite_master WHERE name = 'clients'") == []


def test_data_survives_close_and_reopen(db_path: Path) -> None:
    client = make_client()
    key = make_key("kid-1")
    first = SQLiteStore(db_path)
    first.create_client(client)
    first.activate_first_key(key)
    first.get_or_create_secret("pepper", b"\x00\xffblob", "kek-1")
    first.close()

    second = SQLiteStore(db_path)
    try:
        assert second.get_client("shop") == client
        assert second.list_keys() == [key]
        assert second.get_or_create_secret("pepper", b"other", "kek-2") == (b"\x00\xffblob", "kek-1")
    finally:
        second.close()


def test_two_instances_see_each_others_writes(db_path: Path) -> None:
    a, b = SQLiteStore(db_path), SQLiteStore(db_path)
    try:
        a.create_client(make_client())
        assert b.get_client("shop") == make_client()
        assert b.update_client(make_client().with_changes(enabled=False))
        found = a.get_client("shop")
        assert found is not None and found.enabled is False
    finally:
        a.close()
        b.close()


def _race(stores: list[SQLiteStore], keys: list[StoredKey]) -> list[StoredKey]:
    barrier = threading.Barrier(len(stores))
    winners: list[StoredKey | None] = [None] * len(stores)
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            barrier.wait(timeout=10)
            winners[i] = stores[i].activate_first_key(keys[i])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(stores))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert errors == []
    assert all(w is not None for w in winners)
    return [w for w in winners if w is not None]


def test_concurrent_activate_first_key_leaves_one_active_key(db_path: Path) -> None:
    stores = [SQLiteStore(db_path) for _ in range(THREADS)]
    try:
        keys = [make_key(f"kid-{i}", created_at=i) for i in range(THREADS)]
        winners = _race(stores, keys)
        assert len({w.kid for w in winners}) == 1
        stored = stores[0].list_keys()
        assert len(stored) == 1
        assert stored[0].state == KeyState.ACTIVE.value
        assert stored[0].kid == winners[0].kid
    finally:
        for s in stores:
            s.close()


def test_concurrent_first_open_migrates_once(db_path: Path) -> None:
    # Several processes starting at once on a fresh data directory: each migration runs once.
    barrier = threading.Barrier(THREADS)
    opened: list[SQLiteStore] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def run() -> None:
        try:
            barrier.wait(timeout=10)
            s = SQLiteStore(db_path)
            with lock:
                opened.append(s)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    try:
        assert errors == []
        assert len(opened) == THREADS
        assert _query(db_path, "SELECT version FROM schema_migrations ORDER BY version") == [
            (v,) for v, _ in MIGRATIONS
        ]
    finally:
        for s in opened:
            s.close()
