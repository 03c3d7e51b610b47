"""The contract every store keeps, run against MemoryStore, SQLiteStore and PostgresStore alike."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from authsvc.core.clients import AuthRegistration, ClientAuthMethod
from authsvc.core.keys import KeyState
from authsvc.core.revocation import Revocation
from authsvc.store.base import AlreadyExists, Store, StoreError
from authsvc.store.sql import JTI_PURGE_INTERVAL, SqlStore
from tests.assertions import jwks_json, rsa_key
from tests.helpers import run_at_once
from tests.store.contract import make_client, make_key, open_store

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


def test_previous_secret_fields_round_trip(store: Store) -> None:
    store.create_client(make_client())
    rotated = store.update_client_fields(
        "shop",
        {
            "secret_hash": "hmac-sha256$new",
            "previous_secret_hash": make_client().secret_hash,
            "previous_secret_expires_at": 1_800_000_300,
        },
    )
    assert rotated is not None
    assert (rotated.previous_secret_hash, rotated.previous_secret_expires_at) == (
        make_client().secret_hash,
        1_800_000_300,
    )
    assert store.get_client("shop") == rotated
    cleared = store.update_client_fields(
        "shop", {"previous_secret_hash": None, "previous_secret_expires_at": None}
    )
    assert cleared is not None and cleared.previous_secret_hash is None
    assert store.get_client("shop") == cleared


def test_update_client_fields_with_expect_is_a_compare_and_set(store: Store) -> None:
    store.create_client(make_client())
    old = make_client().secret_hash
    first = store.update_client_fields(
        "shop",
        {"secret_hash": "hmac-sha256$first", "previous_secret_hash": old},
        expect={"secret_hash": old, "previous_secret_expires_at": None},
    )
    assert first is not None and first.secret_hash == "hmac-sha256$first"
    # a second writer that read the same row loses, and changes nothing
    second = store.update_client_fields(
        "shop", {"secret_hash": "hmac-sha256$second"}, expect={"secret_hash": old}
    )
    assert second is None
    assert store.get_client("shop") == first


# -- revocations ---------------------------------------------------------------------------------

NOW = 1_700_000_000


def _token(jti: str, expires_at: int = NOW + 600) -> Revocation:
    return Revocation(expires_at=expires_at, jti=jti)


def _client_entry(client_id: str, not_before: int = NOW, expires_at: int = NOW + 600) -> Revocation:
    return Revocation(expires_at=expires_at, client_id=client_id, not_before=not_before)


def test_an_empty_revocation_list(store: Store) -> None:
    assert store.revocation_snapshot(NOW) == (0, [])
    assert store.revocations_after(0) == []
    assert store.oldest_revocation_sequence() == 0


def test_add_revocation_assigns_increasing_sequences(store: Store) -> None:
    entries = [_token("jti-1"), _client_entry("shop"), _token("jti-2")]
    sequences = [store.add_revocation(e, now=NOW) for e in entries]
    assert sequences == sorted(sequences) and len(set(sequences)) == 3
    assert sequences[0] >= 1
    assert store.revocations_after(0) == list(zip(sequences, entries, strict=True))
    assert store.revocations_after(sequences[0]) == list(zip(sequences[1:], entries[1:], strict=True))
    assert store.revocations_after(sequences[-1]) == []
    assert store.revocation_snapshot(NOW) == (sequences[-1], entries)
    assert store.oldest_revocation_sequence() == sequences[0]


def test_add_revocation_purges_expired_entries(store: Store) -> None:
    short = store.add_revocation(_token("short", expires_at=NOW + 10), now=NOW)
    long = store.add_revocation(_token("long", expires_at=NOW + 1000), now=NOW)
    assert store.oldest_revocation_sequence() == short
    later = store.add_revocation(_token("later", expires_at=NOW + 2000), now=NOW + 10)  # at its expiry
    assert [s for s, _ in store.revocations_after(0)] == [long, later]
    assert store.oldest_revocation_sequence() == long


def test_snapshot_leaves_out_expired_entries_but_keeps_the_sequence(store: Store) -> None:
    store.add_revocation(_token("short", expires_at=NOW + 10), now=NOW)
    last = store.add_revocation(_client_entry("shop", expires_at=NOW + 1000), now=NOW)
    assert store.revocation_snapshot(NOW + 10) == (last, [_client_entry("shop", expires_at=NOW + 1000)])
    assert store.revocation_snapshot(NOW + 1000) == (last, [])


def test_sequences_are_never_reused_after_a_purge(store: Store) -> None:
    first = store.add_revocation(_token("a", expires_at=NOW + 1), now=NOW)
    second = store.add_revocation(_token("b", expires_at=NOW + 5000), now=NOW + 1)  # purges "a"
    assert second > first
    assert store.oldest_revocation_sequence() == second
    store.add_revocation(_token("c", expires_at=NOW + 9000), now=NOW + 5000)  # purges "b"
    assert store.revocation_snapshot(NOW + 5000)[0] == second + 1


def test_revocation_entries_round_trip_exactly(store: Store) -> None:
    entries = [
        Revocation(expires_at=NOW + 86_700, jti="x" * 256),
        Revocation(expires_at=NOW + 86_701, client_id="c" * 128, not_before=NOW + 1),
    ]
    for entry in entries:
        store.add_revocation(entry, now=NOW)
    assert [e for _, e in store.revocations_after(0)] == entries


def test_concurrent_writers_get_distinct_sequences(store: Store) -> None:
    # replicas revoking at once: every entry gets its own number, and all are stored
    got: list[int] = []
    lock = threading.Lock()

    def revoke(worker: int) -> None:
        for i in range(10):
            sequence = store.add_revocation(_token(f"w{worker}-{i}"), now=NOW)
            with lock:
                got.append(sequence)

    threads = [threading.Thread(target=revoke, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert sorted(got) == list(range(min(got), min(got) + 40))
    assert [s for s, _ in store.revocations_after(0)] == sorted(got)


# -- client authentication methods (issue 13) ------------------------------------------------------


def test_a_private_key_jwt_client_round_trips_with_its_keys(store: Store) -> None:
    client = make_client(
        "signer",
        auth=AuthRegistration(
            method=ClientAuthMethod.PRIVATE_KEY_JWT,
            jwks=jwks_json(rsa_key()),
            signing_algs=("RS256", "PS256"),
        ),
    )
    store.create_client(client)
    stored = store.get_client("signer")
    assert stored == client
    assert stored is not None and stored.secret_hash == "" and stored.signing_algs == ("RS256", "PS256")


@pytest.mark.parametrize(
    "auth",
    [
        AuthRegistration(method=ClientAuthMethod.PRIVATE_KEY_JWT, jwks_uri="https://shop.example/jwks.json"),
        AuthRegistration(method=ClientAuthMethod.TLS_CLIENT_AUTH, tls_san_dns="shop.example"),
        AuthRegistration(method=ClientAuthMethod.TLS_CLIENT_AUTH, tls_subject_dn="CN=shop,O=Example"),
        AuthRegistration(method=ClientAuthMethod.CLIENT_SECRET_POST),
    ],
    ids=["jwks-uri", "tls-san-dns", "tls-subject-dn", "secret-post"],
)
def test_each_method_and_its_registration_data_round_trip(store: Store, auth: AuthRegistration) -> None:
    client = make_client("c1", auth=auth)
    store.create_client(client)
    assert store.get_client("c1") == client
    assert store.list_clients() == [client]


def test_update_client_keeps_the_method_and_its_data(store: Store) -> None:
    client = make_client(
        "c1", auth=AuthRegistration(method=ClientAuthMethod.TLS_CLIENT_AUTH, tls_san_dns="a.b")
    )
    store.create_client(client)
    changed = client.with_changes(token_ttl=900, tls_san_dns="c.d")
    assert store.update_client(changed)
    assert store.get_client("c1") == changed


def test_an_assertion_jti_is_accepted_once_per_client(store: Store) -> None:
    assert store.use_assertion_jti("shop", "j-1", expires_at=NOW + 60, now=NOW)
    assert not store.use_assertion_jti("shop", "j-1", expires_at=NOW + 60, now=NOW + 1)
    assert not store.use_assertion_jti("shop", "j-1", expires_at=NOW + 90, now=NOW + 59)
    # another client's jti is its own
    assert store.use_assertion_jti("warehouse", "j-1", expires_at=NOW + 60, now=NOW + 1)


def test_an_expired_jti_may_be_used_again(store: Store) -> None:
    assert store.use_assertion_jti("shop", "j-1", expires_at=NOW + 60, now=NOW)
    # from its expiry on, the first entry refuses nothing: a new assertion may carry the jti
    assert store.use_assertion_jti("shop", "j-1", expires_at=NOW + 200, now=NOW + 60)
    assert not store.use_assertion_jti("shop", "j-1", expires_at=NOW + 200, now=NOW + 61)


def test_concurrent_uses_of_one_jti_accept_exactly_one(store: Store) -> None:
    # replicas racing with a replayed assertion: one wins, whichever
    results, errors = run_at_once(
        8, lambda i: store.use_assertion_jti("shop", "race", expires_at=NOW + 60, now=NOW)
    )
    assert errors == []
    assert sorted(results) == [False] * 7 + [True]


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_expired_jtis_are_purged_once_a_minute(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    store = open_store(kind, tmp_path, request)
    assert isinstance(store, SqlStore)

    def rows() -> list[str]:
        return sorted(str(r[0]) for r in store._query("SELECT jti FROM client_assertion_jtis"))

    try:
        assert store.use_assertion_jti("c", "a", expires_at=NOW + 10, now=NOW)  # purges (nothing yet)
        assert store.use_assertion_jti("c", "b", expires_at=NOW + 20, now=NOW + 5)
        assert store.use_assertion_jti(
            "c", "c", expires_at=NOW + 200, now=NOW + 30
        )  # a expired, no purge due
        assert rows() == ["a", "b", "c"]
        assert store.use_assertion_jti("c", "d", expires_at=NOW + 200, now=NOW + JTI_PURGE_INTERVAL)
        assert rows() == ["c", "d"]  # a and b purged, c and d still refuse replays
    finally:
        store.close()
