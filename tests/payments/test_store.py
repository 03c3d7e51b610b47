"""payments_svc.store.PaymentStore against a real SQLite file: idempotency, isolation, refunds,
pagination and durability. No gRPC."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from payments_svc.domain import CreatePayment, Payment, PaymentStatus
from payments_svc.errors import IdempotencyKeyReused, PaymentNotFound, RefundExceedsBalance
from payments_svc.store import PaymentStore

NOW = 1_700_000_000_000_000


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


def count(path: Path, table: str = "payments") -> int:
    with sqlite3.connect(path) as conn:
        n: int = conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]  # noqa: S608 - fixed names
    conn.close()
    return n


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "payments.db"


@pytest.fixture
def store(db: Path) -> Iterator[PaymentStore]:
    s = PaymentStore(db)
    yield s
    s.close()


def create(
    store: PaymentStore,
    client: str = "shop",
    key: str = "order-1",
    *,
    tx: str | None = None,
    now: int = NOW,
    amount: str = "100.00",
) -> Payment:
    return store.create(client, request(key, amount), transaction_id=tx or new_id(), now_us=now)


def test_create_returns_the_payment(store: PaymentStore, db: Path) -> None:
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
    assert count(db) == 1


def test_same_key_same_request_is_idempotent(store: PaymentStore, db: Path) -> None:
    first = create(store, tx="tx_1")
    again = store.create("shop", request(), transaction_id="tx_2", now_us=NOW + 5)
    assert again == first
    assert again.transaction_id == "tx_1"
    assert count(db) == 1
    with pytest.raises(PaymentNotFound):
        store.get("shop", "tx_2")


def test_same_key_different_request(store: PaymentStore, db: Path) -> None:
    create(store, tx="tx_1")
    for other in (request(amount="100.01"), request(description="Order #2")):
        with pytest.raises(IdempotencyKeyReused) as info:
            store.create("shop", other, transaction_id=new_id(), now_us=NOW)
        assert info.value.error == "idempotency_key_reused"
    assert count(db) == 1


def test_same_key_other_client_is_separate(store: PaymentStore, db: Path) -> None:
    a = create(store, "shop", tx="tx_a")
    b = create(store, "other-shop", tx="tx_b")
    assert (a.transaction_id, b.transaction_id) == ("tx_a", "tx_b")
    assert (a.client_id, b.client_id) == ("shop", "other-shop")
    assert count(db) == 2


def test_concurrent_creates_with_one_key(store: PaymentStore, db: Path) -> None:
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
    assert count(db) == 1
    assert store.get("shop", results[0]).transaction_id == results[0]


def test_get_by_another_client(store: PaymentStore) -> None:
    p = create(store, "shop")
    with pytest.raises(PaymentNotFound) as info:
        store.get("other-shop", p.transaction_id)
    assert info.value.error == "payment_not_found"
    with pytest.raises(PaymentNotFound):
        store.get("shop", "tx_missing")


def test_list_newest_first_and_paginates(store: PaymentStore) -> None:
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


def test_refunds_and_failed_refund_changes_nothing(store: PaymentStore, db: Path) -> None:
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
    assert count(db, "refunds") == 2
    p = store.refund("shop", tx, "", idempotency_key=None, refund_id="rf_4", now_us=NOW)
    assert (p.refunded_minor, p.status) == (10000, PaymentStatus.REFUNDED)
    assert store.get("shop", tx) == p


def test_refund_key_repeated_refunds_once(store: PaymentStore, db: Path) -> None:
    tx = create(store).transaction_id
    first = store.refund("shop", tx, "10.00", idempotency_key="rk-1", refund_id="rf_1", now_us=NOW)
    again = store.refund("shop", tx, "10.00", idempotency_key="rk-1", refund_id="rf_2", now_us=NOW + 1)
    assert first.refunded_minor == again.refunded_minor == 1000
    assert store.get("shop", tx).refunded_minor == 1000
    assert count(db, "refunds") == 1


def test_refund_key_repeated_with_another_spelling_refunds_once(store: PaymentStore, db: Path) -> None:
    tx = create(store).transaction_id
    store.refund("shop", tx, "10.00", idempotency_key="rk-1", refund_id="rf_1", now_us=NOW)
    again = store.refund("shop", tx, "10", idempotency_key="rk-1", refund_id="rf_2", now_us=NOW + 1)
    assert again.refunded_minor == 1000
    assert count(db, "refunds") == 1


def test_refund_key_with_different_amount(store: PaymentStore, db: Path) -> None:
    tx = create(store).transaction_id
    store.refund("shop", tx, "10.00", idempotency_key="rk-1", refund_id="rf_1", now_us=NOW)
    with pytest.raises(IdempotencyKeyReused):
        store.refund("shop", tx, "20.00", idempotency_key="rk-1", refund_id="rf_2", now_us=NOW)
    assert store.get("shop", tx).refunded_minor == 1000
    assert count(db, "refunds") == 1


def test_refund_of_another_clients_payment(store: PaymentStore, db: Path) -> None:
    tx = create(store, "shop").transaction_id
    with pytest.raises(PaymentNotFound):
        store.refund("other-shop", tx, "1.00", idempotency_key=None, refund_id="rf_1", now_us=NOW)
    with pytest.raises(PaymentNotFound):
        store.refund("other-shop", tx, "1.00", idempotency_key="rk-1", refund_id="rf_2", now_us=NOW)
    assert store.get("shop", tx).refunded_minor == 0
    assert count(db, "refunds") == 0


def test_survives_close_and_reopen(db: Path) -> None:
    s = PaymentStore(db)
    p = create(s)
    p = s.refund("shop", p.transaction_id, "1.00", idempotency_key="rk", refund_id="rf_1", now_us=NOW)
    s.close()
    reopened = PaymentStore(db)
    try:
        assert reopened.get("shop", p.transaction_id) == p
        assert create(reopened).transaction_id == p.transaction_id  # the idempotency key survives too
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


def test_newer_schema_is_refused(db: Path) -> None:
    PaymentStore(db).close()
    with sqlite3.connect(db) as conn:
        conn.execute("INSERT INTO schema_migrations (version) VALUES (999)")
    conn.close()
    with pytest.raises(RuntimeError, match="newer"):
        PaymentStore(db)


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
