"""The private_key_jwt method in the core, on a frozen clock: the boundaries of every time check,
what is recorded against replay and when, the work an unknown client costs, and how the request
parser reads an assertion (RFC 7523 §2.2, §3; RFC 7521 §4.2)."""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Any

import pytest

from authsvc.core import auth_methods, client_keys
from authsvc.core.auth_methods import ClientSecretBasic, PrivateKeyJwt
from authsvc.core.client_assertion import AssertionPolicy, ClientKeysUnavailable
from authsvc.core.client_auth import PresentedCredentials, presented_credentials
from authsvc.core.client_keys import ClientKeySet, parse_client_jwks
from authsvc.core.clients import AuthRegistration, Client, ClientAuthMethod, new_client
from authsvc.core.errors import ConfigurationError, InvalidClient, InvalidRequest, refusal_detail
from authsvc.core.grants import TokenRequest, client_credentials_endpoint
from authsvc.core.keys import KeyState, SigningKey, generate_rsa_key
from authsvc.core.secrets import SecretHasher
from authsvc.core.tokens import TokenSigner
from authsvc.store.memory import MemoryStore
from tests.assertions import ASSERTION_TYPE, assertion, jwks_json, rsa_key
from tests.core.fakes import CountingRandom, FrozenClock

NOW = 1_700_000_000
ISSUER = "https://auth.test"
LEEWAY = 30
MAX_LIFETIME = 300
KEY = rsa_key("core-1")
OTHER = rsa_key("core-2")


@dataclass
class RecordingReplay:
    calls: list[tuple[str, str, int, int]] = field(default_factory=list)
    seen: set[tuple[str, str]] = field(default_factory=set)

    def use_assertion_jti(self, client_id: str, jti: str, *, expires_at: int, now: int) -> bool:
        self.calls.append((client_id, jti, expires_at, now))
        if (client_id, jti) in self.seen:
            return False
        self.seen.add((client_id, jti))
        return True


class CountingKeys:
    def __init__(self, keys: ClientKeySet | None) -> None:
        self.keys = keys
        self.calls = 0

    def keys_for(self, client: Client, kid: str | None) -> ClientKeySet:
        self.calls += 1
        if self.keys is None:
            raise ClientKeysUnavailable("unreachable")
        return self.keys


@dataclass
class Env:
    endpoint: Any
    store: MemoryStore
    clock: FrozenClock
    replay: RecordingReplay
    keys: CountingKeys


@pytest.fixture
def env() -> Env:
    clock = FrozenClock(NOW)
    store = MemoryStore()
    hasher = SecretHasher(b"pepper-for-tests-only-0123456789")
    auth = AuthRegistration(method=ClientAuthMethod.PRIVATE_KEY_JWT, jwks=jwks_json(KEY))
    store.create_client(
        new_client(client_id="signer", secret_hash="", scopes=["a"], audiences=["b"], now=NOW, auth=auth)
    )
    store.create_client(
        new_client(
            client_id="shop", secret_hash=hasher.hash("s3cret"), scopes=["a"], audiences=["b"], now=NOW
        )
    )
    signer = TokenSigner(
        SigningKey.from_private_key(generate_rsa_key(), state=KeyState.ACTIVE, created_at=0, activated_at=0)
    )
    endpoint = client_credentials_endpoint(
        issuer=ISSUER,
        clients=store,
        hasher=hasher,
        signer=lambda: signer,
        clock=clock,
        random=CountingRandom(),
    )
    replay = RecordingReplay()
    keys = CountingKeys(parse_client_jwks(jwks_json(KEY))[0])
    endpoint.register_auth_method(
        PrivateKeyJwt(
            keys=keys,
            replay=replay,
            policy=AssertionPolicy(issuer=ISSUER, max_lifetime=MAX_LIFETIME, leeway=LEEWAY),
            clock=clock,
        )
    )
    return Env(endpoint, store, clock, replay, keys)


def presented(text: str, client_id: str = "") -> PresentedCredentials:
    return presented_credentials(
        [], client_id=client_id, client_assertion=text, client_assertion_type=ASSERTION_TYPE
    )


