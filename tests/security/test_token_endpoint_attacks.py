"""Hostile inputs to ``TokenService.IssueToken``, one named case per attack.

Every request goes over a real gRPC channel to the real server of the fixtures. Each case asserts
the gRPC status code and the ``google.rpc.ErrorInfo`` reason (domain ``authsvc``), never the
message text, and then shows that the attack changed nothing: every client record, every signing
key and the published JWKS are as before, and the legitimate client is still served.

Expected answers follow the order of checks in ``authsvc.core.grants.TokenEndpoint.issue``:
metadata parsing, grant type, audience syntax, scope syntax, client authentication (id syntax,
secret length, lookup and constant-time comparison), the client's grant types, and finally the
scopes and audiences the client is allowed. Nothing that depends on a client's existence or
registration is answered before its secret has been checked.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from urllib.parse import quote_plus

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from authsvc.core.clients import Client
from authsvc.store.base import StoredKey
from authsvc.v1 import token_pb2, token_pb2_grpc
from tests.conftest import RegisteredClient, TokenServer

GRANT = "client_credentials"
DOMAIN = "authsvc"
TIMEOUT = 10.0
ISSUE_TOKEN = "/authsvc.v1.TokenService/IssueToken"

OK = grpc.StatusCode.OK
INVALID_ARGUMENT = grpc.StatusCode.INVALID_ARGUMENT
UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED
PERMISSION_DENIED = grpc.StatusCode.PERMISSION_DENIED
RESOURCE_EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED

INVALID_CLIENT = "INVALID_CLIENT"
INVALID_REQUEST = "INVALID_REQUEST"
INVALID_SCOPE = "INVALID_SCOPE"
INVALID_TARGET = "INVALID_TARGET"
UNAUTHORIZED_CLIENT = "UNAUTHORIZED_CLIENT"
UNSUPPORTED_GRANT_TYPE = "UNSUPPORTED_GRANT_TYPE"

# A well-formed secret of the right shape that no client was ever given.
FORGED_SECRET = "authsvc_cs_" + "A" * 43

Metadata = tuple[tuple[str, str | bytes], ...]


# -- machinery ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Attempt:
    """One IssueToken call: the request message and the metadata sent with it."""

    request: token_pb2.IssueTokenRequest
    metadata: Metadata = ()


@dataclass(frozen=True)
class Refusal:
    """What the server answered, as the caller sees it on the wire."""

    code: grpc.StatusCode
    reason: str | None
    domain: str | None
    info_metadata: tuple[tuple[str, str], ...]
    message: str


@dataclass(frozen=True)
class State:
    """Everything an attack must leave untouched."""

    clients: tuple[Client, ...]
    keys: tuple[StoredKey, ...]
    jwks: str


@dataclass
class World:
    """A running TokenService with three registered clients and the state before the attack.

    ``shop`` is the legitimate client (payments:read payments:write, audience payments);
    ``warehouse`` is another enabled client; ``retired`` was disabled and ``legacy`` lost the
    client_credentials grant, both before any request reached the server's client cache.
    """

    server: TokenServer
    stub: token_pb2_grpc.TokenServiceStub
    shop: RegisteredClient
    warehouse: RegisteredClient
    retired: RegisteredClient
    legacy: RegisteredClient
    before: State

    def call(self, attempt: Attempt) -> Refusal:
        """Send ``attempt``; return the refusal, or a Refusal with code OK if a token was issued."""
        try:
            self.stub.IssueToken(attempt.request, metadata=attempt.metadata, timeout=TIMEOUT)
        except grpc.RpcError as err:
            return refusal_of(err)
        return Refusal(OK, None, None, (), "")

    def assert_unchanged(self) -> None:
        """The stored clients, keys and JWKS are as before, and ``shop`` still gets a token."""
        store = self.server.authority.store
        for registered in (self.shop, self.warehouse, self.retired, self.legacy):
            assert store.get_client(registered.client_id) == _by_id(self.before, registered.client_id)
        assert state_of(self.server) == self.before
        issued = self.stub.IssueToken(post(self.shop.client_id, self.shop.secret), timeout=TIMEOUT)
        assert issued.token_type == "Bearer"
        assert issued.access_token


def _by_id(state: State, client_id: str) -> Client:
    (client,) = [c for c in state.clients if c.client_id == client_id]
    return client


def state_of(server: TokenServer) -> State:
    authority = server.authority
    return State(
        clients=tuple(authority.store.list_clients()),
        keys=tuple(authority.store.list_keys()),
        jwks=authority.keys.jwks_json(),
    )


def refusal_of(err: grpc.RpcError) -> Refusal:
    """Code, ErrorInfo and message of a failed call. At most one ErrorInfo may be attached."""
    assert isinstance(err, grpc.Call)
    status = rpc_status.from_call(err)
    infos: list[error_details_pb2.ErrorInfo] = []
    if status is not None:
        for detail in status.details:
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                infos.append(info)
    assert len(infos) <= 1, f"more than one ErrorInfo: {infos}"
    info_or_none = infos[0] if infos else None
    return Refusal(
        code=err.code(),
        reason=None if info_or_none is None else str(info_or_none.reason),
        domain=None if info_or_none is None else str(info_or_none.domain),
        info_metadata=() if info_or_none is None else tuple(sorted(info_or_none.metadata.items())),
        message=err.details() or "",
    )


def assert_refused(refusal: Refusal, code: grpc.StatusCode, reason: str) -> None:
    assert (refusal.code, refusal.reason, refusal.domain) == (code, reason, DOMAIN), refusal


def post(
    client_id: str,
    secret: str,
    *,
    scope: str = "",
    audience: Sequence[str] = (),
    grant_type: str = GRANT,
) -> token_pb2.IssueTokenRequest:
    """A client_secret_post request."""
    return token_pb2.IssueTokenRequest(
        grant_type=grant_type, client_id=client_id, client_secret=secret, scope=scope, audience=list(audience)
    )


def body(**fields: str) -> token_pb2.IssueTokenRequest:
    """A request with only the given string fields (``grant_type`` defaults to client_credentials)."""
    fields.setdefault("grant_type", GRANT)
    return token_pb2.IssueTokenRequest(**fields)


def basic_value(client_id: str, secret: str) -> str:
    """RFC 6749 §2.3.1: form-urlencode id and secret, join with a colon, base64."""
    raw = f"{quote_plus(client_id)}:{quote_plus(secret)}"
    return "Basic " + base64.b64encode(raw.encode("utf-8")).decode("ascii")


def basic_raw(decoded: bytes) -> Metadata:
    """An authorization entry whose base64 payload is exactly ``decoded``."""
    return (("authorization", "Basic " + base64.b64encode(decoded).decode("ascii")),)


def basic(client_id: str, secret: str) -> Metadata:
    return (("authorization", basic_value(client_id, secret)),)


def flip_last(secret: str) -> str:
    return secret[:-1] + ("B" if secret[-1] != "B" else "C")


@pytest.fixture
def world(
    token_server: TokenServer, stub: token_pb2_grpc.TokenServiceStub, client: RegisteredClient
) -> World:
    warehouse = token_server.register("warehouse", scopes=("inventory:read",), audiences=("inventory",))
    retired = token_server.register("retired")
    token_server.authority.clients.set_enabled(retired.client_id, False)
    legacy = token_server.register("legacy")
    store = token_server.authority.store
    legacy_record = store.get_client(legacy.client_id)
    assert legacy_record is not None
    assert store.update_client(legacy_record.with_changes(grant_types=()))
    return World(token_server, stub, client, warehouse, retired, legacy, state_of(token_server))


@dataclass(frozen=True)
class Case:
    """One named attack: how to build it from the world, and the answer it must get."""

    name: str
    build: Callable[[World], Attempt]
    code: grpc.StatusCode
    reason: str


def run_cases(cases: list[Case]) -> tuple[list[Case], list[str]]:
    return cases, [c.name for c in cases]


def check(world: World, case: Case) -> None:
    assert_refused(world.call(case.build(world)), case.code, case.reason)
    world.assert_unchanged()


# -- client authentication: the secret ----------------------------------------------------------

SECRET_CASES, SECRET_IDS = run_cases(
    [
        Case(
            "wrong_secret",
            lambda w: Attempt(post(w.shop.client_id, FORGED_SECRET)),
            UNAUTHENTICATED,
            INVALID_CLIENT,
        ),
        Case(
            "wrong_secret_last_char_flipped",
            lambda w: Attempt(post(w.shop.client_id, flip_last(w.shop.secret))),
            UNAUTHENTICATED,
            INVALID_CLIENT,
        ),
        Case(
            "secret_truncated_by_one",
            lambda w: Attempt(post(w.shop.client_id, w.shop.secret[:-1])),
            UNAUTHENTICATED,
            INVALID_CLIENT,
        ),
        Case(
            "secret_truncated_to_half",
            lambda w: Attempt(post(w.shop.client_id, w.shop.secret[: len(w.shop.secret) // 2])),
            UNAUTHENTICATED,
            INVALID_CLIENT,
        ),
        Case(
            "secret_only_the_public_prefix",
            lambda w: Attempt(post(w.shop.client_id, "authsvc_cs_")),
            UNAUTHENTICATED,
            INVALID_CLIENT,
        ),
        Case(
            "secret_with_extra_suffix",
            lambda w: Attempt(post(w.shop.client_id, w.shop.secret + "A")),
            UNAUTHENTICATED,
            INVALID_CLIENT,
        ),
        Case(
            "secret_with_trailing_space",
            lambda w: Attempt(post(w.shop.client_id, w.shop.secret + " ")),
            UNAUTHENTICATED,
            INVALID_CLIENT,
        ),
        Case(
            "secret_with_trailing_newline",
            lambda w: Attempt(post(w.shop.client_id, w.shop.secret + "\n")),
            UNAUTHENTICATED,
            INVALID_CLIENT,
        ),
        Case(
            "secret_doubled",
            lambda w: Attempt(post(w.shop.client_id, w.shop.secret * 2)),
            UNAUTHENTICATED,
            INVALID_CLIENT,
        ),
        Case(
            "secret_with_trailing_nul",
            lambda w: Attempt(post(w.shop.client_id, w.shop.secret + "\x00")),
            UNAUTHENTICATED,
            INVALID_CLIENT,
        ),
        Case(
            "secret_with_nul_inside",
            lambda w: Attempt(post(w.shop.client_id, w.shop.secret[:12] + "\x00" + w.shop.secret[12:])),
            UNAUTHENTICATED,
            INVALID_CLIENT,
        ),
        Case(
            "secret_nul_truncated_prefix",  # a C-string reader would stop at the NUL
            lambda w: Attempt(post(w.shop.client_id, w.shop.secret[:12] + "\x00" + "A" * 32)),
            UNAUTHENTICATED,
            INVALID_CLIENT,
        ),
        Case(
            "secret_upper_cased",
            lambda w: Attempt(post(w.shop.client_id, w.shop.secret.upper())),
            UNAUTHENTICATED,
            INVALID_CLIENT,
        ),
        Case(
            "secret_fullwidth_lookalike",
            lambda w: Attempt(post(w.shop.client_id, "".join(chr(ord(c) + 0xFEE0) for c in w.shop.secret))),
            UNAUTHENTICATED,
            INVALID_CLIENT,
        ),
        Case(
            "secret_is_the_stored_hash",  # pass-the-hash
            lambda w: Attempt(post(w.shop.client_id, _by_id(w.before, w.shop.client_id).secret_hash)),
            UNAUTHENTICATED,
            INVALID_CLIENT,
        ),
        Case(
            "secret_of_another_client",
            lambda w: Attempt(post(w.shop.client_id, w.warehouse.secret)),
            UNAUTHENTICATED,
            INVALID_CLIENT,
        ),
        Case(
            "secret_of_another_client_basic",
            lambda w: Attempt(body(), basic(w.shop.client_id, w.warehouse.secret)),
            UNAUTHENTICATED,
            INVALID_CLIENT,
        ),
        Case("empty_secret", lambda w: Attempt(post(w.shop.client_id, "")), UNAUTHENTICATED, INVALID_CLIENT),
        Case(
            "empty_client_id_with_valid_secret",
            lambda w: Attempt(post("", w.shop.secret)),
            UNAUTHENTICATED,
            INVALID_CLIENT,
        ),
        Case("no_credentials_at_all", lambda w: Attempt(body()), UNAUTHENTICATED, INVALID_CLIENT),
        Case(
            "client_id_case_variant",
            lambda w: Attempt(post("SHOP", w.shop.secret)),
            UNAUTHENTICATED,
            INVALID_CLIENT,
        ),
        Case(
            "secret_too_long",
            lambda w: Attempt(post(w.shop.client_id, w.shop.secret + "A" * 512)),
            INVALID_ARGUMENT,
            INVALID_REQUEST,
        ),
    ]
)


@pytest.mark.parametrize("case", SECRET_CASES, ids=SECRET_IDS)
def test_secret_attack(world: World, case: Case) -> None:
    check(world, case)


def _attempt(transport: str, client_id: str, secret: str) -> Attempt:
    if transport == "basic":
        return Attempt(body(), basic(client_id, secret))
    return Attempt(post(client_id, secret))


@pytest.mark.parametrize(
    ("transport", "unknown_id"),
    [("post", "nobody"), ("basic", "nobody"), ("post", "shop2")],
    ids=["unknown_client_post", "unknown_client_basic", "unknown_client_near_name_post"],
)
def test_unknown_client_answers_exactly_like_wrong_secret(
    world: World, transport: str, unknown_id: str
) -> None:
    """RFC 6749 §2.3 and DESIGN §4: whether a client exists must not be observable. Status,
    reason, ErrorInfo metadata and message must all be identical."""
    wrong_secret = world.call(_attempt(transport, world.shop.client_id, FORGED_SECRET))
    unknown = world.call(_attempt(transport, unknown_id, FORGED_SECRET))
    unknown_with_real_secret = world.call(_attempt(transport, unknown_id, world.shop.secret))
    assert_refused(wrong_secret, UNAUTHENTICATED, INVALID_CLIENT)
    assert unknown == wrong_secret
    assert unknown_with_real_secret == wrong_secret
    world.assert_unchanged()
    assert world.server.authority.store.get_client(unknown_id) is None


@pytest.mark.parametrize(
    "transport", ["post", "basic"], ids=["disabled_client_post", "disabled_client_basic"]
)
def test_disabled_client_with_right_secret_answers_like_wrong_secret(world: World, transport: str) -> None:
    """A disabled client presenting its real secret learns nothing more than a guesser."""
    disabled = world.call(_attempt(transport, world.retired.client_id, world.retired.secret))
    wrong_secret = world.call(_attempt(transport, world.shop.client_id, FORGED_SECRET))
    disabled_wrong_secret = world.call(_attempt(transport, world.retired.client_id, FORGED_SECRET))
    assert_refused(disabled, UNAUTHENTICATED, INVALID_CLIENT)
    assert disabled == wrong_secret == disabled_wrong_secret
    world.assert_unchanged()
    record = world.server.authority.store.get_client(world.retired.client_id)
    assert record is not None
    assert not record.enabled


# -- client_id: NUL bytes, look-alikes, SQL, length ---------------------------------------------

CLIENT_ID_CASES, CLIENT_ID_IDS = run_cases(
    [
        Case(
            "client_id_trailing_nul",
            lambda w: Attempt(post("shop\x00", w.shop.secret)),
            INVALID_ARGUMENT,
            INVALID_REQUEST,
        ),
        Case(
            "client_id_leading_nul",
            lambda w: Attempt(post("\x00shop", w.shop.secret)),
            INVALID_ARGUMENT,
            INVALID_REQUEST,
        ),
        Case(
            "client_id_nul_then_other_client",
            lambda w: Attempt(post("shop\x00warehouse", w.shop.secret)),
            INVALID_ARGUMENT,
            INVALID_REQUEST,
        ),
        Case(
            "client_id_nul_in_basic",
            lambda w: Attempt(body(), basic("shop\x00", w.shop.secret)),
            INVALID_ARGUMENT,
            INVALID_REQUEST,
        ),
        Case(
            "client_id_cyrillic_dze_lookalike",
            lambda w: Attempt(post("\u0455hop", w.shop.secret)),
            INVALID_ARGUMENT,
            INVALID_REQUEST,
        ),
        Case(
            "client_id_fullwidth",
            lambda w: Attempt(post("\uff53\uff48\uff4f\uff50", w.shop.secret)),
            INVALID_ARGUMENT,
            INVALID_REQUEST,
        ),
        Case(
            "client_id_zero_width_joiner",
            lambda w: Attempt(post("sh\u200dop", w.shop.secret)),
            INVALID_ARGUMENT,
            INVALID_REQUEST,
        ),
        Case(
            "client_id_zero_width_space_suffix",
            lambda w: Attempt(post("shop\u200b", w.shop.secret)),
            INVALID_ARGUMENT,
            INVALID_REQUEST,
        ),
        Case(
            "client_id_right_to_left_override",
            lambda w: Attempt(post("\u202epohs", w.shop.secret)),
            INVALID_ARGUMENT,
            INVALID_REQUEST,
        ),
        Case(
            "client_id_combining_mark",
            lambda w: Attempt(post("sho\u0301p", w.shop.secret)),
            INVALID_ARGUMENT,
            INVALID_REQUEST,
        ),
        Case(
            "client_id_lookalike_in_basic",
            lambda w: Attempt(body(), basic("\u0455hop", w.shop.secret)),
            INVALID_ARGUMENT,
            INVALID_REQUEST,
        ),
        Case(
            "client_id_trailing_space",
            lambda w: Attempt(post("shop ", w.shop.secret)),
            INVALID_ARGUMENT,
            INVALID_REQUEST,
        ),
        Case(
            "client_id_too_long",
            lambda w: Attempt(post("s" * 129, w.shop.secret)),
            INVALID_ARGUMENT,
            INVALID_REQUEST,
        ),
        Case(
            "client_id_path_traversal",
            lambda w: Attempt(post("../shop", w.shop.secret)),
            INVALID_ARGUMENT,
            INVALID_REQUEST,
        ),
    ]
)


@pytest.mark.parametrize("case", CLIENT_ID_CASES, ids=CLIENT_ID_IDS)
def test_client_id_attack(world: World, case: Case) -> None:
    check(world, case)


SQL_CASES, SQL_IDS = run_cases(
    [
        Case(
            "sql_client_id_or_true",
            lambda w: Attempt(post("shop' OR '1'='1", w.shop.secret)),
            INVALID_ARGUMENT,
            INVALID_REQUEST,
        ),
        Case(
            "sql_client_id_drop_table",
            lambda w: Attempt(post("shop; DROP TABLE clients;--", w.shop.secret)),
            INVALID_ARGUMENT,
            INVALID_REQUEST,
        ),
        Case(
            "sql_client_id_comment",
            lambda w: Attempt(post("shop'--", FORGED_SECRET)),
            INVALID_ARGUMENT,
            INVALID_REQUEST,
        ),
        Case(
            "sql_client_id_union",
            lambda w: Attempt(post("x' UNION SELECT secret_hash FROM clients--", FORGED_SECRET)),
            INVALID_ARGUMENT,
            INVALID_REQUEST,
        ),
        Case(
            "sql_client_id_like_wildcard_underscore",
            lambda w: Attempt(post("sho_", w.shop.secret)),
            UNAUTHENTICATED,
            INVALID_CLIENT,
        ),
        Case(
            "sql_client_id_like_wildcard_percent",
            lambda w: Attempt(post("s%", w.shop.secret)),
            INVALID_ARGUMENT,
            INVALID_REQUEST,
        ),
        Case(
            "sql_client_id_in_basic",
            lambda w: Attempt(body(), basic("shop' OR '1'='1", w.shop.secret)),
            INVALID_ARGUMENT,
            INVALID_REQUEST,
        ),
        Case(
            "sql_secret_or_true",
            lambda w: Attempt(post(w.shop.client_id, "' OR '1'='1")),
            UNAUTHENTICATED,
            INVALID_CLIENT,
        ),
        Case(
            "sql_secret_drop_table",
            lambda w: Attempt(post(w.shop.client_id, "x'; DROP TABLE clients;--")),
            UNAUTHENTICATED,
            INVALID_CLIENT,
        ),
        Case(
            "sql_scope_or_true",
            lambda w: Attempt(post(w.shop.client_id, w.shop.secret, scope="payments:read' OR '1'='1")),
            INVALID_ARGUMENT,
            INVALID_SCOPE,
        ),
        Case(
            "sql_scope_drop_table",
            lambda w: Attempt(
                post(w.shop.client_id, w.shop.secret, scope="payments:read; DROP TABLE clients;--")
            ),
            INVALID_ARGUMENT,
            INVALID_SCOPE,
        ),
        Case(
            "sql_scope_quoted_single_token",
            lambda w: Attempt(post(w.shop.client_id, w.shop.secret, scope="payments:read';--")),
            INVALID_ARGUMENT,
            INVALID_SCOPE,
        ),
        Case(
            "sql_audience_or_true",
            lambda w: Attempt(post(w.shop.client_id, w.shop.secret, audience=["payments' OR '1'='1"])),
            INVALID_ARGUMENT,
            INVALID_REQUEST,
        ),
    ]
)


@pytest.mark.parametrize("case", SQL_CASES, ids=SQL_IDS)
def test_sql_injection_attack(world: World, case: Case) -> None:
    check(world, case)
    # The tables are still there and still hold exactly what they held.
    assert [c.client_id for c in world.server.authority.clients.list_clients()] == [
        "legacy",
        "retired",
        "shop",
        "warehouse",
    ]


# -- scope ----------------------------------------------------------------------------------------


def _scoped(scope: str) -> Callable[[World], Attempt]:
    return lambda w: Attempt(post(w.shop.client_id, w.shop.secret, scope=scope))


SCOPE_CASES, SCOPE_IDS = run_cases(
    [
        Case("scope_upper_case", _scoped("PAYMENTS:READ"), INVALID_ARGUMENT, INVALID_SCOPE),
        Case("scope_capitalised", _scoped("Payments:read"), INVALID_ARGUMENT, INVALID_SCOPE),
        Case("scope_wildcard_suffix", _scoped("payments:*"), INVALID_ARGUMENT, INVALID_SCOPE),
        Case("scope_wildcard_star", _scoped("*"), INVALID_ARGUMENT, INVALID_SCOPE),
        Case("scope_parent_resource", _scoped("payments"), INVALID_ARGUMENT, INVALID_SCOPE),
        Case("scope_parent_with_colon", _scoped("payments:"), INVALID_ARGUMENT, INVALID_SCOPE),
        Case("scope_prefix_extension", _scoped("payments:read2"), INVALID_ARGUMENT, INVALID_SCOPE),
        Case("scope_truncated", _scoped("payments:rea"), INVALID_ARGUMENT, INVALID_SCOPE),
        Case("scope_escalation_not_allowed", _scoped("payments:refund"), INVALID_ARGUMENT, INVALID_SCOPE),
        Case(
            "scope_escalation_mixed_with_allowed",
            _scoped("payments:read payments:refund"),
            INVALID_ARGUMENT,
            INVALID_SCOPE,
        ),
        Case("scope_of_another_client", _scoped("inventory:read"), INVALID_ARGUMENT, INVALID_SCOPE),
        Case("scope_double_space", _scoped("payments:read  payments:write"), INVALID_ARGUMENT, INVALID_SCOPE),
        Case("scope_leading_space", _scoped(" payments:read"), INVALID_ARGUMENT, INVALID_SCOPE),
        Case("scope_trailing_space", _scoped("payments:read "), INVALID_ARGUMENT, INVALID_SCOPE),
        Case("scope_only_space", _scoped(" "), INVALID_ARGUMENT, INVALID_SCOPE),
        Case(
            "scope_tab_separated", _scoped("payments:read\tpayments:write"), INVALID_ARGUMENT, INVALID_SCOPE
        ),
        Case(
            "scope_newline_separated",
            _scoped("payments:read\npayments:write"),
            INVALID_ARGUMENT,
            INVALID_SCOPE,
        ),
        Case(
            "scope_comma_separated", _scoped("payments:read,payments:write"), INVALID_ARGUMENT, INVALID_SCOPE
        ),
        Case(
            "scope_nbsp_separated",
            _scoped("payments:read\u00a0payments:write"),
            INVALID_ARGUMENT,
            INVALID_SCOPE,
        ),
        Case(
            "scope_zero_width_space_separated",
            _scoped("payments:read\u200bpayments:write"),
            INVALID_ARGUMENT,
            INVALID_SCOPE,
        ),
        Case("scope_double_quote", _scoped('payments:read"'), INVALID_ARGUMENT, INVALID_SCOPE),
        Case("scope_backslash", _scoped("payments:read\\"), INVALID_ARGUMENT, INVALID_SCOPE),
        Case("scope_nul", _scoped("payments:read\x00"), INVALID_ARGUMENT, INVALID_SCOPE),
        Case("scope_cyrillic_a_lookalike", _scoped("p\u0430yments:read"), INVALID_ARGUMENT, INVALID_SCOPE),
        Case(
            "scope_fullwidth",
            _scoped("\uff50\uff41\uff59\uff4d\uff45\uff4e\uff54\uff53:read"),
            INVALID_ARGUMENT,
            INVALID_SCOPE,
        ),
        Case("scope_fullwidth_colon", _scoped("payments\uff1aread"), INVALID_ARGUMENT, INVALID_SCOPE),
        Case("scope_zero_width_joiner", _scoped("payments:\u200dread"), INVALID_ARGUMENT, INVALID_SCOPE),
        Case("scope_right_to_left_override", _scoped("payments:read\u202e"), INVALID_ARGUMENT, INVALID_SCOPE),
        Case("scope_too_long", _scoped(" ".join(["payments:read"] * 200)), INVALID_ARGUMENT, INVALID_SCOPE),
    ]
)


@pytest.mark.parametrize("case", SCOPE_CASES, ids=SCOPE_IDS)
def test_scope_attack(world: World, case: Case) -> None:
    check(world, case)


# -- audience -------------------------------------------------------------------------------------


def _aimed(*audience: str) -> Callable[[World], Attempt]:
    return lambda w: Attempt(post(w.shop.client_id, w.shop.secret, audience=audience))


AUDIENCE_CASES, AUDIENCE_IDS = run_cases(
    [
        Case("audience_not_allowed", _aimed("ledger"), INVALID_ARGUMENT, INVALID_TARGET),
        Case("audience_of_another_client", _aimed("inventory"), INVALID_ARGUMENT, INVALID_TARGET),
        Case(
            "audience_allowed_plus_not_allowed",
            _aimed("payments", "ledger"),
            INVALID_ARGUMENT,
            INVALID_TARGET,
        ),
        Case("audience_wildcard", _aimed("*"), INVALID_ARGUMENT, INVALID_TARGET),
        Case("audience_case_variant", _aimed("Payments"), INVALID_ARGUMENT, INVALID_TARGET),
        Case("audience_suffix_slash", _aimed("payments/"), INVALID_ARGUMENT, INVALID_TARGET),
        Case("audience_suffix_domain", _aimed("payments.evil.example"), INVALID_ARGUMENT, INVALID_TARGET),
        Case("audience_prefix", _aimed("payment"), INVALID_ARGUMENT, INVALID_TARGET),
        Case("audience_trailing_space", _aimed("payments "), INVALID_ARGUMENT, INVALID_REQUEST),
        Case("audience_leading_space", _aimed(" payments"), INVALID_ARGUMENT, INVALID_REQUEST),
        Case("audience_nul_suffix", _aimed("payments\x00"), INVALID_ARGUMENT, INVALID_REQUEST),
        Case("audience_cyrillic_lookalike", _aimed("p\u0430yments"), INVALID_ARGUMENT, INVALID_REQUEST),
        Case("audience_zero_width_joiner", _aimed("pay\u200dments"), INVALID_ARGUMENT, INVALID_REQUEST),
        Case("audience_empty_entry", _aimed(""), INVALID_ARGUMENT, INVALID_REQUEST),
        Case("audience_too_many", _aimed(*(["payments"] * 17)), INVALID_ARGUMENT, INVALID_REQUEST),
        Case("audience_too_long", _aimed("p" * 257), INVALID_ARGUMENT, INVALID_REQUEST),
    ]
)


@pytest.mark.parametrize("case", AUDIENCE_CASES, ids=AUDIENCE_IDS)
def test_audience_attack(world: World, case: Case) -> None:
    check(world, case)


# -- grant type -----------------------------------------------------------------------------------


def _granted(grant_type: str) -> Callable[[World], Attempt]:
    return lambda w: Attempt(post(w.shop.client_id, w.shop.secret, grant_type=grant_type))


GRANT_CASES, GRANT_IDS = run_cases(
    [
        Case("grant_password", _granted("password"), INVALID_ARGUMENT, UNSUPPORTED_GRANT_TYPE),
        Case(
            "grant_authorization_code",
            _granted("authorization_code"),
            INVALID_ARGUMENT,
            UNSUPPORTED_GRANT_TYPE,
        ),
        Case("grant_refresh_token", _granted("refresh_token"), INVALID_ARGUMENT, UNSUPPORTED_GRANT_TYPE),
        Case(
            "grant_jwt_bearer",
            _granted("urn:ietf:params:oauth:grant-type:jwt-bearer"),
            INVALID_ARGUMENT,
            UNSUPPORTED_GRANT_TYPE,
        ),
        Case("grant_upper_case", _granted("CLIENT_CREDENTIALS"), INVALID_ARGUMENT, UNSUPPORTED_GRANT_TYPE),
        Case(
            "grant_trailing_space", _granted("client_credentials "), INVALID_ARGUMENT, UNSUPPORTED_GRANT_TYPE
        ),
        Case(
            "grant_leading_space", _granted(" client_credentials"), INVALID_ARGUMENT, UNSUPPORTED_GRANT_TYPE
        ),
        Case(
            "grant_trailing_nul", _granted("client_credentials\x00"), INVALID_ARGUMENT, UNSUPPORTED_GRANT_TYPE
        ),
        Case("grant_hyphenated", _granted("client-credentials"), INVALID_ARGUMENT, UNSUPPORTED_GRANT_TYPE),
        Case("grant_empty", _granted(""), INVALID_ARGUMENT, INVALID_REQUEST),
        Case("grant_too_long", _granted("client_credentials" * 8), INVALID_ARGUMENT, INVALID_REQUEST),
        Case(
            "grant_not_registered_for_client",
            lambda w: Attempt(post(w.legacy.client_id, w.legacy.secret)),
            PERMISSION_DENIED,
            UNAUTHORIZED_CLIENT,
        ),
    ]
)


@pytest.mark.parametrize("case", GRANT_CASES, ids=GRANT_IDS)
def test_grant_type_attack(world: World, case: Case) -> None:
    check(world, case)


# -- probing a client's registration without its secret ------------------------------------------

PROBE_CASES, PROBE_IDS = run_cases(
    [
        Case(
            "probe_scope_with_wrong_secret",
            lambda w: Attempt(post(w.shop.client_id, FORGED_SECRET, scope="payments:refund")),
            UNAUTHENTICATED,
            INVALID_CLIENT,
        ),
        Case(
            "probe_allowed_scope_with_wrong_secret",
            lambda w: Attempt(post(w.shop.client_id, FORGED_SECRET, scope="payments:read")),
            UNAUTHENTICATED,
            INVALID_CLIENT,
        ),
        Case(
            "probe_audience_with_wrong_secret",
            lambda w: Attempt(post(w.shop.client_id, FORGED_SECRET, audience=["ledger"])),
            UNAUTHENTICATED,
            INVALID_CLIENT,
        ),
        Case(
            "probe_scope_of_unknown_client",
            lambda w: Attempt(post("nobody", FORGED_SECRET, scope="payments:refund")),
            UNAUTHENTICATED,
            INVALID_CLIENT,
        ),
        Case(
            "probe_grant_of_client_with_wrong_secret",
            lambda w: Attempt(post(w.legacy.client_id, FORGED_SECRET)),
            UNAUTHENTICATED,
            INVALID_CLIENT,
        ),
        Case(
            "probe_scope_of_disabled_client",
            lambda w: Attempt(post(w.retired.client_id, w.retired.secret, scope="payments:refund")),
            UNAUTHENTICATED,
            INVALID_CLIENT,
        ),
    ]
)


@pytest.mark.parametrize("case", PROBE_CASES, ids=PROBE_IDS)
def test_registration_probe_without_valid_credentials(world: World, case: Case) -> None:
    """Which scopes, audiences or grants a client has must not be learnable without its secret."""
    check(world, case)


# -- client authentication in metadata -----------------------------------------------------------

METADATA_CASES, METADATA_IDS = run_cases(
    [
        Case(
            "basic_and_secret_in_body",
            lambda w: Attempt(body(client_secret=w.shop.secret), basic(w.shop.client_id, w.shop.secret)),
            INVALID_ARGUMENT,
            INVALID_REQUEST,
        ),
        Case(
            "basic_and_wrong_secret_in_body",
            lambda w: Attempt(body(client_secret=FORGED_SECRET), basic(w.shop.client_id, w.shop.secret)),
            INVALID_ARGUMENT,
            INVALID_REQUEST,
        ),
        Case(
            "basic_and_different_client_id_in_body",
            lambda w: Attempt(body(client_id=w.warehouse.client_id), basic(w.shop.client_id, w.shop.secret)),
            INVALID_ARGUMENT,
            INVALID_REQUEST,
        ),
        Case(
            "two_authorization_entries",
            lambda w: Attempt(
                body(), basic(w.shop.client_id, w.shop.secret) + basic(w.shop.client_id, w.shop.secret)
            ),
            INVALID_ARGUMENT,
            INVALID_REQUEST,
        ),
        Case(
            "two_authorization_entries_different_clients",
            lambda w: Attempt(
                body(),
                basic(w.shop.client_id, FORGED_SECRET) + basic(w.warehouse.client_id, w.warehouse.secret),
            ),
            INVALID_ARGUMENT,
            INVALID_REQUEST,
        ),
        Case(
            "bearer_scheme_junk",
            lambda w: Attempt(body(), (("authorization", "Bearer abc.def.ghi"),)),
            UNAUTHENTICATED,
            INVALID_CLIENT,
        ),
        Case(
            "bearer_scheme_with_secret",
            lambda w: Attempt(body(), (("authorization", f"Bearer {w.shop.secret}"),)),
            UNAUTHENTICATED,
            INVALID_CLIENT,
        ),
        Case(
            "digest_scheme",
            lambda w: Attempt(body(), (("authorization", 'Digest username="shop"'),)),
            UNAUTHENTICATED,
            INVALID_CLIENT,
        ),
        Case(
            "basic_malformed_base64",
            lambda w: Attempt(body(), (("authorization", "Basic !!!not*base64!!!"),)),
            UNAUTHENTICATED,
            INVALID_CLIENT,
        ),
        Case(
            "basic_unpadded_base64",
            lambda w: Attempt(
                body(), (("authorization", basic_value("shop", FORGED_SECRET).rstrip("=") + "x"),)
            ),
            UNAUTHENTICATED,
            INVALID_CLIENT,
        ),
        Case(
            "basic_not_utf8",
            lambda w: Attempt(body(), basic_raw(b"sh\xffop:" + FORGED_SECRET.encode())),
            UNAUTHENTICATED,
            INVALID_CLIENT,
        ),
        Case(
            "basic_without_colon",
            lambda w: Attempt(body(), basic_raw((w.shop.client_id + w.shop.secret).encode())),
            UNAUTHENTICATED,
            INVALID_CLIENT,
        ),
        Case(
            "basic_empty_credentials",
            lambda w: Attempt(body(), (("authorization", "Basic"),)),
            UNAUTHENTICATED,
            INVALID_CLIENT,
        ),
        Case("basic_only_colon", lambda w: Attempt(body(), basic_raw(b":")), UNAUTHENTICATED, INVALID_CLIENT),
        Case(
            "basic_empty_secret",
            lambda w: Attempt(body(), basic(w.shop.client_id, "")),
            UNAUTHENTICATED,
            INVALID_CLIENT,
        ),
        Case(
            "basic_wrong_secret",
            lambda w: Attempt(body(), basic(w.shop.client_id, FORGED_SECRET)),
            UNAUTHENTICATED,
            INVALID_CLIENT,
        ),
        Case(
            "basic_secret_split_at_extra_colon",
            lambda w: Attempt(body(), basic_raw(f"{w.shop.client_id}:{w.shop.secret}:".encode())),
            UNAUTHENTICATED,
            INVALID_CLIENT,
        ),
        Case(
            "basic_over_length_limit",
            lambda w: Attempt(body(), basic(w.shop.client_id, w.shop.secret + "A" * 3000)),
            INVALID_ARGUMENT,
            INVALID_REQUEST,
        ),
        Case(
            "basic_secret_in_binary_metadata",
            lambda w: Attempt(
                body(client_id=w.shop.client_id),
                (("authorization-bin", basic_value(w.shop.client_id, w.shop.secret).encode()),),
            ),
            UNAUTHENTICATED,
            INVALID_CLIENT,
        ),
    ]
)


@pytest.mark.parametrize("case", METADATA_CASES, ids=METADATA_IDS)
def test_metadata_authentication_attack(world: World, case: Case) -> None:
    check(world, case)


def test_bearer_access_token_is_not_a_client_credential(world: World) -> None:
    """A valid access token presented as Bearer on the token endpoint authenticates nobody."""
    token = world.stub.IssueToken(post(world.shop.client_id, world.shop.secret), timeout=TIMEOUT).access_token
    refusal = world.call(
        Attempt(body(client_id=world.shop.client_id), (("authorization", f"Bearer {token}"),))
    )
    assert_refused(refusal, UNAUTHENTICATED, INVALID_CLIENT)
    world.assert_unchanged()


# -- size limits ----------------------------------------------------------------------------------

MB = 1024 * 1024
NEAR_CAP = 60_000  # the server caps whole messages at 64 KiB

NEAR_CAP_CASES, NEAR_CAP_IDS = run_cases(
    [
        Case(
            "near_cap_client_id",
            lambda w: Attempt(post("s" * NEAR_CAP, w.shop.secret)),
            INVALID_ARGUMENT,
            INVALID_REQUEST,
        ),
        Case(
            "near_cap_secret",
            lambda w: Attempt(post(w.shop.client_id, "A" * NEAR_CAP)),
            INVALID_ARGUMENT,
            INVALID_REQUEST,
        ),
        Case(
            "near_cap_scope",
            lambda w: Attempt(post(w.shop.client_id, w.shop.secret, scope="a" * NEAR_CAP)),
            INVALID_ARGUMENT,
            INVALID_SCOPE,
        ),
        Case(
            "near_cap_audience",
            lambda w: Attempt(post(w.shop.client_id, w.shop.secret, audience=["p" * NEAR_CAP])),
            INVALID_ARGUMENT,
            INVALID_REQUEST,
        ),
        Case(
            "near_cap_grant_type",
            lambda w: Attempt(post(w.shop.client_id, w.shop.secret, grant_type="g" * NEAR_CAP)),
            INVALID_ARGUMENT,
            INVALID_REQUEST,
        ),
        Case(
            "near_cap_many_audiences",
            lambda w: Attempt(post(w.shop.client_id, w.shop.secret, audience=["payments"] * 5000)),
            INVALID_ARGUMENT,
            INVALID_REQUEST,
        ),
    ]
)


@pytest.mark.parametrize("case", NEAR_CAP_CASES, ids=NEAR_CAP_IDS)
def test_field_just_under_message_cap(world: World, case: Case) -> None:
    attempt = case.build(world)
    assert attempt.request.ByteSize() < 64 * 1024
    assert_refused(world.call(attempt), case.code, case.reason)
    world.assert_unchanged()


OVERSIZE: list[tuple[str, Callable[[World], Attempt]]] = [
    ("oversize_client_id_1mb", lambda w: Attempt(post("s" * MB, w.shop.secret))),
    ("oversize_secret_1mb", lambda w: Attempt(post(w.shop.client_id, "A" * MB))),
    (
        "oversize_scope_1mb",
        lambda w: Attempt(post(w.shop.client_id, w.shop.secret, scope="payments:read " * (MB // 14))),
    ),
    ("oversize_audience_1mb", lambda w: Attempt(post(w.shop.client_id, w.shop.secret, audience=["p" * MB]))),
    (
        "oversize_valid_request_padded_1mb",  # a correct secret does not buy a bigger message
        lambda w: Attempt(post(w.shop.client_id, w.shop.secret, audience=["payments"] * (MB // 10))),
    ),
    (
        "oversize_authorization_metadata_64kb",
        lambda w: Attempt(body(), (("authorization", "Basic " + "A" * (64 * 1024)),)),
    ),
    (
        "oversize_other_metadata_64kb",
        lambda w: Attempt(post(w.shop.client_id, w.shop.secret), (("x-pad", "A" * (64 * 1024)),)),
    ),
]


@pytest.mark.parametrize("build", [b for _, b in OVERSIZE], ids=[n for n, _ in OVERSIZE])
def test_oversize_request_is_refused_by_grpc(
    world: World, build: Callable[[World], Attempt], caplog: pytest.LogCaptureFixture
) -> None:
    """Over the 64 KiB message cap (or the 16 KiB metadata cap) gRPC itself answers
    RESOURCE_EXHAUSTED before the servicer runs, so there is no ErrorInfo; the server keeps serving."""
    caplog.set_level(logging.DEBUG)
    caplog.clear()
    refusal = world.call(build(world))
    assert refusal.code == RESOURCE_EXHAUSTED, refusal
    assert refusal.reason is None  # rejected by the transport, not by authsvc
    assert not [r for r in caplog.records if r.name.startswith("authsvc")], "the servicer must not have run"
    world.assert_unchanged()


# -- undecodable messages -------------------------------------------------------------------------


def _identity(data: bytes) -> bytes:
    return data


def _field(number: int, value: bytes) -> bytes:
    """A length-delimited protobuf field (values here are < 128 bytes)."""
    assert len(value) < 128
    return bytes([number << 3 | 2, len(value)]) + value


RAW_GRANT = _field(1, GRANT.encode())

UNDECODABLE: list[tuple[str, Callable[[World], bytes]]] = [
    (
        "raw_client_id_invalid_utf8",
        lambda w: RAW_GRANT + _field(2, b"sh\xffop") + _field(3, FORGED_SECRET.encode()),
    ),
    (
        "raw_secret_invalid_utf8",
        lambda w: (
            RAW_GRANT + _field(2, w.shop.client_id.encode()) + _field(3, w.shop.secret.encode() + b"\xc0")
        ),
    ),
    (
        "raw_scope_invalid_utf8",
        lambda w: (
            RAW_GRANT
            + _field(2, w.shop.client_id.encode())
            + _field(3, w.shop.secret.encode())
            + _field(4, b"payments:read\xed\xa0\x80")
        ),
    ),  # an encoded surrogate
    ("raw_truncated_message", lambda w: RAW_GRANT + bytes([2 << 3 | 2, 100]) + b"shop"),
]


@pytest.mark.parametrize("build", [b for _, b in UNDECODABLE], ids=[n for n, _ in UNDECODABLE])
def test_undecodable_request(world: World, channel: grpc.Channel, build: Callable[[World], bytes]) -> None:
    """Bytes that are not a valid IssueTokenRequest are the caller's error (DESIGN §4: bad input
    gets a clear error), answered like any other malformed request: INVALID_ARGUMENT with
    ErrorInfo INVALID_REQUEST, not UNKNOWN/INTERNAL with a parser's exception text."""
    raw = channel.unary_unary(ISSUE_TOKEN, request_serializer=_identity, response_deserializer=_identity)
    with pytest.raises(grpc.RpcError) as info:
        raw(build(world), timeout=TIMEOUT)
    assert_refused(refusal_of(info.value), INVALID_ARGUMENT, INVALID_REQUEST)
    world.assert_unchanged()


