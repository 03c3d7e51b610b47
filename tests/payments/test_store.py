"""The payment stores against real databases: every contract test runs on SQLite (a file) and on
PostgreSQL (``pg_url``: an empty schema per test), and the PostgreSQL store also meets itself from
several instances at once, as replicas on one database do. SQLite-only: durability across a
killed process and the schema file. No gRPC."""

from __future__ import annotations

import secrets
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

from payments_svc.domain import CreatePayment, Payment, PaymentStatus
from payments_svc.errors import (
    DatabaseUnavailable,
    IdempotencyKeyReused,
    PaymentNotFound,
    RefundExceedsBalance,
)
from payments_svc.store import MIGRATIONS, PaymentStore, SqlPaymentStore
from tests.helpers import run_at_once
from tests.pg import ADMIN_URL, require_postgres, with_database

NOW = 1_700_000_000_000_000
T = TypeVar("T")


def request(key: str = "order-1", amount: str = "100.00", description: str = "Order #1") -> CreatePayment:
    return CreatePayment.parse(
        amount=amount,
        currency="USD",
        payment_method="pm_card_visa",
        description=description,
        idempotency_key=key,
    )


def new_id() -> str:
    return "tx_" + uuid.uuid4().hex[:24]


@dataclass
class Backend:
    """One database, seen by the tests: new stores on it, and plain SQL beside the store."""

    name: str
    open: Callable[[], SqlPaymentStore]
    execute: Callable[[str], list[tuple[Any, ...]]]

    def count(self, table: str = "payments") -> int:
        return int(self.execute(f"SELECT COUNT(*) FROM {table}")[0][0])  # noqa: S608 - fixed names


def sqlite_backend(path: Path) -> Backend:
    def execute(sql: str) -> list[tuple[Any, ...]]:
        with sqlite3.connect(path) as conn:
            rows = conn.execute(sql).fetchall()
        conn.close()
        return rows

    return Backend("sqlite", lambda: PaymentStore(path), execute)


def postgres_backend(url: str) -> Backend:
    import psycopg

    from payments_svc.store_postgres import PostgresPaymentStore

    def execute(sql: str) -> list[tuple[Any, ...]]:
        with psycopg.connect(url, autocommit=True) as conn:
            cur = conn.execute(sql.encode())
            return cur.fetchall() if cur.description else []

    return Backend("postgres", lambda: PostgresPaymentStore(url, max_size=4), execute)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "payments.db"


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, db: Path) -> Backend:
    if request.param == "sqlite":
        return sqlite_backend(db)
    return postgres_backend(request.getfixturevalue("pg_url"))


@pytest.fixture
def store(backend: Backend) -> Iterator[SqlPaymentStore]:
    s = backend.open()
    yield s
    s.close()


@pytest.fixture
def pg(pg_url: str) -> Backend:
    return postgres_backend(pg_url)


def create(
    store: SqlPaymentStore,
    client: str = "shop",
    key: str = "order-1",
    *,
    tx: str | None = None,
    now: int = NOW,
    amount: str = "100.00",
) -> Payment:
    return store.create(client, request(key, amount), transaction_id=tx or new_id(), now_us=now)


def test_create_returns_the_payment(store: SqlPaymentStore, backend: Backend) -> None:
    p = store.create("shop", request(), transaction_id="tx_1", now_us=NOW)
    assert p == Payment(
        transaction_id="tx_1",
        client_id="shop",
        status=PaymentStatus.SUCCEEDED,
        amount_minor=10000,
        refunded_minor=0,
        currency="USD",
        payment_method="pm_card_visa",
        description="Order #1",
        create_time_us=NOW,
    )
    assert store.get("shop", "tx_1") == p
    assert backend.count() == 1


def test_same_key_same_request_is_idempotent(store: SqlPaymentStore, backend: Backend) -> None:
    first = create(store, tx="tx_1")
    again = store.create("shop", request(), transaction_id="tx_2", now_us=NOW + 5)
    assert again == first
    assert again.transaction_id == "tx_1"
    assert backend.count() == 1
    with pytest.raises(PaymentNotFound):
        store.get("shop", "tx_2")


def test_same_key_different_request(store: SqlPaymentStore, backend: Backend) -> None:
    create(store, tx="tx_1")
    for other in (request(amount="100.01"), request(description="Order #2")):
        with pytest.raises(IdempotencyKeyReused) as info:
            store.create("shop", other, transaction_id=new_id(), now_us=NOW)
        assert info.value.error == "idempotency_key_reused"
    assert backend.count() == 1


