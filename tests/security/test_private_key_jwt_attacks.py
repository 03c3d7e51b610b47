"""Hostile client assertions (RFC 7523 §3, draft-ietf-oauth-rfc7523bis), one named case each,
against a real TokenService over gRPC (and its HTTP edge where the transport matters).

Each case asserts the status and the ErrorInfo reason the caller sees (every bad assertion is the
same ``INVALID_CLIENT``, RFC 7521 §4.2.1) and the precise reason the audit log records, which never
reaches the wire. Assertions are signed with PyJWT or built by hand from literal segments, never
by authsvc's own code.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import requests
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from authsvc.core.client_assertion import MAX_ASSERTION_LENGTH
from authsvc.core.clients import AuthRegistration, ClientAuthMethod
from authsvc.core.ratelimit import RateLimit
from authsvc.server.app import RunningServer, open_authority, start_server
from authsvc.v1 import token_pb2, token_pb2_grpc
from tests.assertions import ASSERTION_TYPE, ClientKeyPair, assertion, ec_key, jwks_json, rsa_key
from tests.conftest import ISSUER, RegisteredClient, TokenServer, serve_config
from tests.helpers import ServerThread
from tests.security.test_token_endpoint_attacks import Refusal, refusal_of

TIMEOUT = 10
UNAUTHENTICATED, INVALID_ARGUMENT = grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.INVALID_ARGUMENT
INVALID_CLIENT, INVALID_REQUEST = "INVALID_CLIENT", "INVALID_REQUEST"
TOKEN_ENDPOINT = ISSUER + "/oauth2/token"

SIGNER_KEY = rsa_key("signer-1")
ATTACKER_KEY = rsa_key("attacker-1")
EC_KEY = ec_key("es-1")


@dataclass
class World:
    server: TokenServer
    stub: token_pb2_grpc.TokenServiceStub
    shop: RegisteredClient  # a client_secret_basic client


def _start(config_dir: Path, **overrides: object) -> tuple[ServerThread[RunningServer], TokenServer]:
    # refusals are many and fast here: a high log rate, so that no audit event is dropped, and no
    # failed-authentication throttle (its own test is below), so that each refusal says its reason
    settings: dict[str, object] = {"refusal_log_rate": 10_000, "failed_auth_limit": None, **overrides}
    config = serve_config(config_dir, http_listen="127.0.0.1:0", **settings)
    thread: ServerThread[RunningServer] = ServerThread(
        lambda: start_server(config, authority=open_authority(config))
    )
    return thread, TokenServer(thread.start(), config, thread)


def _register_signers(server: TokenServer) -> None:
    clients = server.authority.clients
    pk = ClientAuthMethod.PRIVATE_KEY_JWT
    for client_id, auth in (
        ("signer", AuthRegistration(method=pk, jwks=jwks_json(SIGNER_KEY))),
        ("es-signer", AuthRegistration(method=pk, jwks=jwks_json(EC_KEY), signing_algs=("ES256",))),
        ("two-keys", AuthRegistration(method=pk, jwks=jwks_json(SIGNER_KEY, rsa_key("signer-2")))),
        ("disabled-signer", AuthRegistration(method=pk, jwks=jwks_json(SIGNER_KEY))),
        ("tls-client", AuthRegistration(method=ClientAuthMethod.TLS_CLIENT_AUTH, tls_san_dns="shop.example")),
    ):
        clients.register(client_id=client_id, scopes=["payments:read"], audiences=["payments"], auth=auth)
    clients.set_enabled("disabled-signer", False)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    thread, server = _start(tmp_path_factory.mktemp("pkjwt-attacks") / "data")
    try:
        _register_signers(server)
        shop = server.register("shop")
        with grpc.insecure_channel(server.target) as channel:
            yield World(server, token_pb2_grpc.TokenServiceStub(channel), shop)
    finally:
        thread.stop(grace=0)


@pytest.fixture
def audit(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger="authsvc.audit")
    return caplog


def issue(
    world: World, client_assertion: str, *, metadata: tuple[tuple[str, str], ...] = (), **fields: str
) -> Refusal:
    request = token_pb2.IssueTokenRequest(
        grant_type="client_credentials",
        client_assertion_type=fields.pop("client_assertion_type", ASSERTION_TYPE),
        client_assertion=client_assertion,
        **fields,
    )
    try:
        world.stub.IssueToken(request, metadata=metadata, timeout=TIMEOUT)
    except grpc.RpcError as err:
        return refusal_of(err)
    return Refusal(grpc.StatusCode.OK, None, None, (), "")


def last_refusal_reason(caplog: pytest.LogCaptureFixture) -> str:
    refused = [r for r in caplog.records if getattr(r, "event", None) == "token.refused"]
    assert refused, "no token.refused audit event"
    return str(getattr(refused[-1], "reason", ""))


def assert_refused(
    world: World,
    caplog: pytest.LogCaptureFixture,
    client_assertion: str,
    reason: str,
    *,
    code: grpc.StatusCode = UNAUTHENTICATED,
    wire: str = INVALID_CLIENT,
    **fields: str,
) -> None:
    refusal = issue(world, client_assertion, metadata=(), **fields)
    assert (refusal.code, refusal.reason, refusal.domain) == (code, wire, "authsvc"), refusal
    if reason:
        assert last_refusal_reason(caplog) == reason
        assert reason not in refusal.message  # the precise reason stays in the audit log
    assert client_assertion not in caplog.text  # never logged


def signed(key: ClientKeyPair = SIGNER_KEY, client_id: str = "signer", **kwargs: Any) -> str:
    return assertion(key, client_id=client_id, audience=ISSUER, **kwargs)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def literal(header: dict[str, object], claims: dict[str, object], signature: bytes = b"\x00" * 32) -> str:
    """A compact JWS from literal parts, signed by nobody."""
    return ".".join([_b64(json.dumps(header).encode()), _b64(json.dumps(claims).encode()), _b64(signature)])


def claims_for(client_id: str = "signer", **changes: object) -> dict[str, object]:
    now = int(time.time())
    body: dict[str, object] = {"iss": client_id, "sub": client_id, "aud": ISSUER}
    body.update(exp=now + 120, iat=now, jti=uuid.uuid4().hex)
    body.update(changes)
    return body


# -- what is accepted --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "client_id", "alg", "headers"),
    [
        (SIGNER_KEY, "signer", "RS256", {}),
        (SIGNER_KEY, "signer", "RS256", {"typ": None}),
        (SIGNER_KEY, "signer", "RS256", {"typ": "client-authentication+jwt"}),
        (SIGNER_KEY, "signer", "RS256", {"kid": None}),
        (EC_KEY, "es-signer", "ES256", {}),
    ],
    ids=["rs256-typ-jwt", "no-typ", "typ-client-authentication", "no-kid-one-key", "es256"],
)
def test_a_valid_assertion_gets_a_token(
    world: World, key: ClientKeyPair, client_id: str, alg: str, headers: dict[str, object]
) -> None:
    assert issue(world, signed(key, client_id, alg=alg, headers=headers)).code == grpc.StatusCode.OK


def test_an_assertion_expired_within_the_leeway_is_accepted(world: World) -> None:
    assert issue(world, signed(now=time.time() - 130)).code == grpc.StatusCode.OK  # exp 10 s ago


def test_the_client_id_parameter_may_name_the_same_client(world: World) -> None:
    assert issue(world, signed(), client_id="signer").code == grpc.StatusCode.OK


# -- RFC 7523 §3: each check refused by name -----------------------------------------------------------


def test_assertion_signed_by_another_key_under_the_registered_kid(
    world: World, audit: pytest.LogCaptureFixture
) -> None:
    forged = signed(ATTACKER_KEY, headers={"kid": SIGNER_KEY.kid})
    assert_refused(world, audit, forged, "bad_signature")


def test_assertion_signed_by_an_unregistered_key(world: World, audit: pytest.LogCaptureFixture) -> None:
    assert_refused(world, audit, signed(ATTACKER_KEY), "unknown_kid")


def test_assertion_without_kid_when_the_client_has_two_keys(
    world: World, audit: pytest.LogCaptureFixture
) -> None:
    assert_refused(world, audit, signed(client_id="two-keys", headers={"kid": None}), "unknown_kid")


def test_expired_assertion(world: World, audit: pytest.LogCaptureFixture) -> None:
    assert_refused(world, audit, signed(now=time.time() - 200, lifetime=100), "expired")


def test_assertion_living_longer_than_allowed(world: World, audit: pytest.LogCaptureFixture) -> None:
    # Authlib's default of 3600 s: over the 300 s the server allows by default
    assert_refused(world, audit, signed(lifetime=3600), "exp_too_far_ahead")


def test_iat_in_the_future_beyond_the_leeway(world: World, audit: pytest.LogCaptureFixture) -> None:
    now = int(time.time())
    assert_refused(world, audit, signed(iat=now + 120, exp=now + 200), "issued_in_the_future")


def test_nbf_in_the_future_beyond_the_leeway(world: World, audit: pytest.LogCaptureFixture) -> None:
    assert_refused(world, audit, signed(nbf=int(time.time()) + 120), "not_yet_valid")


@pytest.mark.parametrize(
    ("audience", "reason"),
    [
        ("https://another-as.example", "wrong_audience"),
        (TOKEN_ENDPOINT, "wrong_audience"),  # only behind --accept-token-endpoint-audience
        ([ISSUER], "audience_not_a_string"),  # rfc7523bis: the sole audience, as a string
        ([ISSUER, "https://another-as.example"], "audience_not_a_string"),
        (ISSUER + "/", "wrong_audience"),  # simple string comparison, RFC 3986 §6.2.1
    ],
    ids=["other-issuer", "token-endpoint", "array-of-the-issuer", "array-of-two", "trailing-slash"],
)
def test_assertion_for_another_audience(
    world: World, audit: pytest.LogCaptureFixture, audience: object, reason: str
) -> None:
    forged = assertion(SIGNER_KEY, client_id="signer", audience=audience)
    assert_refused(world, audit, forged, reason)


def test_iss_not_the_subject(world: World, audit: pytest.LogCaptureFixture) -> None:
    assert_refused(world, audit, signed(iss="shop"), "iss_mismatch")


def test_client_id_parameter_naming_another_client(world: World, audit: pytest.LogCaptureFixture) -> None:
    # the assertion is signer's own, the request claims to be es-signer
    assert_refused(world, audit, signed(), "alg_not_allowed", client_id="es-signer")
    assert_refused(world, audit, signed(), "sub_mismatch", client_id="two-keys")


def test_replayed_assertion(world: World, audit: pytest.LogCaptureFixture) -> None:
    once = signed()
    assert issue(world, once).code == grpc.StatusCode.OK
    assert_refused(world, audit, once, "jti_replayed")


def test_a_new_assertion_reusing_a_jti(world: World, audit: pytest.LogCaptureFixture) -> None:
    jti = uuid.uuid4().hex
    assert issue(world, signed(jti=jti)).code == grpc.StatusCode.OK
    assert_refused(world, audit, signed(jti=jti, lifetime=200), "jti_replayed")


def test_a_refused_assertion_spends_no_jti(world: World, audit: pytest.LogCaptureFixture) -> None:
    # the jti is recorded after the signature check: a forgery cannot burn a legitimate client's jti
    jti = uuid.uuid4().hex
    assert_refused(
        world, audit, signed(ATTACKER_KEY, headers={"kid": SIGNER_KEY.kid}, jti=jti), "bad_signature"
    )
    assert_refused(world, audit, signed(lifetime=3600, jti=jti), "exp_too_far_ahead")
    assert issue(world, signed(jti=jti)).code == grpc.StatusCode.OK


def test_alg_none(world: World, audit: pytest.LogCaptureFixture) -> None:
    assert_refused(world, audit, literal({"alg": "none", "typ": "JWT"}, claims_for()), "alg_not_supported")
    # and with the empty signature alg none really has: not even a JWS
    unsigned = literal({"alg": "none"}, claims_for()).rpartition(".")[0] + "."
    assert_refused(world, audit, unsigned, "assertion_malformed")


def test_hs256_with_the_public_key_as_the_secret(world: World, audit: pytest.LogCaptureFixture) -> None:
    # the classic key-confusion forgery: HMAC keyed with the client's published public key
    public_pem = SIGNER_KEY.private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    for secret in (public_pem, json.dumps(SIGNER_KEY.public_jwk).encode()):
        head = _b64(json.dumps({"alg": "HS256", "kid": SIGNER_KEY.kid, "typ": "JWT"}).encode())
        body = _b64(json.dumps(claims_for()).encode())
        mac = hmac.new(secret, f"{head}.{body}".encode(), hashlib.sha256).digest()
        assert_refused(world, audit, f"{head}.{body}.{_b64(mac)}", "alg_not_supported")


def test_an_algorithm_the_client_did_not_pin(world: World, audit: pytest.LogCaptureFixture) -> None:
    # signer pinned RS256: a PS256 signature by its very key is still refused
    assert_refused(world, audit, signed(alg="PS256"), "alg_not_allowed")


@pytest.mark.parametrize("claim", ["iss", "aud", "exp", "jti"])
def test_a_required_claim_missing(world: World, audit: pytest.LogCaptureFixture, claim: str) -> None:
    reason = {"aud": "missing_aud"}.get(claim, f"missing_{claim}")
    assert_refused(world, audit, signed(drop=(claim,)), reason)


def test_sub_missing(world: World, audit: pytest.LogCaptureFixture) -> None:
    # without sub the assertion names no client at all; with a client_id parameter it is checked
    assert_refused(world, audit, signed(drop=("sub",)), "assertion_malformed")
    assert_refused(world, audit, signed(drop=("sub",)), "missing_sub", client_id="signer")


@pytest.mark.parametrize(
    ("claim", "value", "reason"),
    [
        ("exp", "tomorrow", "exp_malformed"),
        ("exp", True, "exp_malformed"),
        ("iat", "now", "iat_malformed"),
        ("jti", 42, "jti_malformed"),
        ("jti", "j" * 257, "jti_malformed"),
        ("jti", "", "jti_malformed"),
    ],
    ids=["exp-string", "exp-bool", "iat-string", "jti-number", "jti-long", "jti-empty"],
)
def test_a_claim_of_the_wrong_type(
    world: World, audit: pytest.LogCaptureFixture, claim: str, value: object, reason: str
) -> None:
    changed: dict[str, Any] = {claim: value}
    assert_refused(world, audit, signed(**changed), reason)


@pytest.mark.parametrize(
    ("claim", "text", "reason"),
    [
        ("exp", "1" + "0" * 400, "exp_malformed"),
        ("iat", "-1" + "0" * 400, "iat_malformed"),
        ("exp", "1" * 5000, "assertion_malformed"),
    ],
    ids=["exp-too-large-for-a-float", "iat-too-large-for-a-float", "exp-of-5000-digits"],
)
def test_a_huge_integer_claim_is_refused_not_a_server_error(
    world: World, audit: pytest.LogCaptureFixture, claim: str, text: str, reason: str
) -> None:
    # float() of such an integer raises OverflowError, and int() of 5000 digits ValueError: either
    # escaping the check was a server_error (and a traceback in the log) for one unsigned request
    head = _b64(json.dumps({"alg": "RS256", "kid": SIGNER_KEY.kid}).encode())
    claims = claims_for()
    claims[claim] = 0
    body = json.dumps(claims).replace(f'"{claim}": 0', f'"{claim}": {text}', 1)
    assert_refused(world, audit, f"{head}.{_b64(body.encode())}.{_b64(b'x' * 256)}", reason)


def test_iss_as_an_array(world: World, audit: pytest.LogCaptureFixture) -> None:
    # PyJWT will not sign it: signed here by hand, with the signer's real key
    head = _b64(json.dumps({"alg": "RS256", "kid": SIGNER_KEY.kid}).encode())
    body = _b64(json.dumps(claims_for(iss=["signer"])).encode())
    assert isinstance(SIGNER_KEY.private_key, rsa.RSAPrivateKey)
    signature = SIGNER_KEY.private_key.sign(f"{head}.{body}".encode(), padding.PKCS1v15(), hashes.SHA256())
    assert_refused(world, audit, f"{head}.{body}.{_b64(signature)}", "iss_mismatch")


@pytest.mark.parametrize("typ", ["at+jwt", "application/at+jwt", "JOSE", "dpop+jwt"])
def test_a_token_of_another_type(world: World, audit: pytest.LogCaptureFixture, typ: str) -> None:
    assert_refused(world, audit, signed(headers={"typ": typ}), "typ_not_allowed")


def test_an_access_token_presented_as_an_assertion(world: World, audit: pytest.LogCaptureFixture) -> None:
    # a real access token of the signer (RFC 9068: typ at+jwt), signed by the server's own key
    token = world.stub.IssueToken(
        token_pb2.IssueTokenRequest(
            grant_type="client_credentials", client_assertion_type=ASSERTION_TYPE, client_assertion=signed()
        ),
        timeout=TIMEOUT,
    ).access_token
    assert_refused(world, audit, token, "typ_not_allowed")


@pytest.mark.parametrize(
    "member",
    [
        {"jwk": ATTACKER_KEY.public_jwk},
        {"jku": "https://attacker.example/jwks.json"},
        {"x5u": "https://attacker.example/cert.pem"},
        {"crit": ["exp"]},
        {"x5c": ["MIIB"]},
    ],
    ids=["embedded-jwk", "jku", "x5u", "crit", "x5c"],
)
def test_a_header_that_names_its_own_key_or_extensions(
    world: World, audit: pytest.LogCaptureFixture, member: dict[str, object]
) -> None:
    key = ATTACKER_KEY if "jwk" in member else SIGNER_KEY
    assert_refused(world, audit, signed(key, headers=member), "header_member_not_allowed")


def test_assertion_together_with_client_secret(world: World, audit: pytest.LogCaptureFixture) -> None:
    assert_refused(
        world,
        audit,
        signed(),
        "",
        code=INVALID_ARGUMENT,
        wire=INVALID_REQUEST,
        client_secret=world.shop.secret,
    )


def test_assertion_together_with_basic(world: World) -> None:
    basic = "Basic " + base64.b64encode(f"shop:{world.shop.secret}".encode()).decode()
    refusal = issue(world, signed(), metadata=(("authorization", basic),))
    assert (refusal.code, refusal.reason) == (INVALID_ARGUMENT, INVALID_REQUEST)


@pytest.mark.parametrize(
    "assertion_type",
    [
        "urn:ietf:params:oauth:client-assertion-type:saml2-bearer",
        "urn:ietf:params:oauth:grant-type:jwt-bearer",
        ASSERTION_TYPE.upper(),
        ASSERTION_TYPE + " ",
    ],
    ids=["saml2", "grant-type-urn", "upper-case", "trailing-space"],
)
def test_a_wrong_assertion_type(world: World, audit: pytest.LogCaptureFixture, assertion_type: str) -> None:
    assert_refused(world, audit, signed(), "assertion_type_unsupported", client_assertion_type=assertion_type)


def test_an_assertion_type_without_an_assertion(world: World) -> None:
    refusal = issue(world, "")
    assert (refusal.code, refusal.reason) == (INVALID_ARGUMENT, INVALID_REQUEST)


def test_an_assertion_for_a_client_registered_for_a_secret(
    world: World, audit: pytest.LogCaptureFixture
) -> None:
    # shop is client_secret_basic: its id in an assertion signed by anyone gets nowhere
    assert_refused(world, audit, signed(ATTACKER_KEY, client_id="shop"), "auth_method_not_allowed")


def test_a_secret_for_a_private_key_jwt_client(world: World, audit: pytest.LogCaptureFixture) -> None:
    with pytest.raises(grpc.RpcError) as refused:
        world.stub.IssueToken(
            token_pb2.IssueTokenRequest(
                grant_type="client_credentials", client_id="signer", client_secret=world.shop.secret
            ),
            timeout=TIMEOUT,
        )
    assert (refusal_of(refused.value).code, refusal_of(refused.value).reason) == (
        UNAUTHENTICATED,
        INVALID_CLIENT,
    )
    assert last_refusal_reason(audit) == "auth_method_not_allowed"


def test_a_tls_client_auth_client_cannot_authenticate_yet(
    world: World, audit: pytest.LogCaptureFixture
) -> None:
    # no mutual-TLS listener exists: neither an assertion nor a secret names it
    assert_refused(world, audit, signed(ATTACKER_KEY, client_id="tls-client"), "auth_method_not_allowed")


def test_an_unknown_client_answers_as_a_bad_signature_does(
    world: World, audit: pytest.LogCaptureFixture
) -> None:
    unknown = issue(world, signed(ATTACKER_KEY, client_id="nobody"))
    forged = issue(world, signed(ATTACKER_KEY, headers={"kid": SIGNER_KEY.kid}))
    assert (unknown.code, unknown.reason, unknown.message) == (forged.code, forged.reason, forged.message)
    assert_refused(world, audit, signed(ATTACKER_KEY, client_id="nobody"), "unknown_client")


def test_a_disabled_client(world: World, audit: pytest.LogCaptureFixture) -> None:
    assert_refused(world, audit, signed(client_id="disabled-signer"), "client_disabled")


def test_an_oversize_assertion_is_refused_before_it_is_parsed(world: World) -> None:
    refusal = issue(world, "a" * (MAX_ASSERTION_LENGTH + 1))
    assert (refusal.code, refusal.reason) == (INVALID_ARGUMENT, INVALID_REQUEST)


@pytest.mark.parametrize(
    "text",
    [
        "not-a-jwt",
        "a.b",
        "a.b.c.d",
        "eyJhbGciOiJSUzI1NiJ9.e30.",
        "=.=.=",
        literal({"alg": "RS256"}, {}) + "==",
    ],
    ids=["no-dots", "two-segments", "four-segments", "empty-signature", "padding", "padded-signature"],
)
def test_a_malformed_assertion(world: World, audit: pytest.LogCaptureFixture, text: str) -> None:
    assert_refused(world, audit, text, "assertion_malformed")


def test_duplicate_claims_are_refused(world: World, audit: pytest.LogCaptureFixture) -> None:
    # {"sub": "nobody", "sub": "signer"}: a lax parser and a strict one would disagree on the client
    head = _b64(json.dumps({"alg": "RS256", "kid": SIGNER_KEY.kid}).encode())
    body = json.dumps(claims_for()).replace('"sub"', '"sub": "nobody", "sub"', 1)
    assert_refused(world, audit, f"{head}.{_b64(body.encode())}.{_b64(b'x' * 256)}", "assertion_malformed")


# -- the same over HTTP -----------------------------------------------------------------------------------


def http_token(world: World, data: dict[str, str], **kwargs: object) -> tuple[int, str]:
    answer = requests.post(
        world.server.http_url + "/oauth2/token",
        data={"grant_type": "client_credentials", **data},
        timeout=TIMEOUT,
        **kwargs,  # type: ignore[arg-type]
    )
    return answer.status_code, str(answer.json().get("error", "")) or "ok"


def test_http_a_valid_assertion_gets_a_token(world: World) -> None:
    form = {"client_assertion_type": ASSERTION_TYPE, "client_assertion": signed()}
    assert http_token(world, form) == (200, "ok")


def test_http_assertion_signed_by_another_key(world: World) -> None:
    form = {
        "client_assertion_type": ASSERTION_TYPE,
        "client_assertion": signed(ATTACKER_KEY, headers={"kid": SIGNER_KEY.kid}),
    }
    assert http_token(world, form) == (401, "invalid_client")


def test_http_assertion_with_basic_is_invalid_request(world: World) -> None:
    form = {"client_assertion_type": ASSERTION_TYPE, "client_assertion": signed()}
    assert http_token(world, form, auth=("shop", world.shop.secret)) == (400, "invalid_request")


def test_http_assertion_with_client_secret_is_invalid_request(world: World) -> None:
    form = {
        "client_assertion_type": ASSERTION_TYPE,
        "client_assertion": signed(),
        "client_secret": world.shop.secret,
    }
    assert http_token(world, form) == (400, "invalid_request")


def test_http_repeated_client_assertion_is_invalid_request(world: World) -> None:
    data = [
        ("grant_type", "client_credentials"),
        ("client_assertion_type", ASSERTION_TYPE),
        ("client_assertion", signed()),
        ("client_assertion", signed(ATTACKER_KEY)),
    ]
    answer = requests.post(world.server.http_url + "/oauth2/token", data=data, timeout=TIMEOUT)
    assert (answer.status_code, answer.json()["error"]) == (400, "invalid_request")


def test_http_introspection_accepts_a_private_key_jwt_caller(world: World) -> None:
    form = {"client_assertion_type": ASSERTION_TYPE, "client_assertion": signed()}
    token = requests.post(
        world.server.http_url + "/oauth2/token",
        data={"grant_type": "client_credentials", **form},
        timeout=TIMEOUT,
    ).json()["access_token"]
    introspected = requests.post(
        world.server.http_url + "/oauth2/introspect",
        data={"token": token, "client_assertion_type": ASSERTION_TYPE, "client_assertion": signed()},
        timeout=TIMEOUT,
    )
    assert introspected.status_code == 200 and introspected.json()["active"] is True
    replayed = requests.post(
        world.server.http_url + "/oauth2/introspect",
        data={"token": token, **form},  # the assertion that got the token, once more
        timeout=TIMEOUT,
    )
    assert (replayed.status_code, replayed.json()["error"]) == (401, "invalid_client")


def test_the_metadata_lists_private_key_jwt_and_its_algorithms(world: World) -> None:
    document = requests.get(
        world.server.http_url + "/.well-known/oauth-authorization-server", timeout=TIMEOUT
    ).json()
    assert document["token_endpoint_auth_methods_supported"] == [
        "client_secret_basic",
        "client_secret_post",
        "private_key_jwt",
    ]
    assert document["token_endpoint_auth_signing_alg_values_supported"] == ["RS256", "PS256", "ES256"]
    assert "none" not in document["token_endpoint_auth_signing_alg_values_supported"]
    assert (
        document["introspection_endpoint_auth_methods_supported"]
        == document["token_endpoint_auth_methods_supported"]
    )


# -- the compatibility switch and replicas ------------------------------------------------------------------


def test_the_token_endpoint_audience_is_accepted_only_behind_the_switch(tmp_path: Path) -> None:
    thread, server = _start(tmp_path / "data", accept_token_endpoint_audience=True)
    try:
        _register_signers(server)
        with grpc.insecure_channel(server.target) as channel:
            compat = World(server, token_pb2_grpc.TokenServiceStub(channel), server.register("shop"))
            for audience in (TOKEN_ENDPOINT, ISSUER, [TOKEN_ENDPOINT], ["https://other.example", ISSUER]):
                got = issue(compat, assertion(SIGNER_KEY, client_id="signer", audience=audience))
                assert got.code == grpc.StatusCode.OK, audience
            other = issue(
                compat, assertion(SIGNER_KEY, client_id="signer", audience=["https://other.example"])
            )
            assert (other.code, other.reason) == (UNAUTHENTICATED, INVALID_CLIENT)
    finally:
        thread.stop(grace=0)


def test_forged_assertions_are_throttled_like_wrong_secrets(tmp_path: Path) -> None:
    # three bad assertions naming signer from one address, then that (client, address) is refused
    # RATE_LIMITED without its assertion being checked, a valid one included
    thread, server = _start(tmp_path / "data", failed_auth_limit=RateLimit(rate=1 / 3600, burst=3))
    try:
        _register_signers(server)
        with grpc.insecure_channel(server.target) as channel:
            throttled = World(server, token_pb2_grpc.TokenServiceStub(channel), RegisteredClient("-", "-"))
            forged = [
                issue(throttled, signed(ATTACKER_KEY, headers={"kid": SIGNER_KEY.kid})) for _ in range(5)
            ]
            assert [r.reason for r in forged] == [INVALID_CLIENT] * 3 + ["RATE_LIMITED"] * 2
            assert issue(throttled, signed()).reason == "RATE_LIMITED"
            assert issue(throttled, signed(EC_KEY, "es-signer", alg="ES256")).code == grpc.StatusCode.OK
    finally:
        thread.stop(grace=0)


def test_an_assertion_replayed_to_another_replica_on_the_same_postgresql(tmp_path: Path, pg_url: str) -> None:
    first_thread, first = _start(tmp_path / "a", database_url=pg_url)
    try:
        second_thread, second = _start(tmp_path / "b", database_url=pg_url)
        try:
            first.authority.clients.register(
                client_id="signer", scopes=["payments:read"], audiences=["payments"],
                auth=AuthRegistration(method=ClientAuthMethod.PRIVATE_KEY_JWT, jwks=jwks_json(SIGNER_KEY)),
            )  # fmt: skip
            once = signed()
            with grpc.insecure_channel(first.target) as a, grpc.insecure_channel(second.target) as b:
                on_a = World(first, token_pb2_grpc.TokenServiceStub(a), RegisteredClient("-", "-"))
                on_b = World(second, token_pb2_grpc.TokenServiceStub(b), RegisteredClient("-", "-"))
                assert issue(on_a, once).code == grpc.StatusCode.OK
                replayed = issue(on_b, once)
                assert (replayed.code, replayed.reason) == (UNAUTHENTICATED, INVALID_CLIENT)
                assert issue(on_b, signed()).code == grpc.StatusCode.OK  # a fresh assertion works there
                replayed_back = issue(on_a, once)
                assert (replayed_back.code, replayed_back.reason) == (UNAUTHENTICATED, INVALID_CLIENT)
        finally:
            second_thread.stop(grace=0)
    finally:
        first_thread.stop(grace=0)