# -- log injection and log hygiene ----------------------------------------------------------------

FORGED_LINE = "INFO authsvc.token: token issued: jti=forged client_id=admin"
LINE_BREAKS = ("\n", "\r", "\v", "\f", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029")

INJECTIONS: list[tuple[str, Callable[[World], Attempt]]] = [
    ("log_injection_newline", lambda w: Attempt(post("shop\n" + FORGED_LINE, FORGED_SECRET))),
    ("log_injection_crlf", lambda w: Attempt(post("shop\r\n" + FORGED_LINE, FORGED_SECRET))),
    ("log_injection_carriage_return", lambda w: Attempt(post("shop\r" + FORGED_LINE, FORGED_SECRET))),
    (
        "log_injection_unicode_line_separator",
        lambda w: Attempt(post("shop\u2028" + FORGED_LINE, FORGED_SECRET)),
    ),
    ("log_injection_next_line_c1", lambda w: Attempt(post("shop\x85" + FORGED_LINE, FORGED_SECRET))),
    ("log_injection_ansi_escape", lambda w: Attempt(post("shop\x1b[2K\r" + FORGED_LINE, FORGED_SECRET))),
    ("log_injection_newline_first", lambda w: Attempt(post("\n" + FORGED_LINE, FORGED_SECRET))),
    ("log_injection_via_basic", lambda w: Attempt(body(), basic("shop\n" + FORGED_LINE, FORGED_SECRET))),
    (
        "log_injection_body_id_with_bad_basic",
        lambda w: Attempt(body(client_id="shop\n" + FORGED_LINE), (("authorization", "Basic !!"),)),
    ),
]
INJECTION_ANSWERS = {
    "log_injection_body_id_with_bad_basic": (UNAUTHENTICATED, INVALID_CLIENT),
}


@pytest.mark.parametrize("name", [n for n, _ in INJECTIONS], ids=[n for n, _ in INJECTIONS])
def test_log_injection_in_client_id(world: World, name: str, caplog: pytest.LogCaptureFixture) -> None:
    build = dict(INJECTIONS)[name]
    attempt = build(world)
    caplog.set_level(logging.DEBUG)
    caplog.clear()
    code, reason = INJECTION_ANSWERS.get(name, (INVALID_ARGUMENT, INVALID_REQUEST))
    assert_refused(world.call(attempt), code, reason)
    refused = [r for r in caplog.records if r.name.startswith("authsvc")]
    assert refused, "the refusal should have been logged (otherwise this check proves nothing)"
    for record in caplog.records:
        message = record.getMessage()
        assert not any(b in message for b in LINE_BREAKS), f"raw line break in log record: {message!r}"
        assert "\x1b" not in message, f"raw escape sequence in log record: {message!r}"
        assert not message.startswith(FORGED_LINE)
    assert FORGED_LINE not in caplog.text.splitlines()
    assert not any(line.lstrip().startswith("INFO authsvc.token") for line in caplog.text.splitlines())
    world.assert_unchanged()


def test_no_log_record_contains_a_secret_or_token(world: World, caplog: pytest.LogCaptureFixture) -> None:
    """DESIGN §4: nothing logs a secret or a whole token, at any level."""
    caplog.set_level(logging.DEBUG)
    caplog.clear()
    shop = world.shop
    posted = world.stub.IssueToken(post(shop.client_id, shop.secret, scope="payments:read"), timeout=TIMEOUT)
    via_basic = world.stub.IssueToken(body(), metadata=basic(shop.client_id, shop.secret), timeout=TIMEOUT)
    near_miss = flip_last(shop.secret)
    attempts = [
        Attempt(post(shop.client_id, near_miss)),
        Attempt(body(), basic(shop.client_id, near_miss)),
        Attempt(post("nobody", shop.secret)),
        Attempt(post(world.retired.client_id, world.retired.secret)),
        Attempt(post(shop.client_id, shop.secret, scope="payments:refund")),
        Attempt(body(client_secret=shop.secret), basic(shop.client_id, shop.secret)),
        Attempt(body(), (("authorization", f"Bearer {posted.access_token}"),)),
    ]
    for attempt in attempts:
        assert world.call(attempt).code != OK
    tokens = [posted.access_token, via_basic.access_token]
    sensitive = {
        "client secret": shop.secret,
        "near-miss secret": near_miss,
        "disabled client's secret": world.retired.secret,
        "Basic credentials": basic_value(shop.client_id, shop.secret).removeprefix("Basic "),
        **{f"access token {i}": t for i, t in enumerate(tokens)},
        **{f"signature of token {i}": t.rsplit(".", 1)[1] for i, t in enumerate(tokens)},
    }
    assert [r for r in caplog.records if r.name.startswith("authsvc")], "expected the server to log something"
    texts = [caplog.text]
    for record in caplog.records:
        texts += [record.getMessage(), repr(record.args), record.exc_text or ""]
    for what, value in sensitive.items():
        assert not any(value in text for text in texts), f"a log record contains the {what}"
    world.assert_unchanged()