def test_same_key_other_client_is_separate(store: SqlPaymentStore, backend: Backend) -> None:
    a = create(store, "shop", tx="tx_a")
    b = create(store, "other-shop", tx="tx_b")
    assert (a.transaction_id, b.transaction_id) == ("tx_a", "tx_b")
    assert (a.client_id, b.client_id) == ("shop", "other-shop")
    assert backend.count() == 2


def test_concurrent_creates_with_one_key(store: SqlPaymentStore, backend: Backend) -> None:
    n = 20
    barrier = threading.Barrier(n)
    results: list[str] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def worker() -> None:
        try:
            barrier.wait(timeout=10)
            p = store.create("shop", request(), transaction_id=new_id(), now_us=NOW)
            with lock:
                results.append(p.transaction_id)
        except BaseException as exc:
            with lock:
                errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not any(t.is_alive() for t in threads)
    assert errors == []
    assert len(results) == n
    assert len(set(results)) == 1
    assert backend.count() == 1
    assert store.get("shop", results[0]).transaction_id == results[0]


def test_get_by_another_client(store: SqlPaymentStore) -> None:
    p = create(store, "shop")
    with pytest.raises(PaymentNotFound) as info:
        store.get("other-shop", p.transaction_id)
    assert info.value.error == "payment_not_found"
    with pytest.raises(PaymentNotFound):
        store.get("shop", "tx_missing")


def test_list_newest_first_and_paginates(store: SqlPaymentStore) -> None:
    # Four payments share one timestamp and the first page ends inside that group, so the cursor
    # must break ties by transaction id.
    times = [NOW + 2, NOW + 5, NOW + 2, NOW + 2, NOW + 1, NOW + 2, NOW + 7]
    created = [create(store, key=f"k{i}", tx=f"tx_{i:02d}", now=t) for i, t in enumerate(times)]
    create(store, "other-shop", key="k0", tx="tx_other", now=NOW + 10)
    expected = sorted(created, key=lambda p: (p.create_time_us, p.transaction_id), reverse=True)

    assert store.list("shop", limit=100, before=None) == expected
    pages: list[list[Payment]] = []
    before: tuple[int, str] | None = None
    while True:
        page = store.list("shop", limit=3, before=before)
        if not page:
            break
        pages.append(page)
        before = (page[-1].create_time_us, page[-1].transaction_id)
    assert [len(p) for p in pages] == [3, 3, 1]
    seen = [p for page in pages for p in page]
    assert seen == expected
    assert len({p.transaction_id for p in seen}) == 7


def test_refunds_and_failed_refund_changes_nothing(store: SqlPaymentStore, backend: Backend) -> None:
    p = create(store)
    tx = p.transaction_id
    p = store.refund("shop", tx, "30.00", idempotency_key=None, refund_id="rf_1", now_us=NOW)
    assert (p.refunded_minor, p.status) == (3000, PaymentStatus.PARTIALLY_REFUNDED)
    p = store.refund("shop", tx, "50.00", idempotency_key=None, refund_id="rf_2", now_us=NOW)
    assert (p.refunded_minor, p.status) == (8000, PaymentStatus.PARTIALLY_REFUNDED)
    with pytest.raises(RefundExceedsBalance) as info:
        store.refund("shop", tx, "20.01", idempotency_key=None, refund_id="rf_3", now_us=NOW)
    assert info.value.error == "refund_exceeds_balance"
    stored = store.get("shop", tx)
    assert (stored.refunded_minor, stored.status) == (8000, PaymentStatus.PARTIALLY_REFUNDED)
    assert backend.count("refunds") == 2
    p = store.refund("shop", tx, "", idempotency_key=None, refund_id="rf_4", now_us=NOW)
    assert (p.refunded_minor, p.status) == (10000, PaymentStatus.REFUNDED)
    assert store.get("shop", tx) == p


def test_refund_key_repeated_refunds_once(store: SqlPaymentStore, backend: Backend) -> None:
    tx = create(store).transaction_id
    first = store.refund("shop", tx, "10.00", idempotency_key="rk-1", refund_id="rf_1", now_us=NOW)
    again = store.refund("shop", tx, "10.00", idempotency_key="rk-1", refund_id="rf_2", now_us=NOW + 1)
    assert first.refunded_minor == again.refunded_minor == 1000
    assert store.get("shop", tx).refunded_minor == 1000
    assert backend.count("refunds") == 1