def authenticate(env: Env, text: str, client_id: str = "") -> str | None:
    """None if the assertion authenticates, else the audit reason of its refusal."""
    try:
        env.endpoint.authenticate(presented(text, client_id))
    except InvalidClient as exc:
        return refusal_detail(exc)
    return None


def signed(client_id: str = "signer", **kwargs: Any) -> str:
    return assertion(KEY, client_id=client_id, audience=ISSUER, now=NOW, **kwargs)


# -- the time checks, at their boundaries -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("exp", "reason"),
    [
        (NOW - LEEWAY, "expired"),
        (NOW - LEEWAY + 1, None),
        (NOW + MAX_LIFETIME + LEEWAY, None),
        (NOW + MAX_LIFETIME + LEEWAY + 1, "exp_too_far_ahead"),
    ],
    ids=["expired-at-the-leeway", "within-the-leeway", "at-the-longest-lifetime", "beyond-it"],
)
def test_exp_boundaries(env: Env, exp: int, reason: str | None) -> None:
    assert authenticate(env, signed(exp=exp)) == reason


@pytest.mark.parametrize("claim", ["iat", "nbf"])
@pytest.mark.parametrize(
    ("offset", "accepted"), [(LEEWAY, True), (LEEWAY + 1, False)], ids=["at-leeway", "beyond"]
)
def test_iat_and_nbf_in_the_future(env: Env, claim: str, offset: int, accepted: bool) -> None:
    changes: dict[str, Any] = {claim: NOW + offset}
    reason = authenticate(env, signed(**changes))
    assert (
        reason is None
        if accepted
        else reason == {"iat": "issued_in_the_future", "nbf": "not_yet_valid"}[claim]
    )


def test_the_jti_is_kept_until_the_assertion_could_no_longer_be_accepted(env: Env) -> None:
    assert authenticate(env, signed(exp=NOW + 100, jti="j-1")) is None
    assert env.replay.calls == [("signer", "j-1", NOW + 100 + LEEWAY, NOW)]


def test_a_fractional_exp_is_kept_to_the_next_second(env: Env) -> None:
    assert authenticate(env, signed(exp=NOW + 100.2, jti="j-2")) is None
    assert env.replay.calls[-1][2] == NOW + 101 + LEEWAY


# -- what is recorded, what is looked up, and the work done ------------------------------------------


@pytest.mark.parametrize(
    ("text_of", "reason"),
    [
        (
            lambda: assertion(OTHER, client_id="signer", audience=ISSUER, now=NOW, headers={"kid": KEY.kid}),
            "bad_signature",
        ),
        (lambda: signed(exp=NOW - 100), "expired"),
        (lambda: signed(aud="https://elsewhere"), "wrong_audience"),
        (lambda: signed(alg="PS256"), "alg_not_allowed"),
        (lambda: assertion(OTHER, client_id="signer", audience=ISSUER, now=NOW), "unknown_kid"),
    ],
    ids=["bad-signature", "expired", "wrong-audience", "alg-not-pinned", "unknown-kid"],
)
def test_no_refusal_records_a_jti(env: Env, text_of: Any, reason: str) -> None:
    assert authenticate(env, text_of()) == reason
    assert env.replay.calls == []


