"""``ClientRegistry.set_keys`` (``authsvc clients set-keys``): a private_key_jwt client's keys
replaced whole, checked exactly as at registration, on every store (memory, SQLite, PostgreSQL);
refused for a client of another method; audited by kid, never with the keys themselves."""

from __future__ import annotations

import json
import logging

import pytest

from authsvc.authority.clients import ClientRegistry
from authsvc.core.clients import AuthRegistration, Client, ClientAuthMethod
from authsvc.core.errors import InvalidRequest, NotFound
from authsvc.core.secrets import SecretHasher
from authsvc.store.base import Store
from tests.assertions import ec_key, jwks_json, rsa_key
from tests.core.fakes import CountingRandom, FrozenClock

NOW = 1_700_000_000
HASHER = SecretHasher(b"pepper-for-tests-only-0123456789")
PK = ClientAuthMethod.PRIVATE_KEY_JWT
OLD = rsa_key("set-keys-old")
NEW = rsa_key("set-keys-new")
EC = ec_key("set-keys-ec")


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock(NOW)


@pytest.fixture
def registry(store: Store, clock: FrozenClock) -> ClientRegistry:
    return ClientRegistry(store, lambda: HASHER, clock=clock, random=CountingRandom())


def _register(
    registry: ClientRegistry, client_id: str = "shop", auth: AuthRegistration | None = None
) -> Client:
    client, _ = registry.register(
        client_id=client_id,
        scopes=["payments:write"],
        audiences=["payments"],
        auth=auth or AuthRegistration(method=PK, jwks=jwks_json(OLD)),
    )
    return client


def _kids(client: Client) -> list[str]:
    assert client.jwks is not None
    return [k["kid"] for k in json.loads(client.jwks)["keys"]]


def test_set_keys_replaces_the_jwk_set_whole_and_the_store_keeps_it(
    registry: ClientRegistry, store: Store, clock: FrozenClock
) -> None:
    before = _register(registry)
    clock.advance(10)
    updated = registry.set_keys("shop", jwks=jwks_json(NEW))
    assert _kids(updated) == [NEW.kid]
    assert updated.signing_algs == ("RS256",) and updated.jwks_uri is None
    assert updated.updated_at == NOW + 10
    assert store.get_client("shop") == updated  # read back from the database, not the answer
    # nothing else of the registration changed
    assert updated.with_changes(jwks=before.jwks, updated_at=before.updated_at) == before


def test_set_keys_switches_between_a_jwk_set_and_a_jwks_uri(registry: ClientRegistry, store: Store) -> None:
    _register(registry)
    to_uri = registry.set_keys("shop", jwks_uri="https://shop.example/jwks.json")
    assert (to_uri.jwks, to_uri.jwks_uri) == (None, "https://shop.example/jwks.json")
    back = registry.set_keys("shop", jwks=jwks_json(OLD, NEW))
    assert back.jwks_uri is None and _kids(back) == [OLD.kid, NEW.kid]
    assert store.get_client("shop") == back


def test_set_keys_keeps_the_signing_algorithms_unless_given(registry: ClientRegistry, store: Store) -> None:
    _register(
        registry, auth=AuthRegistration(method=PK, jwks=jwks_json(OLD), signing_algs=("PS256", "RS256"))
    )
    kept = registry.set_keys("shop", jwks=jwks_json(NEW))
    assert kept.signing_algs == ("PS256", "RS256")
    moved = registry.set_keys("shop", jwks=jwks_json(EC), signing_algs=("ES256",))
    assert moved.signing_algs == ("ES256",)
    assert store.get_client("shop") == moved


def test_an_ec_set_for_an_rs256_client_is_refused_and_nothing_changes(
    registry: ClientRegistry, store: Store
) -> None:
    before = _register(registry)
    with pytest.raises(InvalidRequest, match="RS256"):
        registry.set_keys("shop", jwks=jwks_json(EC))
    assert store.get_client("shop") == before