def test_refund_key_repeated_with_another_spelling_refunds_once(
    store: SqlPaymentStore, backend: Backend
) -> None:
    tx = create(store).transaction_id
    store.refund("shop", tx, "10.00", idempotency_key="rk-1", refund_id="rf_1", now_us=NOW)
    again = store.refund("shop", tx, "10", idempotency_key="rk-1", refund_id="rf_2", now_us=NOW + 1)
    assert again.refunded_minor == 1000
    assert backend.count("refunds") == 1


def test_refund_key_with_different_amount(store: SqlPaymentStore, backend: Backend) -> None:
    tx = create(store).transaction_id
    store.refund("shop", tx, "10.00", idempotency_key="rk-1", refund_id="rf_1", now_us=NOW)
    with pytest.raises(IdempotencyKeyReused):
        store.refund("shop", tx, "20.00", idempotency_key="rk-1", refund_id="rf_2", now_us=NOW)
    assert store.get("shop", tx).refunded_minor == 1000
    assert backend.count("refunds") == 1


def test_refund_of_another_clients_payment(store: SqlPaymentStore, backend: Backend) -> None:
    tx = create(store, "shop").transaction_id
    with pytest.raises(PaymentNotFound):
        store.refund("other-shop", tx, "1.00", idempotency_key=None, refund_id="rf_1", now_us=NOW)
    with pytest.raises(PaymentNotFound):
        store.refund("other-shop", tx, "1.00", idempotency_key="rk-1", refund_id="rf_2", now_us=NOW)
    assert store.get("shop", tx).refunded_minor == 0
    assert backend.count("refunds") == 0


def test_survives_close_and_reopen(backend: Backend) -> None:
    s = backend.open()
    p = create(s)
    p = s.refund("shop", p.transaction_id, "1.00", idempotency_key="rk", refund_id="rf_1", now_us=NOW)
    s.close()
    reopened = backend.open()
    try:
        assert reopened.get("shop", p.transaction_id) == p
        assert create(reopened).transaction_id == p.transaction_id  # the idempotency key survives too
        assert reopened.schema_version() == MIGRATIONS[-1][0]
    finally:
        reopened.close()