def _count_signature_checks(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    count = [0]
    real = client_keys.verify_signature

    def counting(*args: Any) -> bool:
        count[0] += 1
        return real(*args)

    monkeypatch.setattr(auth_methods, "verify_signature", counting)
    return count


@pytest.mark.parametrize(
    ("client_id", "changes", "reason"),
    [
        ("nobody", {}, "unknown_client"),
        ("shop", {}, "auth_method_not_allowed"),
        ("signer", {"exp": NOW - 100}, "expired"),
        ("signer", {"iss": "shop"}, "iss_mismatch"),
        ("signer", {"alg": "PS256"}, "alg_not_allowed"),
        ("signer", {}, None),
    ],
    ids=["unknown", "other-method", "expired", "iss-mismatch", "alg-not-pinned", "accepted"],
)
def test_every_assertion_of_a_supported_alg_costs_one_signature_check(
    env: Env, monkeypatch: pytest.MonkeyPatch, client_id: str, changes: dict[str, Any], reason: str | None
) -> None:
    # whether the client exists, how it is registered and what fails: one signature check each, so
    # that timing tells neither existence nor which check failed
    checks = _count_signature_checks(monkeypatch)
    assert authenticate(env, signed(client_id, **changes)) == reason
    assert checks[0] == 1


def test_an_unknown_or_other_method_client_never_has_its_keys_looked_up(env: Env) -> None:
    assert authenticate(env, signed("nobody")) == "unknown_client"
    assert authenticate(env, signed("shop")) == "auth_method_not_allowed"
    assert env.keys.calls == 0


def test_unreachable_keys_refuse_the_client(env: Env) -> None:
    env.keys.keys = None
    assert authenticate(env, signed()) == "client_keys_unavailable"
    assert env.replay.calls == []


def test_the_method_blocks_so_it_never_runs_on_the_event_loop(env: Env) -> None:
    assert env.endpoint.may_block(presented(signed()))
    assert env.endpoint.auth_methods[-1] is ClientAuthMethod.PRIVATE_KEY_JWT
    assert env.endpoint.auth_signing_algs == ("RS256", "PS256", "ES256")


def test_the_policy_refuses_a_compatibility_switch_without_the_url() -> None:
    with pytest.raises(ConfigurationError):
        AssertionPolicy(issuer=ISSUER, accept_token_endpoint_audience=True)
    with pytest.raises(ConfigurationError):
        AssertionPolicy(issuer=ISSUER, max_lifetime=7200)


# -- reading the request (RFC 7521 §4.2, RFC 6749 §2.3) ----------------------------------------------


def test_the_client_is_the_one_the_assertion_names() -> None:
    got = presented(signed("signer"))
    assert (got.method, got.client_id) == (ClientAuthMethod.PRIVATE_KEY_JWT, "signer")
    assert presented(signed("signer"), client_id="other").client_id == "other"  # then refused: sub_mismatch


@pytest.mark.parametrize(
    ("fields", "authorization"),
    [
        ({"client_assertion": "x.y.z", "client_assertion_type": ASSERTION_TYPE, "client_secret": "s"}, []),
        (
            {"client_assertion": "x.y.z", "client_assertion_type": ASSERTION_TYPE},
            ["Basic " + base64.b64encode(b"a:b").decode()],
        ),
        ({"client_assertion": "x.y.z"}, []),
        ({"client_assertion_type": ASSERTION_TYPE}, []),
        ({"client_assertion": "a" * 8193, "client_assertion_type": ASSERTION_TYPE}, []),
    ],
    ids=["with-a-secret", "with-basic", "no-type", "no-assertion", "too-long"],
)
def test_malformed_assertion_requests_are_invalid_request(
    fields: dict[str, Any], authorization: list[str]
) -> None:
    with pytest.raises(InvalidRequest):
        presented_credentials(authorization, **fields)


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"client_assertion": "x.y.z", "client_assertion_type": "urn:other"}, "assertion_type_unsupported"),
        ({"client_assertion": "not-a-jwt", "client_assertion_type": ASSERTION_TYPE}, "assertion_malformed"),
    ],
    ids=["other-type", "unparseable-without-client-id"],
)
def test_an_assertion_naming_no_client_is_invalid_client(fields: dict[str, Any], reason: str) -> None:
    with pytest.raises(InvalidClient) as refused:
        presented_credentials([], **fields)
    assert refusal_detail(refused.value) == reason


def test_the_assertion_never_shows_in_a_repr() -> None:
    text = signed()
    credentials = presented(text)
    request = TokenRequest.of(credentials, grant_type="client_credentials", scope="", audience=())
    assert text not in repr(credentials) and text not in repr(request)
    assert request.credentials == credentials


def test_a_secret_method_handler_never_blocks() -> None:
    assert not ClientSecretBasic(SecretHasher(b"p" * 32), FrozenClock()).blocking
