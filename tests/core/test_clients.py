"""Client registration rules (RFC 6749 §2)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from authsvc.core.clients import (
    CLIENT_CREDENTIALS,
    MAX_AUDIENCES,
    MAX_TOKEN_TTL,
    MIN_TOKEN_TTL,
    AuthRegistration,
    Client,
    ClientAuthMethod,
    new_client,
    validate_jwks_uri,
)
from authsvc.core.errors import InvalidRequest, InvalidScope, OAuthError
from tests.assertions import jwks_json, rsa_key

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


# -- authentication methods and their registration data (issue 13) ---------------------------------

JWKS = jwks_json(rsa_key())
PKJWT = ClientAuthMethod.PRIVATE_KEY_JWT
TLS = ClientAuthMethod.TLS_CLIENT_AUTH


def test_the_default_method_is_client_secret_basic() -> None:
    client = register()
    assert client.auth_method is ClientAuthMethod.CLIENT_SECRET_BASIC
    assert client.has_secret
    assert (client.jwks, client.jwks_uri, client.signing_algs) == (None, None, ())


def test_a_private_key_jwt_client_has_keys_and_pinned_algorithms_but_no_secret() -> None:
    client = register(secret_hash="", auth=AuthRegistration(method=PKJWT, jwks=JWKS))
    assert client.auth_method is PKJWT and not client.has_secret
    assert client.signing_algs == ("RS256",)  # the default
    assert json.loads(client.jwks or "")["keys"][0]["kid"] == "rsa-1"
    uri = register(
        secret_hash="",
        auth=AuthRegistration(method=PKJWT, jwks_uri="https://shop.example/jwks", signing_algs=("PS256",)),
    )
    assert (uri.jwks, uri.jwks_uri, uri.signing_algs) == (None, "https://shop.example/jwks", ("PS256",))


def test_a_tls_client_auth_client_has_exactly_one_certificate_name() -> None:
    client = register(secret_hash="", auth=AuthRegistration(method=TLS, tls_subject_dn="CN=shop,O=Example"))
    assert (client.auth_method, client.tls_subject_dn, client.tls_san_dns) == (TLS, "CN=shop,O=Example", None)


@pytest.mark.parametrize(
    ("secret_hash", "auth"),
    [
        ("", AuthRegistration(method=PKJWT)),
        ("", AuthRegistration(method=PKJWT, jwks=JWKS, jwks_uri="https://shop.example/jwks")),
        ("", AuthRegistration(method=PKJWT, jwks=JWKS, tls_san_dns="shop.example")),
        ("", AuthRegistration(method=PKJWT, jwks=JWKS, signing_algs=())),
        ("", AuthRegistration(method=PKJWT, jwks=JWKS, signing_algs=("HS256",))),
        ("", AuthRegistration(method=PKJWT, jwks=JWKS, signing_algs=("none",))),
        ("", AuthRegistration(method=PKJWT, jwks=JWKS, signing_algs=("ES256",))),
        ("hmac-sha256$digest", AuthRegistration(method=PKJWT, jwks=JWKS)),
        ("", AuthRegistration(method=TLS)),
        ("", AuthRegistration(method=TLS, tls_san_dns="a.example", tls_subject_dn="CN=a")),
        ("", AuthRegistration(method=TLS, tls_san_dns="a.example", jwks=JWKS)),
        ("", AuthRegistration(method=TLS, tls_san_dns="*.example")),
        ("", AuthRegistration(method=TLS, tls_san_dns="Shop.Example")),
        ("", AuthRegistration(method=TLS, tls_subject_dn="no equals sign")),
        ("", AuthRegistration(method=TLS, tls_subject_dn="CN=a\nO=b")),
        ("", AuthRegistration()),
        ("hmac-sha256$digest", AuthRegistration(jwks=JWKS)),
        ("hmac-sha256$digest", AuthRegistration(jwks_uri="https://shop.example/jwks")),
        (
            "hmac-sha256$digest",
            AuthRegistration(method=ClientAuthMethod.CLIENT_SECRET_POST, tls_san_dns="a.b"),
        ),
    ],
    ids=[
        "pkjwt-without-keys",
        "pkjwt-with-both-jwks-and-uri",
        "pkjwt-with-tls-data",
        "pkjwt-no-algorithms",
        "pkjwt-hs256",
        "pkjwt-alg-none",
        "pkjwt-es256-but-only-rsa-keys",
        "pkjwt-with-a-secret",
        "tls-without-a-name",
        "tls-with-both-names",
        "tls-with-keys",
        "tls-wildcard-dns",
        "tls-upper-case-dns",
        "tls-dn-without-attribute",
        "tls-dn-with-newline",
        "secret-method-without-secret",
        "secret-method-with-jwks",
        "secret-method-with-jwks-uri",
        "secret-post-with-tls-name",
    ],
)
def test_each_method_takes_exactly_its_own_data(secret_hash: str, auth: AuthRegistration) -> None:
    with pytest.raises(InvalidRequest):
        register(secret_hash=secret_hash, auth=auth)


@pytest.mark.parametrize(
    "uri",
    [
        "http://shop.example/jwks",
        "https:///jwks",
        "https://user:pw@shop.example/jwks",
        "https://shop.example/jwks#frag",
        "https://shop.example:99999/jwks",
        "https://shop.example/jw ks",
        "https://shöp.example/jwks",
        "ftp://shop.example/jwks",
        "https://shop.example/" + "a" * 2048,
        "",
    ],
    ids=[
        "http",
        "no-host",
        "credentials",
        "fragment",
        "bad-port",
        "space",
        "non-ascii",
        "ftp",
        "long",
        "empty",
    ],
)
def test_a_jwks_uri_is_an_https_url_with_a_host(uri: str) -> None:
    with pytest.raises(InvalidRequest):
        validate_jwks_uri(uri)
