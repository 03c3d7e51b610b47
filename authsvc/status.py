"""The one place where errors become gRPC statuses, for the TokenService and for every server
that verifies tokens with :mod:`authsvc.verify` (so it lives outside both).

An :class:`~authsvc.core.errors.OAuthError` becomes a status code (DESIGN.md §2) with the
error's sanitized description as the message and a ``google.rpc.ErrorInfo`` detail whose
``reason`` is the OAuth code in upper snake case and whose ``domain`` is ``authsvc``. Anything
else becomes INTERNAL with a generic message; its details go to the log only.
"""

from __future__ import annotations

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from authsvc.core.errors import OAuthError, ServerError

__all__ = ["ERROR_DOMAIN", "STATUS_BY_ERROR", "status_for"]

ERROR_DOMAIN = "authsvc"

STATUS_BY_ERROR: dict[str, grpc.StatusCode] = {
    "invalid_client": grpc.StatusCode.UNAUTHENTICATED,
    "invalid_token": grpc.StatusCode.UNAUTHENTICATED,
    "insufficient_scope": grpc.StatusCode.PERMISSION_DENIED,
    "access_denied": grpc.StatusCode.PERMISSION_DENIED,
    "unauthorized_client": grpc.StatusCode.PERMISSION_DENIED,
    "invalid_request": grpc.StatusCode.INVALID_ARGUMENT,
    "invalid_scope": grpc.StatusCode.INVALID_ARGUMENT,
    "invalid_target": grpc.StatusCode.INVALID_ARGUMENT,
    "unsupported_grant_type": grpc.StatusCode.INVALID_ARGUMENT,
    "rate_limited": grpc.StatusCode.RESOURCE_EXHAUSTED,
    "temporarily_unavailable": grpc.StatusCode.UNAVAILABLE,
    "not_found": grpc.StatusCode.NOT_FOUND,
    "server_error": grpc.StatusCode.INTERNAL,
}


def status_for(exc: BaseException) -> grpc.Status:
    """The gRPC status (with ErrorInfo detail) to send for ``exc``."""
    if not isinstance(exc, OAuthError):
        exc = ServerError("internal error")
    code = STATUS_BY_ERROR.get(exc.error, grpc.StatusCode.INTERNAL)
    detail = any_pb2.Any()
    detail.Pack(error_details_pb2.ErrorInfo(reason=exc.reason, domain=ERROR_DOMAIN))
    status: grpc.Status = rpc_status.to_status(
        status_pb2.Status(code=code.value[0], message=exc.description, details=[detail])
    )
    return status
