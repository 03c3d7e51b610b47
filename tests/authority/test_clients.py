"""The client registry's secret rotation with a grace period: two live secrets at most, the old
one ending on time (a frozen clock), a second rotation refused unless it ends the first grace."""

from __future__ import annotations

import pytest

from authsvc.authority.clients import MAX_SECRET_GRACE, ClientRegistry
from authsvc.core.clients import AuthRegistration, Client, ClientAuthMethod
from authsvc.core.errors import InvalidRequest, NotFound
from authsvc.core.secrets import SecretHasher
from authsvc.store.memory import MemoryStore
from tests.assertions import jwks_json, rsa_key
from tests.core.fakes import CountingRandom, FrozenClock

NOW = 1_700_000_000
HASHER = SecretHasher(b"pepper-for-tests-only-0123456789")


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock(NOW)


@pytest.fixture
def registry(clock: FrozenClock) -> ClientRegistry:
    return ClientRegistry(MemoryStore(), lambda: HASHER, clock=clock, random=CountingRandom())


def _accepted(registry: ClientRegistry, secret: str, now: float) -> bool:
    """Whether the stored client accepts ``secret`` at ``now``, as TokenEndpoint.authenticate checks."""
    c = registry.get_client("shop")
    return HASHER.verify(secret, c.secret_hash) or (
        c.previous_secret_valid(now) and HASHER.verify(secret, c.previous_secret_hash)
    )


def _create(registry: ClientRegistry) -> str:
    _, secret = registry.create_client(client_id="shop", scopes=["payments:read"], audiences=["payments"])
    return secret


def test_rotation_with_grace_keeps_the_old_secret_until_it_ends(
    registry: ClientRegistry, clock: FrozenClock
) -> None:
    old = _create(registry)
    client, new = registry.rotate_secret("shop", grace=6)
    assert new != old
    assert client.previous_secret_expires_at == NOW + 6
    assert _accepted(registry, old, NOW + 5) and _accepted(registry, new, NOW + 5)
    assert not _accepted(registry, old, NOW + 6) and _accepted(registry, new, NOW + 6)


def test_rotation_without_grace_drops_the_old_secret(registry: ClientRegistry) -> None:
    old = _create(registry)
    client, new = registry.rotate_secret("shop", grace=0)
    assert (client.previous_secret_hash, client.previous_secret_expires_at) == (None, None)
    assert not _accepted(registry, old, NOW) and _accepted(registry, new, NOW)


def test_a_second_rotation_after_the_grace_is_allowed(registry: ClientRegistry, clock: FrozenClock) -> None:
    _create(registry)
    _, second = registry.rotate_secret("shop", grace=6)
    clock.advance(6)
    client, third = registry.rotate_secret("shop", grace=6)
    assert client.previous_secret_expires_at == NOW + 12
    assert _accepted(registry, second, NOW + 11) and _accepted(registry, third, NOW + 11)


def test_end_grace_replaces_the_oldest_secret(registry: ClientRegistry) -> None:
    first = _create(registry)
    _, second = registry.rotate_secret("shop", grace=60)
    _, third = registry.rotate_secret("shop", grace=60, end_grace=True)
    assert not _accepted(registry, first, NOW)  # three live secrets never
    assert _accepted(registry, second, NOW) and _accepted(registry, third, NOW)


@pytest.mark.parametrize("grace", [-1, MAX_SECRET_GRACE + 1], ids=["negative", "too-long"])
def test_an_out_of_range_grace_is_refused(registry: ClientRegistry, grace: int) -> None:
    old = _create(registry)
    with pytest.raises(InvalidRequest):
        registry.rotate_secret("shop", grace=grace)
    assert _accepted(registry, old, NOW)


def test_rotating_a_missing_client_is_not_found(registry: ClientRegistry) -> None:
    with pytest.raises(NotFound):
        registry.rotate_secret("nobody", grace=60)


def test_a_rotation_racing_another_is_refused_and_changes_nothing(
    registry: ClientRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    _create(registry)
    store = registry.store
    real_get = store.get_client
    stale = real_get("shop")

    def racing_get(client_id: str) -> Client | None:
        # the other rotation commits between this one's read and its write
        monkeypatch.setattr(store, "get_client", real_get)
        store.update_client_fields("shop", {"secret_hash": HASHER.hash("authsvc_cs_winner")})
        return stale

    monkeypatch.setattr(store, "get_client", racing_get)
    with pytest.raises(InvalidRequest, match="meanwhile"):
        registry.rotate_secret("shop", grace=60)
    assert _accepted(registry, "authsvc_cs_winner", NOW)
    assert registry.get_client("shop").previous_secret_hash is None


# -- clients without a secret (issue 13) -----------------------------------------------------------


def test_a_private_key_jwt_client_is_registered_without_a_secret(registry: ClientRegistry) -> None:
    auth = AuthRegistration(method=ClientAuthMethod.PRIVATE_KEY_JWT, jwks=jwks_json(rsa_key()))
    client, secret = registry.register(
        client_id="signer", scopes=["payments:read"], audiences=["payments"], auth=auth
    )
    assert secret is None
    assert client.secret_hash == "" and registry.get_client("signer") == client


def test_create_client_is_for_secret_clients_only(registry: ClientRegistry) -> None:
    auth = AuthRegistration(method=ClientAuthMethod.TLS_CLIENT_AUTH, tls_san_dns="shop.example")
    with pytest.raises(InvalidRequest):
        registry.create_client(client_id="tls", scopes=["a"], audiences=["b"], auth=auth)
    assert registry.list_clients() == []
    post = AuthRegistration(method=ClientAuthMethod.CLIENT_SECRET_POST)
    client, secret = registry.create_client(client_id="poster", scopes=["a"], audiences=["b"], auth=post)
    assert client.auth_method is ClientAuthMethod.CLIENT_SECRET_POST and HASHER.verify(
        secret, client.secret_hash
    )


def test_a_client_without_a_secret_has_none_to_rotate(registry: ClientRegistry) -> None:
    auth = AuthRegistration(method=ClientAuthMethod.PRIVATE_KEY_JWT, jwks_uri="https://shop.example/jwks")
    registry.register(client_id="signer", scopes=["a"], audiences=["b"], auth=auth)
    before = registry.get_client("signer")
    with pytest.raises(InvalidRequest):
        registry.rotate_secret("signer")
    assert registry.get_client("signer") == before
