"""Client registration rules (RFC 6749 §2)."""

from __future__ import annotations

from typing import Any

import pytest

from authsvc.core.clients import (
    CLIENT_CREDENTIALS,
    MAX_AUDIENCES,
    MAX_TOKEN_TTL,
    MIN_TOKEN_TTL,
    Client,
    new_client,
)
from authsvc.core.errors import InvalidRequest, InvalidScope, OAuthError

NOW = 1_700_000_000


def register(**overrides: Any) -> Client:
    settings: dict[str, Any] = {
        "client_id": "shop",
        "secret_hash": "hmac-sha256$digest",
        "scopes": ["payments:read", "payments:write"],
        "audiences": ["payments", "ledger"],
        "now": NOW,
    }
    settings.update(overrides)
    return new_client(**settings)


def test_defaults() -> None:
    client = register()
    assert client.client_id == "shop"
    assert client.allowed_scopes == client.default_scopes == ("payments:read", "payments:write")
    assert client.allowed_audiences == ("payments", "ledger")
    assert client.default_audience == "payments"
    assert client.grant_types == (CLIENT_CREDENTIALS,)
    assert client.enabled is True
    assert client.created_at == client.updated_at == NOW


def test_explicit_defaults_and_dedup() -> None:
    client = register(
        scopes=["b", "a", "b"],
        default_scopes=["a"],
        audiences=["x", "y", "x"],
        default_audience="y",
        token_ttl=60,
    )
    assert client.allowed_scopes == ("b", "a")
    assert client.default_scopes == ("a",)
    assert client.allowed_audiences == ("x", "y")
    assert client.default_audience == "y"
    assert client.token_ttl == 60


@pytest.mark.parametrize(
    "client_id",
    ["a", "A.b_c~d-e9", "0" * 128],
    ids=["one-char", "all-classes", "128-chars"],
)
def test_valid_client_ids(client_id: str) -> None:
    assert register(client_id=client_id).client_id == client_id


@pytest.mark.parametrize(
    ("overrides", "error"),
    [
        ({"client_id": ""}, InvalidRequest),
        ({"client_id": "a" * 129}, InvalidRequest),
        ({"client_id": "my shop"}, InvalidRequest),
        ({"client_id": "shop:admin"}, InvalidRequest),
        ({"client_id": "shop\x00"}, InvalidRequest),
        ({"client_id": "sh\u043ep"}, InvalidRequest),
        ({"client_id": "\uff53hop"}, InvalidRequest),
        ({"client_id": "shop\n"}, InvalidRequest),
        ({"client_id": "-shop"}, InvalidRequest),
        ({"client_id": "shop/x"}, InvalidRequest),
        ({"scopes": ["payments read"]}, InvalidScope),
        ({"scopes": [""]}, InvalidScope),
        ({"scopes": ['pay"ments']}, InvalidScope),
        ({"scopes": ["pay\\ments"]}, InvalidScope),
        ({"scopes": ["caf\u00e9"]}, InvalidScope),
        ({"default_scopes": ["admin"]}, InvalidRequest),
        ({"audiences": []}, InvalidRequest),
        ({"audiences": [""]}, InvalidRequest),
        ({"audiences": ["pay ments"]}, InvalidRequest),
        ({"audiences": ["a" * 257]}, InvalidRequest),
        ({"audiences": [f"aud{i}" for i in range(MAX_AUDIENCES + 1)]}, InvalidRequest),
        ({"default_audience": "billing"}, InvalidRequest),
        ({"token_ttl": MIN_TOKEN_TTL - 1}, InvalidRequest),
        ({"token_ttl": MAX_TOKEN_TTL + 1}, InvalidRequest),
        ({"token_ttl": 0}, InvalidRequest),
        ({"token_ttl": -300}, InvalidRequest),
    ],
    ids=[
        "id-empty",
        "id-129-chars",
        "id-space",
        "id-colon",
        "id-nul",
        "id-cyrillic-look-alike",
        "id-fullwidth-look-alike",
        "id-trailing-newline",
        "id-leading-dash",
        "id-slash",
        "scope-with-space",
        "scope-empty",
        "scope-quote",
        "scope-backslash",
        "scope-non-ascii",
        "default-scope-not-allowed",
        "no-audience",
        "audience-empty",
        "audience-space",
        "audience-257-chars",
        "too-many-audiences",
        "default-audience-not-allowed",
        "ttl-below-min",
        "ttl-above-max",
        "ttl-zero",
        "ttl-negative",
    ],
)
def test_invalid_registration(overrides: dict[str, Any], error: type[OAuthError]) -> None:
    with pytest.raises(error):
        register(**overrides)


@pytest.mark.parametrize(
    "overrides",
    [
        {"token_ttl": MIN_TOKEN_TTL},
        {"token_ttl": MAX_TOKEN_TTL},
        {"audiences": [f"aud{i}" for i in range(MAX_AUDIENCES)]},
        {"audiences": ["a" * 256]},
        {"scopes": []},
    ],
    ids=["ttl-min", "ttl-max", "max-audiences", "audience-256-chars", "no-scopes"],
)
def test_boundaries_accepted(overrides: dict[str, Any]) -> None:
    register(**overrides)


def test_with_changes_returns_a_copy() -> None:
    client = register()
    disabled = client.with_changes(enabled=False, updated_at=NOW + 1)
    assert disabled.enabled is False and disabled.updated_at == NOW + 1
    assert client.enabled is True and client.updated_at == NOW


def test_previous_secret_is_valid_only_during_its_grace() -> None:
    client = new_client(client_id="shop", secret_hash="h", scopes=["a"], audiences=["payments"], now=0)
    assert client.previous_secret_hash is None and not client.previous_secret_valid(0)
    rotated = client.with_changes(previous_secret_hash="old", previous_secret_expires_at=100)
    assert rotated.previous_secret_valid(99.999)
    assert not rotated.previous_secret_valid(100)
    assert not client.with_changes(previous_secret_expires_at=100).previous_secret_valid(0)  # no hash
