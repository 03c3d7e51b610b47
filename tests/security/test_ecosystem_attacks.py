"""Attacks on what issue 10's "wider ecosystem" adds: the machine-readable ErrorInfo metadata must
tell a caller nothing it may not know, and reflection v1, public like v1alpha, must open nothing else.
Each case asserts the gRPC status code and the ErrorInfo reason (and metadata), never message text.
"""

from __future__ import annotations

import base64
import json
from typing import ClassVar

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2
from grpc_reflection.v1alpha import reflection_pb2
from grpc_status import rpc_status

from authsvc.core.errors import InsufficientScope
from authsvc.status import status_for
from authsvc.verify import TokenVerifier
from authsvc.verify.verifier import Principal
from payments_svc.v1 import payments_pb2, payments_pb2_grpc
from tests.conftest import ISSUER, TokenServer
from tests.test_ecosystem import REFLECTION_V1, _list_services, _reflect, _token, error_info, payments_channel

__all__ = ["payments_channel"]  # the fixture, shared with tests/test_ecosystem.py

CREATE = payments_pb2.CreatePaymentRequest(
    amount="1.00", currency="USD", payment_method="pm_card_visa", idempotency_key="k1"
)


def _b64(data: dict[str, object]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def _create(channel: grpc.Channel, token: str | None) -> grpc.RpcError:
    metadata = () if token is None else (("authorization", f"Bearer {token}"),)
    with pytest.raises(grpc.RpcError) as refused:
        payments_pb2_grpc.PaymentServiceStub(channel).CreatePayment(CREATE, metadata=metadata, timeout=10)
    return refused.value


def _status_info(exc: BaseException) -> tuple[int, error_details_pb2.ErrorInfo]:
    """The code and ErrorInfo of the status the edge would send for ``exc``."""
    trailers = dict(status_for(exc).trailing_metadata)
    status = status_pb2.Status.FromString(trailers["grpc-status-details-bin"])
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    return status.code, info


def test_insufficient_scope_metadata_names_the_methods_scopes_not_the_tokens(
    token_server: TokenServer, payments_channel: grpc.Channel
) -> None:
    """A token's own scopes (what else its client may do) never come back in the refusal: the
    metadata says what the method requires, nothing more."""
    token = _token(token_server, ["payments:read", "payments:refund"])
    info = error_info(refused := _create(payments_channel, token))
    assert refused.code() == grpc.StatusCode.PERMISSION_DENIED
    assert (info.reason, dict(info.metadata)) == ("INSUFFICIENT_SCOPE", {"scope": "payments:write"})


def test_hostile_scope_claims_are_not_echoed_into_error_metadata() -> None:
    """Whatever the (signed) scope claim holds, quotes, CRLF, a fake attribute, it stays out of
    ErrorInfo.metadata and so out of any WWW-Authenticate built from it."""
    hostile = frozenset({'x", error="invalid_token', "a\r\nSet-Cookie: s=1", "payments:read"})
    principal = Principal(
        client_id="shop",
        subject="shop",
        scopes=hostile,
        audience=("payments",),
        issuer=ISSUER,
        jti="j1",
        expires_at=2e9,
        issued_at=1e9,
        claims={},
    )
    with pytest.raises(InsufficientScope) as refused:
        TokenVerifier.require_scopes(principal, ["payments:write", "payments:write", "payments:refund"])
    code, info = _status_info(refused.value)
    assert code == grpc.StatusCode.PERMISSION_DENIED.value[0]
    assert (info.reason, dict(info.metadata)) == (
        "INSUFFICIENT_SCOPE",
        {"scope": "payments:write payments:refund"},
    )


def test_forged_token_refusal_carries_no_metadata(payments_channel: grpc.Channel) -> None:
    """alg none: refused as INVALID_TOKEN, and the refusal adds no detail (no kid, issuer or
    expected audience) a forger could use to aim the next try."""
    forged = f"{_b64({'alg': 'none', 'typ': 'at+jwt'})}.{_b64({'iss': ISSUER, 'scope': 'payments:write'})}."
    refused = _create(payments_channel, forged)
    info = error_info(refused)
    assert (refused.code(), info.reason, dict(info.metadata)) == (
        grpc.StatusCode.UNAUTHENTICATED,
        "INVALID_TOKEN",
        {},
    )


def test_a_non_service_error_never_reaches_error_metadata() -> None:
    """An unexpected exception that happens to carry a ``metadata`` attribute (a driver error with
    a connection string, say) becomes a bare INTERNAL."""

    class DriverError(Exception):
        metadata: ClassVar[dict[str, str]] = {"dsn": "postgresql://app:hunter2@db/prod"}

    code, info = _status_info(DriverError("boom"))
    assert (code, info.reason, dict(info.metadata)) == (grpc.StatusCode.INTERNAL.value[0], "SERVER_ERROR", {})


def test_reflection_v1_is_public_but_the_payment_methods_still_need_a_token(
    payments_channel: grpc.Channel,
) -> None:
    assert "payments_svc.v1.PaymentService" in _list_services(payments_channel, REFLECTION_V1)
    refused = _create(payments_channel, None)
    assert (refused.code(), error_info(refused).reason) == (grpc.StatusCode.UNAUTHENTICATED, "INVALID_TOKEN")


def test_the_reflection_v1_service_answers_one_method_only(payments_channel: grpc.Channel) -> None:
    """The v1 handler registers ServerReflectionInfo and nothing else: a made-up method under the
    v1 service name is answered by no handler (UNIMPLEMENTED, no ErrorInfo), as any unknown path."""
    with pytest.raises(grpc.RpcError) as refused:
        _reflect(
            payments_channel,
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfoX",
            reflection_pb2.ServerReflectionRequest(list_services="*"),
        )
    assert refused.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert rpc_status.from_call(refused.value) is None
