"""The PostgreSQL that this machine kind runs (127.0.0.1:5432, trust auth), for the store tests.

Each test run creates its own database and drops it at the end; each test starts from an empty
schema. Without a reachable server the PostgreSQL tests skip with a message saying how to run
them, except under CI (CI=true), where a missing server is a failure, never a silent skip.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator

import pytest

ADMIN_URL = os.environ.get("AUTHSVC_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")


def _reachable() -> str | None:
    try:
        import psycopg
    except ImportError:
        return "psycopg is not installed (pip install 'authsvc[postgres]')"
    try:
        with psycopg.connect(ADMIN_URL, connect_timeout=3):
            return None
    except psycopg.OperationalError as exc:
        return f"PostgreSQL is not reachable at {ADMIN_URL} ({str(exc).strip().splitlines()[0]})"


def require_postgres() -> None:
    problem = _reachable()
    if problem is None:
        return
    if os.environ.get("CI"):
        pytest.fail(f"{problem}: CI must run the PostgreSQL tests (.ci/run starts the server)")
    pytest.skip(
        f"{problem}; start PostgreSQL (trust auth) or set AUTHSVC_TEST_POSTGRES=postgresql://… to run these"
    )


def with_database(url: str, name: str) -> str:
    base, _, _ = url.rpartition("/")
    return f"{base}/{name}"


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    """A database of this run's own: its URL."""
    require_postgres()
    import psycopg

    name = f"authsvc_test_{os.getpid()}_{secrets.token_hex(4)}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield with_database(ADMIN_URL, name)
    finally:
        with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def pg_url(pg_database: str) -> str:
    """The run's database with an empty public schema."""
    import psycopg

    with psycopg.connect(pg_database, autocommit=True) as conn:
        conn.execute("DROP SCHEMA public CASCADE")
        conn.execute("CREATE SCHEMA public")
    return pg_database
