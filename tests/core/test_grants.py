"""The token endpoint with the client credentials grant (RFC 6749 §4.4), RFC 9068 tokens."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Any

import jwt
import pytest

from authsvc.core.auth_methods import ClientSecretBasic, ClientSecretPost
from authsvc.core.certs import ClientCertificate
from authsvc.core.client_auth import PresentedCredentials
from authsvc.core.clients import Client, new_client
from authsvc.core.errors import (
    InvalidClient,
    InvalidRequest,
    InvalidScope,
    InvalidTarget,
    OAuthError,
    UnauthorizedClient,
    UnsupportedGrantType,
    refusal_detail,
)
from authsvc.core.grants import (
    ClientAuthMethod,
    IssuedToken,
    TokenEndpoint,
    TokenRequest,
    client_credentials_endpoint,
)
from authsvc.core.keys import KeyState, SigningKey, generate_rsa_key, rfc7638_thumbprint
from authsvc.core.secrets import SecretHasher
from authsvc.core.tokens import TokenSigner
from authsvc.store.memory import MemoryStore
from tests.core.fakes import CountingRandom, FrozenClock
from tests.pki import Pki

ISSUER = "https://auth.test"
CLIENT_ID = "shop"
SECRET = "authsvc_cs_test-secret-not-real"
ALLOWED_SCOPES = ("payments:read", "payments:write", "refunds")
DEFAULT_SCOPES = ("payments:read",)
AUDIENCES = ("payments", "ledger", "reports")
TTL = 600
ALL_CLAIMS = ["iss", "sub", "aud", "exp", "iat", "nbf", "jti", "client_id", "scope"]


@pytest.fixture(scope="module")
def signing_key() -> SigningKey:
    return SigningKey.from_private_key(
        generate_rsa_key(), state=KeyState.ACTIVE, created_at=0, activated_at=0
    )


@dataclass
class Env:
    endpoint: TokenEndpoint
    store: MemoryStore
    clock: FrozenClock
    hasher: SecretHasher
    key: SigningKey
    client: Client


@pytest.fixture
def env(signing_key: SigningKey) -> Env:
    # Frozen at (a whole second of) real time so that PyJWT's own exp/nbf/iat checks run unchanged.
    clock = FrozenClock(float(int(time.time())))
    hasher = SecretHasher(b"pepper-for-tests-only-0123456789")
    store = MemoryStore()
    client = new_client(
        client_id=CLIENT_ID,
        secret_hash=hasher.hash(SECRET),
        scopes=ALLOWED_SCOPES,
        default_scopes=DEFAULT_SCOPES,
        audiences=AUDIENCES,
        token_ttl=TTL,
        now=int(clock.now()),
    )
    store.create_client(client)
    signer = TokenSigner(signing_key)
    endpoint = client_credentials_endpoint(
        issuer=ISSUER,
        clients=store,
        hasher=hasher,
        signer=lambda: signer,
        clock=clock,
        random=CountingRandom(),
    )
    return Env(endpoint, store, clock, hasher, signing_key, client)


def request(
    *,
    grant_type: str = "client_credentials",
    client_id: str = CLIENT_ID,
    client_secret: str = SECRET,
    scope: str = "",
    audience: tuple[str, ...] = (),
) -> TokenRequest:
    return TokenRequest(
        grant_type=grant_type,
        client_id=client_id,
        client_secret=client_secret,
        scope=scope,
        audience=audience,
        auth_method=ClientAuthMethod.CLIENT_SECRET_BASIC,
    )


def decode(env: Env, issued: IssuedToken, audience: str) -> dict[str, Any]:
    return jwt.decode(
        issued.access_token,
        env.key.private_key.public_key(),
        algorithms=["RS256"],
        audience=audience,
        issuer=ISSUER,
        options={"require": ALL_CLAIMS},
    )


# -- scopes (RFC 6749 §3.3) ----------------------------------------------------------------


def test_empty_scope_yields_default_scopes(env: Env) -> None:
    issued = env.endpoint.issue(request())
    assert issued.scope == "payments:read"
    assert decode(env, issued, "payments")["scope"] == "payments:read"


@pytest.mark.parametrize(
    ("scope", "granted"),
    [
        ("payments:write", "payments:write"),
        ("refunds payments:read", "refunds payments:read"),
        ("payments:read payments:write refunds", "payments:read payments:write refunds"),
        ("refunds refunds", "refunds"),
    ],
    ids=["one", "two-in-request-order", "all", "duplicate"],
)
def test_requested_subset_is_granted(env: Env, scope: str, granted: str) -> None:
    issued = env.endpoint.issue(request(scope=scope))
    assert issued.scope == granted
    assert decode(env, issued, "payments")["scope"] == granted


@pytest.mark.parametrize(
    "scope",
    [
        "admin",
        "payments:read admin",
        "Payments:read",
        "PAYMENTS:READ",
        "payments:*",
        "payments",
        " payments:read",
    ],
    ids=["unknown", "one-unknown", "case-changed", "upper-case", "wildcard", "prefix", "malformed"],
)
def test_scope_not_allowed_is_invalid_scope(env: Env, scope: str) -> None:
    with pytest.raises(InvalidScope) as err:
        env.endpoint.issue(request(scope=scope))
    assert err.value.error == "invalid_scope"


# -- audiences (RFC 8707) -------------------------------------------------------------------


def test_no_audience_yields_default_audience(env: Env) -> None:
    claims = decode(env, env.endpoint.issue(request()), "payments")
    assert claims["aud"] == "payments"


def test_one_requested_audience_is_a_string(env: Env) -> None:
    claims = decode(env, env.endpoint.issue(request(audience=("ledger",))), "ledger")
    assert claims["aud"] == "ledger"


def test_several_audiences_become_a_list(env: Env) -> None:
    issued = env.endpoint.issue(request(audience=("ledger", "reports")))
    assert decode(env, issued, "reports")["aud"] == ["ledger", "reports"]


def test_duplicate_audiences_collapse(env: Env) -> None:
    claims = decode(env, env.endpoint.issue(request(audience=("ledger", "ledger"))), "ledger")
    assert claims["aud"] == "ledger"


@pytest.mark.parametrize(
    "audience",
    [("billing",), ("payments", "billing"), ("Payments",)],
    ids=["unknown", "one-unknown", "case-changed"],
)
def test_audience_not_allowed_is_invalid_target(env: Env, audience: tuple[str, ...]) -> None:
    with pytest.raises(InvalidTarget) as err:
        env.endpoint.issue(request(audience=audience))
    assert err.value.error == "invalid_target"


@pytest.mark.parametrize(
    "audience", [("",), ("a b",), ("payments",) * 17], ids=["empty", "space", "too-many"]
)
def test_malformed_audience_is_invalid_request(env: Env, audience: tuple[str, ...]) -> None:
    with pytest.raises(InvalidRequest):
        env.endpoint.issue(request(audience=audience))


# -- grant type -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "grant_type",
    ["password", "authorization_code", "Client_Credentials", "client_credentials ", "x" * 128],
    ids=["password", "authorization_code", "case-changed", "trailing-space", "long"],
)
def test_other_grant_type_is_unsupported(env: Env, grant_type: str) -> None:
    with pytest.raises(UnsupportedGrantType):
        env.endpoint.issue(request(grant_type=grant_type))


@pytest.mark.parametrize("grant_type", ["", "x" * 129], ids=["empty", "too-long"])
def test_missing_or_oversized_grant_type_is_invalid_request(env: Env, grant_type: str) -> None:
    with pytest.raises(InvalidRequest):
        env.endpoint.issue(request(grant_type=grant_type))


# -- client authentication (RFC 6749 §2.3.1) ------------------------------------------------


def test_unknown_client_and_wrong_secret_are_indistinguishable(env: Env) -> None:
    with pytest.raises(InvalidClient) as unknown:
        env.endpoint.issue(request(client_id="no-such-client"))
    with pytest.raises(InvalidClient) as wrong:
        env.endpoint.issue(request(client_secret=SECRET + "x"))
    assert unknown.value.description == wrong.value.description
    assert str(unknown.value) == str(wrong.value)
    assert unknown.value.reason == wrong.value.reason == "INVALID_CLIENT"


def test_disabled_client_is_invalid_client(env: Env) -> None:
    assert env.store.update_client(env.client.with_changes(enabled=False))
    with pytest.raises(InvalidClient) as disabled:
        env.endpoint.issue(request())
    with pytest.raises(InvalidClient) as wrong:
        env.endpoint.issue(request(client_secret="wrong"))
    assert disabled.value.description == wrong.value.description


@pytest.mark.parametrize(
    ("client_id", "client_secret"), [("", SECRET), (CLIENT_ID, "")], ids=["no-client-id", "no-secret"]
)
def test_missing_credentials_are_invalid_client(env: Env, client_id: str, client_secret: str) -> None:
    with pytest.raises(InvalidClient):
        env.endpoint.issue(request(client_id=client_id, client_secret=client_secret))


@pytest.mark.parametrize("grant_types", [(), ("authorization_code",)], ids=["none", "other-grant"])
def test_client_without_the_grant_is_unauthorized_client(env: Env, grant_types: tuple[str, ...]) -> None:
    assert env.store.update_client(env.client.with_changes(grant_types=grant_types))
    with pytest.raises(UnauthorizedClient):
        env.endpoint.issue(request())


@pytest.mark.parametrize(
    "client_id",
    ["shop shop", "shop:x", "shop\x00", "sh\u043ep", "x" * 129, "-shop"],
    ids=["space", "colon", "nul", "cyrillic-o", "too-long", "leading-dash"],
)
def test_malformed_client_id_is_invalid_request(env: Env, client_id: str) -> None:
    with pytest.raises(InvalidRequest):
        env.endpoint.issue(request(client_id=client_id))


def test_oversized_secret_is_invalid_request(env: Env) -> None:
    with pytest.raises(InvalidRequest):
        env.endpoint.issue(request(client_secret="s" * 513))


def test_error_descriptions_never_echo_the_secret(env: Env) -> None:
    probes = [
        request(client_secret="hunter2-hunter2"),
        request(client_id="nobody", client_secret="hunter2-hunter2"),
        request(client_secret="hunter2-hunter2", scope="admin"),
    ]
    for probe in probes:
        with pytest.raises(OAuthError) as err:
            env.endpoint.issue(probe)
        assert "hunter2" not in err.value.description
        assert "hunter2" not in repr(err.value)


# -- the issued token (RFC 9068) -------------------------------------------------------------


def test_issued_token_claims(env: Env) -> None:
    issued = env.endpoint.issue(request(scope="payments:read refunds", audience=("payments", "ledger")))
    claims = decode(env, issued, "ledger")
    now = int(env.clock.now())
    assert set(claims) == set(ALL_CLAIMS)
    assert claims["iss"] == ISSUER
    assert claims["sub"] == claims["client_id"] == CLIENT_ID
    assert claims["aud"] == ["payments", "ledger"]
    assert claims["iat"] == claims["nbf"] == now
    assert claims["exp"] == claims["iat"] + TTL
    assert claims["scope"] == "payments:read refunds"
    assert claims["jti"] == issued.jti
    assert issued.token_type == "Bearer"
    assert issued.expires_in == TTL
    assert issued.client_id == CLIENT_ID
    assert issued.kid == env.key.kid


def test_issue_uses_the_injected_clock(env: Env) -> None:
    first = decode(env, env.endpoint.issue(request()), "payments")
    env.clock.advance(-60)
    second = decode(env, env.endpoint.issue(request()), "payments")
    assert second["iat"] == first["iat"] - 60
    assert second["exp"] == first["exp"] - 60


def test_jti_is_unique_per_issue(env: Env) -> None:
    first = env.endpoint.issue(request())
    second = env.endpoint.issue(request())
    assert first.jti != second.jti
    assert decode(env, first, "payments")["jti"] != decode(env, second, "payments")["jti"]


def test_header(env: Env) -> None:
    header = jwt.get_unverified_header(env.endpoint.issue(request()).access_token)
    assert header == {
        "alg": "RS256",
        "typ": "at+jwt",
        "kid": rfc7638_thumbprint(env.key.private_key.public_key()),
    }


def test_token_verifies_with_the_published_jwk(env: Env) -> None:
    issued = env.endpoint.issue(request())
    public = jwt.PyJWK(dict(env.key.jwk))
    claims = jwt.decode(
        issued.access_token,
        public,
        algorithms=["RS256"],
        audience="payments",
        issuer=ISSUER,
        options={"require": ALL_CLAIMS},
    )
    assert claims["sub"] == CLIENT_ID


def test_token_fails_verification_with_other_audience_or_issuer(env: Env) -> None:
    issued = env.endpoint.issue(request())
    with pytest.raises(jwt.InvalidAudienceError):
        decode(env, issued, "ledger")
    with pytest.raises(jwt.InvalidIssuerError):
        jwt.decode(
            issued.access_token,
            env.key.private_key.public_key(),
            algorithms=["RS256"],
            audience="payments",
            issuer="https://evil.test",
        )


# -- redaction --------------------------------------------------------------------------------


def test_issued_token_repr_hides_the_token(env: Env) -> None:
    issued = env.endpoint.issue(request())
    for text in (repr(issued), str(issued), f"{issued}"):
        assert issued.access_token not in text
        for segment in issued.access_token.split("."):
            assert segment not in text
    assert issued.jti in repr(issued)


def test_token_request_repr_hides_the_secret() -> None:
    req = request(client_secret="authsvc_cs_do-not-log-me")
    for text in (repr(req), str(req), f"{req}"):
        assert "do-not-log-me" not in text
        assert "<redacted>" in text
        assert CLIENT_ID in text


# -- two live secrets: a rotation's grace period ------------------------------------------------

NEW_SECRET = "authsvc_cs_the-new-secret-not-real"


def _rotate(env: Env, grace: int) -> None:
    """What ClientRegistry.rotate_secret stores: the new hash, the old one kept for the grace."""
    now = int(env.clock.now())
    env.store.update_client_fields(
        CLIENT_ID,
        {
            "secret_hash": env.hasher.hash(NEW_SECRET),
            "previous_secret_hash": env.hasher.hash(SECRET) if grace else None,
            "previous_secret_expires_at": now + grace if grace else None,
        },
    )


def test_during_the_grace_both_secrets_authenticate(env: Env) -> None:
    _rotate(env, grace=6)
    env.clock.advance(5)
    assert env.endpoint.issue(request(client_secret=SECRET)).client_id == CLIENT_ID
    assert env.endpoint.issue(request(client_secret=NEW_SECRET)).client_id == CLIENT_ID


def test_after_the_grace_only_the_new_secret_authenticates(env: Env) -> None:
    _rotate(env, grace=6)
    env.clock.advance(6)  # the grace ends at its time, not a second later
    with pytest.raises(InvalidClient):
        env.endpoint.issue(request(client_secret=SECRET))
    assert env.endpoint.issue(request(client_secret=NEW_SECRET)).client_id == CLIENT_ID


def test_without_grace_the_old_secret_stops_at_once(env: Env) -> None:
    _rotate(env, grace=0)
    with pytest.raises(InvalidClient):
        env.endpoint.issue(request(client_secret=SECRET))
    assert env.endpoint.issue(request(client_secret=NEW_SECRET)).client_id == CLIENT_ID


def test_the_previous_secret_of_a_disabled_client_is_refused(env: Env) -> None:
    _rotate(env, grace=60)
    env.store.update_client_fields(CLIENT_ID, {"enabled": False})
    for secret in (SECRET, NEW_SECRET):
        with pytest.raises(InvalidClient):
            env.endpoint.issue(request(client_secret=secret))


class _CountingHasher(SecretHasher):
    def __init__(self, pepper: bytes) -> None:
        super().__init__(pepper)
        self.shapes: list[tuple[int, str, int]] = []

    def verify(self, secret: str, stored: str | None) -> bool:
        assert stored is not None
        self.shapes.append((len(secret), stored.partition("$")[0], len(stored)))
        return super().verify(secret, stored)


@pytest.mark.parametrize("rotated", [False, True], ids=["no-previous-secret", "in-grace"])
def test_authentication_does_the_same_work_with_or_without_a_previous_secret(env: Env, rotated: bool) -> None:
    # two keyed-hash comparisons of the same shape, whichever case, known client or not
    hasher = _CountingHasher(b"pepper-for-tests-only-0123456789")
    endpoint = TokenEndpoint(
        issuer=ISSUER,
        clients=env.store,
        hasher=hasher,
        signer=lambda: TokenSigner(env.key),
        clock=env.clock,
        random=CountingRandom(),
    )
    endpoint.register_auth_method(ClientSecretBasic(hasher, env.clock))
    if rotated:
        _rotate(env, grace=60)
    shapes = []
    for client_id in (CLIENT_ID, "nobody"):
        hasher.shapes.clear()
        presented = PresentedCredentials(
            ClientAuthMethod.CLIENT_SECRET_BASIC, client_id, "authsvc_cs_" + "W" * 43
        )
        with pytest.raises(InvalidClient):
            endpoint.authenticate(presented)
        shapes.append(list(hasher.shapes))
    assert len(shapes[0]) == 2
    assert shapes[0] == shapes[1]


# -- certificate-bound tokens (RFC 8705 §3) ---------------------------------------------------


def test_token_issued_over_mutual_tls_is_bound_to_the_certificate(env: Env, pki: Pki) -> None:
    req = dataclasses.replace(request(), client_certificate=ClientCertificate.from_der(pki.client.der))
    claims = decode(env, env.endpoint.issue(req), "payments")
    assert claims["cnf"] == {"x5t#S256": pki.client.thumbprint}


def test_token_issued_without_a_certificate_has_no_cnf(env: Env) -> None:
    assert "cnf" not in decode(env, env.endpoint.issue(request()), "payments")


# -- registered authentication methods (issue 13) --------------------------------------------------

BASIC, POST = ClientAuthMethod.CLIENT_SECRET_BASIC, ClientAuthMethod.CLIENT_SECRET_POST


def _presented(method: ClientAuthMethod, secret: str = SECRET) -> PresentedCredentials:
    return PresentedCredentials(method, CLIENT_ID, secret)


@pytest.mark.parametrize(
    ("registered", "presented", "accepted"),
    [(BASIC, BASIC, True), (BASIC, POST, True), (POST, POST, True), (POST, BASIC, False)],
    ids=["basic-basic", "basic-accepts-post", "post-post", "post-refuses-basic"],
)
def test_a_client_is_accepted_only_with_a_method_its_registration_accepts(
    env: Env, registered: ClientAuthMethod, presented: ClientAuthMethod, accepted: bool
) -> None:
    assert env.store.update_client(env.client.with_changes(auth_method=registered))
    if accepted:
        assert env.endpoint.authenticate(_presented(presented)).client_id == CLIENT_ID
        return
    with pytest.raises(InvalidClient) as refused:
        env.endpoint.authenticate(_presented(presented))
    assert refusal_detail(refused.value) == "auth_method_not_allowed"
    assert refused.value.client_known  # the id is registered: it may be logged in full


@pytest.mark.parametrize(
    "registered", [ClientAuthMethod.PRIVATE_KEY_JWT, ClientAuthMethod.TLS_CLIENT_AUTH], ids=lambda m: m.value
)
def test_a_client_without_a_secret_is_refused_a_secret_as_a_wrong_one(
    env: Env, registered: ClientAuthMethod
) -> None:
    # its stored hash is empty: even a request naming the empty string's hash gets nowhere
    assert env.store.update_client(env.client.with_changes(auth_method=registered, secret_hash=""))
    for method in (BASIC, POST):
        with pytest.raises(InvalidClient) as refused:
            env.endpoint.authenticate(_presented(method))
        assert refusal_detail(refused.value) == "auth_method_not_allowed"
        with pytest.raises(InvalidClient) as unknown:
            env.endpoint.authenticate(PresentedCredentials(method, "nobody", SECRET))
        assert (refused.value.description, refused.value.reason) == (
            unknown.value.description,
            unknown.value.reason,
        )


def test_a_method_not_registered_with_the_endpoint_is_invalid_client(env: Env) -> None:
    for method in (ClientAuthMethod.PRIVATE_KEY_JWT, ClientAuthMethod.TLS_CLIENT_AUTH):
        with pytest.raises(InvalidClient) as refused:
            env.endpoint.authenticate(PresentedCredentials(method, CLIENT_ID))
        assert refusal_detail(refused.value) == "auth_method_unsupported"


def test_a_client_of_another_method_costs_what_an_unknown_one_costs(env: Env) -> None:
    # a secret presented for a client registered for another method is checked against the decoy
    hasher = _CountingHasher(b"pepper-for-tests-only-0123456789")
    endpoint = TokenEndpoint(
        issuer=ISSUER,
        clients=env.store,
        hasher=hasher,
        signer=lambda: TokenSigner(env.key),
        clock=env.clock,
        random=CountingRandom(),
    )
    endpoint.register_auth_method(ClientSecretPost(hasher, env.clock))
    env.store.create_client(
        env.client.with_changes(client_id="signer", auth_method=ClientAuthMethod.PRIVATE_KEY_JWT)
    )
    shapes = []
    for client_id in ("signer", "nobody"):
        hasher.shapes.clear()
        with pytest.raises(InvalidClient):
            endpoint.authenticate(PresentedCredentials(POST, client_id, "authsvc_cs_" + "W" * 43))
        shapes.append(list(hasher.shapes))
    assert len(shapes[0]) == 2
    assert shapes[0] == shapes[1]


def test_the_endpoint_tells_its_methods_for_the_metadata(env: Env) -> None:
    assert env.endpoint.auth_methods == (BASIC, POST)
    assert env.endpoint.auth_signing_algs == ()
    assert not env.endpoint.may_block(_presented(BASIC))