_KILLED_CHILD = """
import os, signal, sys
from payments_svc.domain import CreatePayment
from payments_svc.store import PaymentStore
store = PaymentStore(sys.argv[1])
req = CreatePayment.parse(amount="12.34", currency="EUR", payment_method="pm_card_visa", description="crash",
                          idempotency_key="crash-1")
p = store.create("shop", req, transaction_id="tx_crash", now_us=1)
print(p.transaction_id, flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_survives_a_killed_process(db: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", _KILLED_CHILD, str(db)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).resolve().parents[2],
        check=False,
    )
    assert proc.returncode == -9, proc.stderr
    assert proc.stdout.strip() == "tx_crash"
    s = PaymentStore(db)
    try:
        p = s.get("shop", "tx_crash")
        assert (p.amount_minor, p.currency, p.description) == (1234, "EUR", "crash")
    finally:
        s.close()


def test_newer_schema_is_refused(backend: Backend) -> None:
    s = backend.open()
    table = s.migrations_table
    s.close()
    backend.execute(f"INSERT INTO {table} (version) VALUES (999)")  # noqa: S608 - a fixed name
    with pytest.raises(RuntimeError, match="newer"):
        backend.open()


def test_newer_schema_is_refused_on_fresh_file(db: Path) -> None:
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY)")
        conn.execute("INSERT INTO schema_migrations (version) VALUES (999)")
    conn.close()
    with pytest.raises(RuntimeError, match="newer"):
        PaymentStore(db)
    with sqlite3.connect(db) as conn:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    conn.close()
    assert tables == {"schema_migrations"}  # nothing was migrated


# -- PostgreSQL: several stores (replicas) on one database -------------------------------------


@pytest.fixture
def replicas(pg: Backend) -> Iterator[Callable[[int], list[SqlPaymentStore]]]:
    """``replicas(n)``: n stores, each with its own pool, as n replicas would have."""
    opened: list[SqlPaymentStore] = []

    def open_stores(n: int) -> list[SqlPaymentStore]:
        for _ in range(n):
            opened.append(pg.open())
        return opened[-n:]

    try:
        yield open_stores
    finally:
        for s in opened:
            s.close()


def test_replicas_starting_at_once_migrate_once(pg: Backend) -> None:
    opened, errors = run_at_once(8, lambda _: pg.open())
    for s in opened:
        s.close()
    assert errors == [] and len(opened) == 8
    assert pg.execute("SELECT version FROM payments_schema_migrations") == [(v,) for v, _ in MIGRATIONS]
    assert pg.count() == 0


def test_concurrent_creates_with_one_key_on_many_replicas(
    pg: Backend, replicas: Callable[[int], list[SqlPaymentStore]]
) -> None:
    stores = replicas(20)
    ids, errors = run_at_once(
        len(stores),
        lambda i: stores[i].create("shop", request(), transaction_id=new_id(), now_us=NOW + i).transaction_id,
    )
    assert errors == []
    assert len(ids) == len(stores) and len(set(ids)) == 1
    assert pg.count() == 1
    assert all(s.get("shop", ids[0]).transaction_id == ids[0] for s in stores[:3])


def test_concurrent_partial_refunds_on_two_replicas_never_exceed(
    pg: Backend, replicas: Callable[[int], list[SqlPaymentStore]]
) -> None:
    a, b = replicas(2)
    tx = create(a).transaction_id
    done, errors = run_at_once(
        10,
        lambda i: (a if i % 2 else b).refund(
            "shop", tx, "15.00", idempotency_key=None, refund_id=f"rf_{i}", now_us=NOW
        ),
    )
    assert len(done) == 6 and len(errors) == 4
    assert all(isinstance(e, RefundExceedsBalance) for e in errors), errors
    assert sorted(p.refunded_minor for p in done) == [1500, 3000, 4500, 6000, 7500, 9000]
    stored = b.get("shop", tx)
    assert (stored.refunded_minor, stored.status) == (9000, PaymentStatus.PARTIALLY_REFUNDED)
    assert pg.execute("SELECT COUNT(*), SUM(amount_minor) FROM refunds") == [(6, 9000)]


def test_one_refund_key_raced_on_two_payments(
    pg: Backend, replicas: Callable[[int], list[SqlPaymentStore]]
) -> None:
    """The payment row lock does not serialize refunds of two payments, so the unique constraint
    must: one payment gets the refund, every call on the other is refused."""
    stores = replicas(10)
    txs = [create(stores[0], key="p1").transaction_id, create(stores[0], key="p2").transaction_id]
    done, errors = run_at_once(
        10,
        lambda i: stores[i].refund(
            "shop", txs[i % 2], "10.00", idempotency_key="rk", refund_id=f"rf_{i}", now_us=NOW
        ),
    )
    assert len(done) == 5 and len(errors) == 5
    assert all(isinstance(e, IdempotencyKeyReused) for e in errors), errors
    assert len({p.transaction_id for p in done}) == 1
    assert all(p.refunded_minor == 1000 for p in done)
    assert pg.execute("SELECT COUNT(*), SUM(amount_minor) FROM refunds") == [(1, 1000)]


def _wait_for_lock_waiter(url: str, timeout: float = 10) -> None:
    import psycopg

    deadline = time.monotonic() + timeout
    with psycopg.connect(url, autocommit=True) as conn:
        while time.monotonic() < deadline:
            row = conn.execute(
                "SELECT COUNT(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND wait_event_type = 'Lock'"
            ).fetchone()
            if row and row[0]:
                return
            time.sleep(0.02)
    raise AssertionError("the store's insert never waited for the other transaction")


@pytest.mark.parametrize("same", [True, False], ids=["same-request", "other-request"])
def test_create_that_loses_the_insert_race_reads_the_winner(pg_url: str, pg: Backend, same: bool) -> None:
    """Deterministically what two replicas do at once: both read no row, the other one inserts and
    commits while our insert waits on the unique index, ours fails and reads the winner's row."""
    import psycopg

    store = pg.open()
    winner = request()
    ours = winner if same else request(amount="99.00")
    out: list[Payment | BaseException] = []

    def call() -> None:
        try:
            out.append(store.create("shop", ours, transaction_id="tx_loser", now_us=NOW + 1))
        except BaseException as exc:
            out.append(exc)

    try:
        with psycopg.connect(pg_url) as other:  # a transaction, open until commit
            other.execute(
                "INSERT INTO payments (transaction_id, client_id, status, amount_minor, refunded_minor, "
                "currency, payment_method, description, create_time_us, idempotency_key, request_hash) "
                "VALUES ('tx_winner', 'shop', 'succeeded', 10000, 0, 'USD', 'pm_card_visa', 'Order #1', %s, "
                "'order-1', %s)",
                (NOW, winner.fingerprint()),
            )
            thread = threading.Thread(target=call)
            thread.start()
            _wait_for_lock_waiter(pg_url)
            other.commit()
        thread.join(timeout=10)
    finally:
        store.close()
    assert len(out) == 1
    if same:
        assert isinstance(out[0], Payment) and out[0].transaction_id == "tx_winner"
    else:
        assert isinstance(out[0], IdempotencyKeyReused)
    assert pg.execute("SELECT transaction_id FROM payments") == [("tx_winner",)]


