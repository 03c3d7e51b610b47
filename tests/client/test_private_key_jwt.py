"""The SDK's private_key_jwt credentials: what each assertion holds (checked with PyJWT), and
tokens from a real TokenService, sync and asyncio, one fresh assertion per fetch."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import grpc
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from authsvc.client import (
    AccessToken,
    AsyncClientCredentials,
    ClientCredentials,
    GrpcTokenFetcher,
    PrivateKeyJwtCredentials,
    TokenFetchError,
)
from authsvc.client.credentials import TokenRequests
from authsvc.client.private_key_jwt import main
from authsvc.core.client_keys import validate_client_jwks
from authsvc.core.clients import AuthRegistration, ClientAuthMethod
from tests.assertions import ASSERTION_TYPE, ClientKeyPair, ec_key, jwks_json, rsa_key
from tests.conftest import ISSUER, TokenServer
from tests.core.fakes import CountingRandom

RSA = rsa_key("sdk-rsa")
EC = ec_key("sdk-ec")
NOW = 1_700_000_000.0


def _decode(text: str, key: ClientKeyPair, alg: str = "RS256") -> dict[str, object]:
    return dict(
        jwt.decode(
            text,
            key.private_key.public_key(),
            algorithms=[alg],
            audience=ISSUER,
            options={"verify_exp": False},
        )
    )


def test_each_assertion_is_fresh_short_and_for_the_issuer() -> None:
    random = CountingRandom()
    key = PrivateKeyJwtCredentials(
        RSA.private_key, issuer=ISSUER, kid=RSA.kid, clock=lambda: NOW, random=random.token_bytes
    )
    first, second = key.assertion("shop"), key.assertion("shop")
    claims = _decode(first, RSA)
    assert claims["iss"] == claims["sub"] == "shop"
    assert claims["aud"] == ISSUER
    assert (claims["iat"], claims["exp"]) == (int(NOW), int(NOW) + 60)
    assert claims["jti"] != _decode(second, RSA)["jti"]
    assert jwt.get_unverified_header(first) == {
        "alg": "RS256",
        "kid": RSA.kid,
        "typ": "client-authentication+jwt",
    }


def test_an_ec_key_signs_es256_and_an_rsa_key_may_choose_ps256() -> None:
    es = PrivateKeyJwtCredentials(EC.private_key, issuer=ISSUER)
    assert es.alg == "ES256" and _decode(es.assertion("shop"), EC, "ES256")["sub"] == "shop"
    assert "kid" not in jwt.get_unverified_header(es.assertion("shop"))
    ps = PrivateKeyJwtCredentials(RSA.private_key, issuer=ISSUER, alg="PS256")
    assert _decode(ps.assertion("shop"), RSA, "PS256")["sub"] == "shop"


@pytest.mark.parametrize(
    ("key", "options"),
    [
        (rsa.generate_private_key(public_exponent=65537, key_size=1024), {}),  # noqa: S505 - refused, on purpose
        (ec.generate_private_key(ec.SECP384R1()), {}),
        (RSA.private_key, {"alg": "ES256"}),
        (EC.private_key, {"alg": "RS256"}),
        (RSA.private_key, {"alg": "HS256"}),
        (RSA.private_key, {"lifetime": 0}),
        (RSA.private_key, {"issuer": ""}),
    ],
    ids=["rsa-1024", "p-384", "rsa-es256", "ec-rs256", "hs256", "no-lifetime", "no-issuer"],
)
def test_unusable_keys_and_settings_are_refused(key: object, options: dict[str, object]) -> None:
    settings: dict[str, object] = {"issuer": ISSUER, **options}
    with pytest.raises(ValueError):
        PrivateKeyJwtCredentials(key, **settings)  # type: ignore[arg-type]


def test_from_pem_file_loads_the_key_and_repr_hides_it(tmp_path: Path) -> None:
    path = RSA.write_pem(tmp_path / "key.pem")
    key = PrivateKeyJwtCredentials.from_pem_file(path, issuer=ISSUER, kid=RSA.kid, lifetime=30)
    assert _decode(key.assertion("shop"), RSA)["sub"] == "shop"
    assert "BEGIN" not in repr(key) and "redacted" in repr(key)
    encrypted = tmp_path / "encrypted.pem"
    encrypted.write_bytes(
        EC.private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"pass phrase"),
        )
    )
    assert (
        PrivateKeyJwtCredentials.from_pem_file(encrypted, issuer=ISSUER, password=b"pass phrase").alg
        == "ES256"
    )
    with pytest.raises(ValueError):
        PrivateKeyJwtCredentials.from_pem_file(encrypted, issuer=ISSUER, password=b"wrong")
    (tmp_path / "public.pem").write_bytes(
        RSA.private_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    with pytest.raises(ValueError):
        PrivateKeyJwtCredentials.from_pem_file(tmp_path / "public.pem", issuer=ISSUER)


def test_every_request_carries_a_new_assertion_and_no_secret() -> None:
    requests = TokenRequests(
        client_id="shop",
        client_secret=None,
        private_key_jwt=PrivateKeyJwtCredentials(RSA.private_key, issuer=ISSUER),
        scopes=["payments:read"],
        audience=["payments"],
    )
    (metadata, first), (_, second) = requests(), requests()
    assert metadata == ()
    assert first.client_assertion_type == ASSERTION_TYPE and not first.client_secret and not first.client_id
    assert first.client_assertion != second.client_assertion
    assert (first.scope, list(first.audience)) == ("payments:read", ["payments"])


def test_a_fetcher_takes_a_secret_or_a_key_never_both(token_server: TokenServer) -> None:
    key = PrivateKeyJwtCredentials(RSA.private_key, issuer=ISSUER)
    with grpc.insecure_channel(token_server.target) as channel:
        for kwargs in ({}, {"client_secret": "s", "private_key_jwt": key}):
            with pytest.raises(ValueError):
                GrpcTokenFetcher(channel, client_id="shop", **kwargs)  # type: ignore[arg-type]
        fetcher = GrpcTokenFetcher(channel, client_id="shop", private_key_jwt=key)
        assert "private_key_jwt=<redacted>" in repr(fetcher)


def test_a_plaintext_channel_to_another_host_is_refused_before_anything_is_signed() -> None:
    key = PrivateKeyJwtCredentials(RSA.private_key, issuer=ISSUER)
    with grpc.insecure_channel("auth.example:50051") as channel, pytest.raises(ValueError):
        GrpcTokenFetcher(channel, client_id="shop", private_key_jwt=key)


# -- against a real TokenService -------------------------------------------------------------------------


def _register(server: TokenServer, client_id: str, key: ClientKeyPair, alg: str) -> None:
    server.authority.clients.register(
        client_id=client_id,
        scopes=["payments:read", "payments:write"],
        audiences=["payments"],
        auth=AuthRegistration(
            method=ClientAuthMethod.PRIVATE_KEY_JWT, jwks=jwks_json(key), signing_algs=(alg,)
        ),
    )


def _claims(server: TokenServer, token: AccessToken) -> dict[str, object]:
    keys = jwt.PyJWKSet.from_json(server.running.keyring.jwks)
    signing = keys[jwt.get_unverified_header(token.token)["kid"]].key
    return dict(jwt.decode(token.token, signing, algorithms=["RS256"], audience="payments", issuer=ISSUER))


@pytest.mark.parametrize(("key", "alg"), [(RSA, "RS256"), (EC, "ES256")], ids=["rs256", "es256"])
def test_sdk_credentials_get_tokens_from_a_real_server(
    token_server: TokenServer, tmp_path: Path, key: ClientKeyPair, alg: str
) -> None:
    _register(token_server, "sdk-signer", key, alg)
    signer = PrivateKeyJwtCredentials.from_pem_file(
        key.write_pem(tmp_path / "key.pem"), issuer=ISSUER, kid=key.kid
    )
    creds = ClientCredentials.for_target(
        token_server.target, client_id="sdk-signer", private_key_jwt=signer, scopes=["payments:write"]
    )
    try:
        first = creds.access_token()
        assert _claims(token_server, first)["scope"] == "payments:write"
        # every fetch signs a new assertion: none is refused as a replay
        for _ in range(3):
            creds.invalidate()
            again = creds.access_token()
            assert _claims(token_server, again)["sub"] == "sdk-signer"
        assert creds.fetches == 4
    finally:
        creds.close()


def test_async_sdk_credentials_get_tokens_from_a_real_server(token_server: TokenServer) -> None:
    _register(token_server, "aio-signer", RSA, "RS256")

    async def fetch_twice() -> tuple[AccessToken, AccessToken]:
        creds = AsyncClientCredentials.for_target(
            token_server.target,
            client_id="aio-signer",
            private_key_jwt=PrivateKeyJwtCredentials(RSA.private_key, issuer=ISSUER, kid=RSA.kid),
            scopes=["payments:read"],
        )
        try:
            first = await creds.access_token()
            creds.invalidate()
            return first, await creds.access_token()
        finally:
            await creds.close()

    first, second = asyncio.run(fetch_twice())
    assert first.token != second.token
    assert _claims(token_server, second)["client_id"] == "aio-signer"


def test_a_key_the_server_does_not_know_is_refused_at_once(token_server: TokenServer) -> None:
    _register(token_server, "sdk-signer", RSA, "RS256")
    stranger = PrivateKeyJwtCredentials(rsa_key("not-registered").private_key, issuer=ISSUER, kid=RSA.kid)
    creds = ClientCredentials.for_target(
        token_server.target, client_id="sdk-signer", private_key_jwt=stranger
    )
    try:
        with pytest.raises(TokenFetchError) as refused:
            creds.token()
        assert (refused.value.code, refused.value.reason) == (
            grpc.StatusCode.UNAUTHENTICATED,
            "INVALID_CLIENT",
        )
        assert creds.fetches == 1  # not retried
    finally:
        creds.close()


@pytest.mark.parametrize(
    ("key", "alg"), [(RSA, "RS256"), (RSA, "PS256"), (EC, "ES256")], ids=["rs256", "ps256", "es256"]
)
def test_the_public_jwks_is_what_registration_accepts(key: ClientKeyPair, alg: str) -> None:
    jwks = PrivateKeyJwtCredentials(key.private_key, issuer=ISSUER, kid=key.kid, alg=alg).public_jwks()
    [jwk] = json.loads(validate_client_jwks(jwks, [alg]))["keys"]
    assert (jwk["kid"], jwk["alg"], jwk["use"]) == (key.kid, alg, "sig")
    assert not {"d", "p", "q", "dp", "dq", "qi"} & set(jwk)


def test_the_command_line_prints_a_jwks_and_an_assertion(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pem = EC.write_pem(tmp_path / "key.pem")
    assert main(["jwks", str(pem), "--kid", "cli-1"]) == 0
    assert json.loads(capsys.readouterr().out)["keys"][0]["kid"] == "cli-1"
    assert main(["assertion", str(pem), "--client-id", "shop", "--issuer", ISSUER, "--kid", "cli-1"]) == 0
    claims = _decode(capsys.readouterr().out.strip(), EC, "ES256")
    assert claims["sub"] == "shop" and int(str(claims["exp"])) - int(str(claims["iat"])) == 60
    assert main(["jwks", str(tmp_path / "missing.pem")]) == 1
