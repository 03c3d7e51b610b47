"""Schema migrations applied over a database written by an earlier authsvc, on SQLite and
PostgreSQL: what was stored keeps working."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator, Sequence
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any

import pytest

from authsvc.core.client_auth import PresentedCredentials
from authsvc.core.clients import ClientAuthMethod
from authsvc.core.errors import InvalidClient
from authsvc.core.grants import client_credentials_endpoint
from authsvc.core.keys import KeyState, SigningKey, generate_rsa_key
from authsvc.core.secrets import SecretHasher
from authsvc.core.tokens import TokenSigner
from authsvc.store.base import Store
from authsvc.store.migrations import MIGRATIONS, SCHEMA_VERSION
from authsvc.store.sql import MIGRATIONS_TABLE
from tests.core.fakes import CountingRandom, FrozenClock

HASHER = SecretHasher(b"pepper-for-tests-only-0123456789")
SECRET = "authsvc_cs_written-before-methods-existed"

# a client row as authsvc wrote it at schema version 3, before client authentication methods
V3_CLIENT = (
    "INSERT INTO clients (client_id, secret_hash, allowed_scopes, default_scopes, allowed_audiences, "
    "default_audience, token_ttl, grant_types, enabled, created_at, updated_at, previous_secret_hash, "
    "previous_secret_expires_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
V3_ROW = (
    "legacy",
    HASHER.hash(SECRET),
    '["payments:read"]',
    '["payments:read"]',
    '["payments"]',
    "payments",
    300,
    '["client_credentials"]',
    True,
    1_700_000_000,
    1_700_000_000,
    None,
    None,
)


@contextmanager
def sqlite_v3(tmp_path: Path) -> Iterator[tuple[Callable[[], Store], Callable[[str], list[Any]]]]:
    path = tmp_path / "authsvc.db"
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        _apply_v3(lambda sql, params=(): conn.execute(sql, params))
    from authsvc.store.sqlite import SQLiteStore

    def query(sql: str) -> list[Any]:
        with closing(sqlite3.connect(path)) as c:
            return list(c.execute(sql).fetchall())

    yield (lambda: SQLiteStore(path)), query


@contextmanager
def postgres_v3(url: str) -> Iterator[tuple[Callable[[], Store], Callable[[str], list[Any]]]]:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        _apply_v3(lambda sql, params=(): conn.execute(sql.replace("?", "%s"), params))
    from authsvc.store.postgres import PostgresStore

    def query(sql: str) -> list[Any]:
        with psycopg.connect(url) as c:
            return list(c.execute(sql).fetchall())

    yield (lambda: PostgresStore(url)), query


def _apply_v3(execute: Callable[..., Any]) -> None:
    execute(MIGRATIONS_TABLE)
    for version, statements in MIGRATIONS[:3]:
        for statement in statements:
            execute(statement)
        execute("INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)", (version, 0))
    execute(V3_CLIENT, V3_ROW)


@pytest.fixture(params=["sqlite", "postgres"])
def v3(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[Callable[[], Store], Callable[[str], list[Any]]]]:
    if request.param == "sqlite":
        with sqlite_v3(tmp_path) as made:
            yield made
    else:
        with postgres_v3(request.getfixturevalue("pg_url")) as made:
            yield made


def _authenticate(store: Store, method: ClientAuthMethod, secret: str = SECRET) -> str:
    key = SigningKey.from_private_key(generate_rsa_key(), state=KeyState.ACTIVE, created_at=0, activated_at=0)
    signer = TokenSigner(key)
    endpoint = client_credentials_endpoint(
        issuer="https://auth.test",
        clients=store,
        hasher=HASHER,
        signer=lambda: signer,
        clock=FrozenClock(),
        random=CountingRandom(),
    )
    return endpoint.authenticate(PresentedCredentials(method, "legacy", secret)).client_id


def test_migration_4_keeps_a_secret_client_working_with_basic_and_post(
    v3: tuple[Callable[[], Store], Callable[[str], Sequence[Any]]],
) -> None:
    open_store, query = v3
    store = open_store()
    try:
        assert [r[0] for r in query("SELECT version FROM schema_migrations ORDER BY version")] == [
            v for v, _ in MIGRATIONS
        ]
        assert SCHEMA_VERSION >= 4
        client = store.get_client("legacy")
        assert client is not None
        assert client.auth_method is ClientAuthMethod.CLIENT_SECRET_BASIC
        assert (client.jwks, client.jwks_uri, client.signing_algs) == (None, None, ())
        assert (client.tls_san_dns, client.tls_subject_dn) == (None, None)
        # as before the migration: the secret works in a Basic header and in the body
        assert _authenticate(store, ClientAuthMethod.CLIENT_SECRET_BASIC) == "legacy"
        assert _authenticate(store, ClientAuthMethod.CLIENT_SECRET_POST) == "legacy"
        # the replay table exists and is empty
        assert query("SELECT COUNT(*) FROM client_assertion_jtis") == [(0,)]
        assert store.use_assertion_jti("legacy", "j", expires_at=2_000_000_000, now=1_700_000_000)
    finally:
        store.close()


def test_migration_4_leaves_a_wrong_secret_refused(
    v3: tuple[Callable[[], Store], Callable[[str], Sequence[Any]]],
) -> None:
    open_store, _ = v3
    store = open_store()
    try:
        with pytest.raises(InvalidClient):
            _authenticate(store, ClientAuthMethod.CLIENT_SECRET_POST, SECRET + "x")
    finally:
        store.close()
