"""The gRPC servicer of ``authsvc.v1.TokenService``: translation only.

It extracts the client's credentials from the request or the metadata, hands a transport-free
:class:`~authsvc.core.grants.TokenRequest` to the core, and maps the outcome: a response, or a
status built by :func:`authsvc.status.status_for`. Tokens never reach the log; each
issued token is logged by its ``jti``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Iterable

import grpc

from authsvc.core.errors import InvalidRequest, OAuthError
from authsvc.core.grants import ClientAuthMethod, TokenEndpoint, TokenRequest
from authsvc.server.metadata import basic_credentials
from authsvc.status import status_for
from authsvc.v1 import token_pb2, token_pb2_grpc

__all__ = ["TokenServicer", "token_request_from"]

log = logging.getLogger("authsvc.token")


def _loggable(value: str) -> str:
    """A caller-supplied string made safe for one log line: escaped and truncated."""
    return repr(value[:64]) + ("…" if len(value) > 64 else "")


def token_request_from(
    request: token_pb2.IssueTokenRequest, metadata: Iterable[tuple[str, str | bytes]] | None
) -> TokenRequest:
    """Build the core's request. RFC 6749 §2.3: a client MUST NOT use more than one
    authentication method in a request."""
    basic = basic_credentials(metadata)
    if basic is None:
        client_id, secret, method = (
            request.client_id,
            request.client_secret,
            ClientAuthMethod.CLIENT_SECRET_POST,
        )
    else:
        if request.client_secret:
            raise InvalidRequest("use either Basic authentication or client_secret, not both")
        if request.client_id and request.client_id != basic[0]:
            raise InvalidRequest("client_id differs from the Basic credentials")
        client_id, secret = basic
        method = ClientAuthMethod.CLIENT_SECRET_BASIC
    return TokenRequest(
        grant_type=request.grant_type,
        client_id=client_id,
        client_secret=secret,
        scope=request.scope,
        audience=tuple(request.audience),
        auth_method=method,
    )


class TokenServicer(token_pb2_grpc.TokenServiceServicer):
    """Serves IssueToken and GetJwks on a ``grpc.aio`` server."""

    def __init__(
        self,
        endpoint: TokenEndpoint,
        jwks_json: Callable[[], str],
        watch: Callable[[], AsyncIterator[str]],
        *,
        jwks_max_age: int,
        is_cached: Callable[[str], bool] = lambda _: False,
    ) -> None:
        self._endpoint = endpoint
        self._is_cached = is_cached
        self._jwks_json = jwks_json
        self._watch = watch
        self._max_age = jwks_max_age

    async def IssueToken(  # noqa: N802 - the RPC's name
        self, request: token_pb2.IssueTokenRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> token_pb2.IssueTokenResponse:
        client_id = request.client_id
        try:
            token_request = token_request_from(request, context.invocation_metadata())
            client_id = token_request.client_id
            if self._is_cached(client_id):
                issued = self._endpoint.issue(token_request)
            else:
                # the client must be read from the store, which may be slow or down: not on the loop
                issued = await asyncio.to_thread(self._endpoint.issue, token_request)
        except OAuthError as exc:
            log.info("token refused: client_id=%s error=%s", _loggable(client_id), exc.error)
            await context.abort_with_status(status_for(exc))
            raise AssertionError("unreachable") from exc  # abort_with_status raises
        except Exception as exc:
            log.exception("token request failed unexpectedly: client_id=%s", _loggable(client_id))
            await context.abort_with_status(status_for(exc))
            raise AssertionError("unreachable") from exc
        log.info(
            "token issued: jti=%s client_id=%s kid=%s scope=%r",
            issued.jti,
            issued.client_id,
            issued.kid,
            issued.scope,
        )
        return token_pb2.IssueTokenResponse(
            access_token=issued.access_token,
            token_type=issued.token_type,
            expires_in=issued.expires_in,
            scope=issued.scope,
        )

    async def GetJwks(  # noqa: N802 - the RPC's name
        self, request: token_pb2.GetJwksRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> token_pb2.GetJwksResponse:
        jwks = await asyncio.to_thread(self._jwks_json)  # a store read: off the event loop
        return token_pb2.GetJwksResponse(jwks_json=jwks, max_age_seconds=self._max_age)

    async def WatchJwks(  # noqa: N802 - the RPC's name
        self, request: token_pb2.WatchJwksRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> AsyncIterator[token_pb2.WatchJwksResponse]:
        async for jwks in self._watch():
            yield token_pb2.WatchJwksResponse(jwks_json=jwks)
