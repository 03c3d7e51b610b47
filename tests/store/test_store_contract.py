"""The contract every store keeps, run against MemoryStore, SQLiteStore and PostgresStore alike."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from authsvc.core.keys import KeyState
from authsvc.store.base import AlreadyExists, Store, StoreError
from tests.store.contract import STORE_KINDS, make_client, make_key, open_store


@pytest.fixture(params=STORE_KINDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    s = open_store(request.param, tmp_path, request)
    try:
        yield s
    finally:
        s.close()


# -- clients ---------------------------------------------------------------------------------


def test_unknown_client_is_none(store: Store) -> None:
    assert store.get_client("nobody") is None
    assert store.list_clients() == []


def test_create_then_get_returns_an_equal_client(store: Store) -> None:
    client = make_client()
    store.create_client(client)
    assert store.get_client("shop") == client


def test_client_ids_are_exact(store: Store) -> None:
    store.create_client(make_client("shop"))
    assert store.get_client("Shop") is None
    assert store.get_client("shop ") is None


def test_list_clients_is_sorted_by_id(store: Store) -> None:
    for client_id in ("zeta", "alpha", "mid"):
        store.create_client(make_client(client_id))
    assert [c.client_id for c in store.list_clients()] == ["alpha", "mid", "zeta"]


def test_duplicate_client_is_already_exists(store: Store) -> None:
    store.create_client(make_client())
    with pytest.raises(AlreadyExists):
        store.create_client(make_client(now=1_800_000_000))
    assert isinstance(AlreadyExists("x"), StoreError)
    assert store.get_client("shop") == make_client()  # the first registration is untouched


def test_update_replaces_the_client(store: Store) -> None:
    client = make_client()
    store.create_client(client)
    changed = client.with_changes(
        enabled=False,
        secret_hash="hmac-sha256$new",
        allowed_scopes=("refunds",),
        default_scopes=("refunds",),
        grant_types=(),
        updated_at=client.updated_at + 5,
    )
    assert store.update_client(changed) is True
    assert store.get_client("shop") == changed
    assert store.list_clients() == [changed]


def test_update_of_missing_client_returns_false(store: Store) -> None:
    assert store.update_client(make_client("ghost")) is False
    assert store.get_client("ghost") is None


# -- signing keys ------------------------------------------------------------------------------


def test_activate_first_key_inserts_when_none_is_active(store: Store) -> None:
    first = make_key("kid-1")
    winner = store.activate_first_key(first)
    assert winner == first
    assert store.list_keys() == [first]


def test_activate_first_key_keeps_the_first_active_key(store: Store) -> None:
    first = store.activate_first_key(make_key("kid-1", created_at=100))
    second = store.activate_first_key(make_key("kid-2", created_at=50))
    assert second == first
    assert second.kid == "kid-1"
    assert [k.kid for k in store.list_keys()] == ["kid-1"]


def test_activate_first_key_returns_the_key_as_stored(store: Store) -> None:
    # "Insert key (state active) ... return the active key": what comes back is what is stored,
    # whatever state the caller's value carried.
    winner = store.activate_first_key(make_key("kid-1", state=KeyState.NEXT))
    stored = store.list_keys()
    assert [k.state for k in stored] == [KeyState.ACTIVE.value]
    assert winner == stored[0]


# -- service secrets -----------------------------------------------------------------------------


def test_get_or_create_secret_returns_the_first_value(store: Store) -> None:
    assert store.get_or_create_secret("pepper", b"\x00first", "kek-1") == (b"\x00first", "kek-1")
    assert store.get_or_create_secret("pepper", b"second", "kek-2") == (b"\x00first", "kek-1")


def test_secrets_are_per_name(store: Store) -> None:
    store.get_or_create_secret("a", b"value-a", "kek-1")
    assert store.get_or_create_secret("b", b"value-b", "kek-1") == (b"value-b", "kek-1")


def test_update_client_fields_changes_only_those_columns(store: Store) -> None:
    store.create_client(make_client())
    disabled = store.update_client_fields("shop", {"enabled": False, "updated_at": 1_800_000_000})
    assert disabled is not None and disabled.enabled is False
    # a secret rotation racing the disable writes its own column only: the disable stands
    rotated = store.update_client_fields(
        "shop", {"secret_hash": "hmac-sha256$new", "updated_at": 1_800_000_001}
    )
    assert rotated is not None
    assert (rotated.enabled, rotated.secret_hash) == (False, "hmac-sha256$new")
    assert store.get_client("shop") == rotated
    assert rotated.allowed_scopes == make_client().allowed_scopes


def test_update_client_fields_of_a_missing_client_is_none(store: Store) -> None:
    assert store.update_client_fields("nobody", {"enabled": False}) is None


@pytest.mark.parametrize(
    "fields", [{"client_id": "x"}, {"allowed_scopes": "*"}, {}], ids=["id", "scopes", "none"]
)
def test_update_client_fields_refuses_other_columns(store: Store, fields: dict[str, object]) -> None:
    store.create_client(make_client())
    with pytest.raises(ValueError, match="cannot update"):
        store.update_client_fields("shop", fields)
    assert store.get_client("shop") == make_client()