_PRIVATE = {"keys": [{**OLD.private_jwk}]}
_SMALL = rsa_key("set-keys-small", bits=1024)
_BAD_SETS = {
    "private-key-material": {"jwks": json.dumps(_PRIVATE)},
    "rsa-1024": {"jwks": jwks_json(_SMALL)},
    "shared-kid": {"jwks": json.dumps({"keys": [OLD.public_jwk, {**NEW.public_jwk, "kid": OLD.kid}]})},
    "no-keys": {"jwks": '{"keys": []}'},
    "not-json": {"jwks": "{"},
    "http-uri": {"jwks_uri": "http://shop.example/jwks.json"},
    "uri-with-credentials": {"jwks_uri": "https://user:pw@shop.example/jwks.json"},
    "both": {"jwks": jwks_json(NEW), "jwks_uri": "https://shop.example/jwks.json"},
    "neither": {},
    "unsupported-alg": {"jwks": jwks_json(NEW), "signing_algs": ("HS256",)},
}


@pytest.mark.parametrize("given", list(_BAD_SETS.values()), ids=list(_BAD_SETS))
def test_set_keys_refuses_what_registration_refuses_with_the_same_words(
    registry: ClientRegistry, store: Store, given: dict[str, object]
) -> None:
    before = _register(registry)
    with pytest.raises(InvalidRequest) as at_registration:
        _register(registry, "other", AuthRegistration(method=PK, **given))  # type: ignore[arg-type]
    with pytest.raises(InvalidRequest) as at_set_keys:
        registry.set_keys("shop", **given)  # type: ignore[arg-type]
    assert str(at_set_keys.value) == str(at_registration.value)
    assert store.get_client("shop") == before
    assert store.get_client("other") is None


@pytest.mark.parametrize(
    "auth",
    [
        AuthRegistration(),
        AuthRegistration(method=ClientAuthMethod.CLIENT_SECRET_POST),
        AuthRegistration(method=ClientAuthMethod.TLS_CLIENT_AUTH, tls_san_dns="shop.example"),
    ],
    ids=["client_secret_basic", "client_secret_post", "tls_client_auth"],
)
def test_a_client_of_another_method_has_no_keys_to_set(
    registry: ClientRegistry, store: Store, auth: AuthRegistration
) -> None:
    client, _ = registry.register(client_id="shop", scopes=["a"], audiences=["b"], auth=auth)
    with pytest.raises(
        InvalidRequest, match=f"authenticates with {auth.method.value}: only a private_key_jwt"
    ):
        registry.set_keys("shop", jwks=jwks_json(NEW))
    assert store.get_client("shop") == client


def test_set_keys_of_an_unknown_client_is_not_found(registry: ClientRegistry) -> None:
    with pytest.raises(NotFound):
        registry.set_keys("nobody", jwks=jwks_json(NEW))


def test_two_replacements_racing_one_wins_and_the_other_changes_nothing(
    registry: ClientRegistry, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    stale = _register(registry)
    winner = registry.set_keys("shop", jwks=jwks_json(NEW))
    # the loser read the client before the winner wrote: its compare-and-set must fail
    monkeypatch.setattr(registry, "get_client", lambda _client_id: stale)
    with pytest.raises(InvalidRequest, match="was given other keys meanwhile"):
        registry.set_keys("shop", jwks=jwks_json(EC), signing_algs=("ES256",))
    assert store.get_client("shop") == winner


def test_set_keys_is_an_audit_event_naming_kids_never_keys(
    registry: ClientRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    _register(registry)
    caplog.set_level(logging.INFO, logger="authsvc.audit")
    registry.set_keys("shop", jwks=jwks_json(NEW))
    registry.set_keys("shop", jwks_uri="https://shop.example/jwks.json?tenant=42")
    (by_file, by_uri) = [r for r in caplog.records if getattr(r, "event", None) == "client.keys_set"]
    assert (by_file.client_id, by_file.keys_from, by_file.kids) == ("shop", "jwks", [NEW.kid])  # type: ignore[attr-defined]
    assert (by_uri.keys_from, by_uri.jwks_uri) == ("jwks_uri", "https://shop.example/jwks.json")  # type: ignore[attr-defined]
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert NEW.public_jwk["n"] not in text and "tenant=42" not in text