# -- PostgreSQL: the database goes away and comes back ------------------------------------------


class Outage:
    """Takes a database of its own away from its clients, without touching the server: refuse new
    connections, end the open ones; and brings it back."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.name = url.rpartition("/")[2]

    def _admin(self, sql: str, params: tuple[object, ...] = ()) -> list[tuple[Any, ...]]:
        import psycopg

        with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
            cur = conn.execute(sql.encode(), params)
            return cur.fetchall() if cur.description else []

    def begin(self) -> None:
        self._admin(f'ALTER DATABASE "{self.name}" ALLOW_CONNECTIONS false')
        deadline = time.monotonic() + 10
        while self._admin(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (self.name,)
        ):
            assert time.monotonic() < deadline, "the database's connections did not end"
            time.sleep(0.05)

    def end(self) -> None:
        self._admin(f'ALTER DATABASE "{self.name}" ALLOW_CONNECTIONS true')


@pytest.fixture
def outage() -> Iterator[Outage]:
    """A scratch database (not the run's shared one, which other tests keep using)."""
    require_postgres()
    import psycopg

    name = f"payments_outage_{secrets.token_hex(4)}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"'.encode())
    o = Outage(with_database(ADMIN_URL, name))
    try:
        yield o
    finally:
        with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'.encode())


def eventually(call: Callable[[], T], within: float = 10) -> T:
    """``call()`` once it stops raising DatabaseUnavailable."""
    deadline = time.monotonic() + within
    while True:
        try:
            return call()
        except DatabaseUnavailable:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def test_database_outage_is_unavailable_then_recovers(outage: Outage) -> None:
    from payments_svc.store_postgres import PostgresPaymentStore

    store = PostgresPaymentStore(outage.url, timeout=1.0)
    try:
        tx = create(store).transaction_id
        outage.begin()
        try:
            calls: list[Callable[[], object]] = [
                lambda: store.get("shop", tx),
                lambda: create(store, key="during"),
                lambda: store.refund("shop", tx, "1.00", idempotency_key=None, refund_id="rf_1", now_us=NOW),
            ]
            for call in calls:
                started = time.monotonic()
                with pytest.raises(DatabaseUnavailable) as info:
                    call()
                assert time.monotonic() - started < 3, "an unreachable database must not hang a call"
                assert (info.value.reason, info.value.status_key) == ("DATABASE_UNAVAILABLE", "unavailable")
        finally:
            outage.end()
        assert eventually(lambda: store.get("shop", tx)).refunded_minor == 0  # the same store, no restart
        assert create(store, key="after").transaction_id != tx
        assert len(store.list("shop", limit=10, before=None)) == 2
    finally:
        store.close()


def test_unreachable_database_at_start_is_unavailable(outage: Outage) -> None:
    from payments_svc.store_postgres import PostgresPaymentStore

    outage.begin()
    started = time.monotonic()
    with pytest.raises(DatabaseUnavailable):
        PostgresPaymentStore(outage.url, timeout=1.0)
    assert time.monotonic() - started < 5


def test_shares_a_database_with_authsvc(pg_url: str, pg: Backend) -> None:
    """The TokenService may keep its clients and keys in the same database: each service has its
    own tables and its own migration versions, whichever starts first."""
    from authsvc.store.migrations import SCHEMA_VERSION
    from authsvc.store.postgres import PostgresStore

    payments = pg.open()
    auth = PostgresStore(pg_url)
    try:
        assert auth.schema_version() == SCHEMA_VERSION
        assert payments.schema_version() == MIGRATIONS[-1][0]
        assert create(payments).currency == "USD"
    finally:
        auth.close()
        payments.close()
    reopened = pg.open()
    reopened.close()
