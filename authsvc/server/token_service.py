"""The gRPC servicer of ``authsvc.v1.TokenService``: translation only.

It extracts the client's credentials from the request or the metadata, hands a transport-free
:class:`~authsvc.core.grants.TokenRequest` to the application layer
(:class:`~authsvc.authority.tokens.TokenIssuer`, which logs the decision), and maps the outcome:
a response, or a status built by :func:`authsvc.status.status_for`. Keys are served from the
:class:`~authsvc.authority.keyring.Keyring`'s memory.

``WatchJwks`` streams are long-lived and need no credentials, so they are capped per peer
address and in all (:class:`StreamSlots`); a caller over a cap gets RESOURCE_EXHAUSTED
(``RATE_LIMITED``) and may poll ``GetJwks`` instead.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import threading
from collections.abc import AsyncGenerator, Iterable, Iterator
from typing import Protocol
from urllib.parse import unquote

import grpc

from authsvc.authority.keyring import Keyring
from authsvc.authority.tokens import TokenIssuer
from authsvc.core.certs import ClientCertificate
from authsvc.core.client_auth import presented_credentials
from authsvc.core.errors import OAuthError, RateLimited, UnauthorizedClient
from authsvc.core.grants import TokenRequest
from authsvc.core.revocation import REVOCATIONS_SCOPE, Revocation
from authsvc.logsafe import LogRateLimiter
from authsvc.server.metadata import authorization_values, client_certificate
from authsvc.status import status_for
from authsvc.v1 import token_pb2, token_pb2_grpc

__all__ = ["StreamSlots", "TokenServicer", "peer_key", "token_request_from"]

log = logging.getLogger("authsvc.token")


def peer_key(peer: str) -> str:
    """The address part of a gRPC peer string, without the port: what a per-peer cap counts by.

    ``ipv4:1.2.3.4:5678`` → ``ipv4:1.2.3.4``; ``ipv6:[::1]:5678`` (or percent-encoded,
    ``ipv6:%5B::1%5D:5678``) → ``ipv6:[::1]``; an IPv4-mapped IPv6 address counts as its IPv4
    address. Anything else (``unix:PATH``, ``unix-abstract:…``) is returned whole: every local
    caller on one socket shares one key.
    """
    scheme, sep, rest = peer.partition(":")
    if not sep or scheme not in ("ipv4", "ipv6"):
        return peer
    host, sep, port = unquote(rest).rpartition(":")
    if not sep or not port.isdigit():
        return peer
    try:
        address = ipaddress.ip_address(host.removeprefix("[").removesuffix("]"))
    except ValueError:
        return f"{scheme}:{host}"
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return f"ipv4:{address}" if address.version == 4 else f"ipv6:[{address}]"


class StreamSlots:
    """Counts open streams per peer address and in all, and refuses one over either cap.

    :meth:`acquire` raises :class:`~authsvc.core.errors.RateLimited` when the caller's address
    already holds ``per_peer`` streams or the server ``total``; the handler releases its slot in
    a ``finally`` however the stream ends (it finished, the caller cancelled or disconnected, the
    server shut down). Used from one event loop, but locked, so a sync server may share it.
    """

    def __init__(self, *, per_peer: int, total: int) -> None:
        if per_peer < 1 or total < 1:
            raise ValueError("stream caps must be at least 1")
        self.per_peer = per_peer
        self.total = total
        self._by_peer: dict[str, int] = {}
        self._in_use = 0
        self._lock = threading.Lock()

    @property
    def in_use(self) -> int:
        return self._in_use

    def acquire(self, peer: str) -> str:
        """Take a slot for ``peer`` (a ``context.peer()`` string); returns the key to
        :meth:`release` it with. Raises :class:`RateLimited` over either cap."""
        key = peer_key(peer)
        with self._lock:
            if self._in_use >= self.total:
                raise RateLimited("too many open key watches on this server; poll GetJwks or retry later")
            held = self._by_peer.get(key, 0)
            if held >= self.per_peer:
                raise RateLimited("too many open key watches from this address; close one or poll GetJwks")
            self._by_peer[key] = held + 1
            self._in_use += 1
        return key

    def release(self, key: str) -> None:
        """Give back a slot taken by :meth:`acquire`."""
        with self._lock:
            self._in_use -= 1
            left = self._by_peer[key] - 1
            if left:
                self._by_peer[key] = left
            else:
                del self._by_peer[key]

    @contextlib.contextmanager
    def hold(self, peer: str) -> Iterator[None]:
        """A slot for ``peer`` for the duration of the ``with`` block, however it ends."""
        key = self.acquire(peer)
        try:
            yield
        finally:
            self.release(key)


def token_request_from(
    request: token_pb2.IssueTokenRequest,
    metadata: Iterable[tuple[str, str | bytes]] | None,
    *,
    certificate: ClientCertificate | None = None,
) -> TokenRequest:
    """Build the core's request (RFC 6749 §2.3: one authentication method per request).
    ``certificate`` is the client's, on a mutual-TLS port: the token will be bound to it."""
    presented = presented_credentials(
        authorization_values(metadata),
        client_id=request.client_id,
        client_secret=request.client_secret,
        client_assertion=request.client_assertion,
        client_assertion_type=request.client_assertion_type,
        client_certificate=certificate,
    )
    return TokenRequest.of(
        presented,
        grant_type=request.grant_type,
        scope=request.scope,
        audience=tuple(request.audience),
    )


class RevocationWatch(Protocol):
    """What WatchRevocations needs of the application layer's revocation feed."""

    def watch(self, after_sequence: int) -> AsyncGenerator[tuple[bool, int, list[Revocation]], None]: ...


class TokenServicer(token_pb2_grpc.TokenServiceServicer):
    """Serves IssueToken, GetJwks and WatchJwks on a ``grpc.aio`` server.

    ``watch_slots`` caps the concurrent WatchJwks streams; ``refusal_log`` bounds the lines that
    refused requests write (the defaults suit tests; :mod:`authsvc.server.app` passes the
    configured ones). ``client_certificates``: the server has a mutual-TLS port, so IssueToken
    reads each call's client certificate (and binds the token to it).
    """

    def __init__(
        self,
        issuer: TokenIssuer,
        keyring: Keyring,
        *,
        jwks_max_age: int,
        watch_slots: StreamSlots | None = None,
        refusal_log: LogRateLimiter | None = None,
        revocations: RevocationWatch | None = None,
        client_certificates: bool = False,
    ) -> None:
        self._issuer = issuer
        # whether a call may come over a mutual-TLS port, the only kind whose auth context holds
        # a client certificate: elsewhere it is never read (one call into grpc a token fewer)
        self._client_certificates = client_certificates
        self._revocations = revocations
        self._keyring = keyring
        self._max_age = jwks_max_age
        self.watch_slots = watch_slots or StreamSlots(per_peer=8, total=256)
        self._refusals = refusal_log or LogRateLimiter(rate=10, burst=20)

    async def IssueToken(  # noqa: N802 - the RPC's name
        self, request: token_pb2.IssueTokenRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> token_pb2.IssueTokenResponse:
        peer = context.peer()
        try:
            certificate = client_certificate(context.auth_context()) if self._client_certificates else None
            token_request = token_request_from(
                request, context.invocation_metadata(), certificate=certificate
            )
        except OAuthError as exc:
            self._issuer.refused(request.client_id, exc, peer=peer)
            await context.abort_with_status(status_for(exc))
            raise AssertionError("unreachable") from exc  # abort_with_status raises
        try:
            issued = await self._issuer.issue(token_request, peer=peer)
        except Exception as exc:  # logged by the issuer
            await context.abort_with_status(status_for(exc))
            raise AssertionError("unreachable") from exc
        return token_pb2.IssueTokenResponse(
            access_token=issued.access_token,
            token_type=issued.token_type,
            expires_in=issued.expires_in,
            scope=issued.scope,
        )

    async def GetJwks(  # noqa: N802 - the RPC's name
        self, request: token_pb2.GetJwksRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> token_pb2.GetJwksResponse:
        # from memory: the keyring reloads the published set every tick, and keeps serving it
        # while the store is unreachable
        return token_pb2.GetJwksResponse(jwks_json=self._keyring.jwks, max_age_seconds=self._max_age)

    # A coroutine that writes, not an async generator: cancellation (the caller went away, the
    # server stops) then always lands in this frame, so the slot is released at once rather than
    # whenever a suspended generator is finalized.
    async def WatchJwks(  # type: ignore[override]  # noqa: N802 - the RPC's name
        self, request: token_pb2.WatchJwksRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> None:
        try:
            slot = self.watch_slots.acquire(context.peer())
        except RateLimited as exc:
            self._refusals.log(log, logging.INFO, "watch refused", "key watch refused: %s", exc.description)
            await context.abort_with_status(status_for(exc))
            raise AssertionError("unreachable") from exc
        try:
            async with contextlib.aclosing(self._keyring.watch()) as updates:
                async for jwks in updates:
                    await context.write(token_pb2.WatchJwksResponse(jwks_json=jwks))
        finally:
            self.watch_slots.release(slot)

    # The list reveals which clients were disabled and which tokens were stolen: only a client
    # holding authsvc:revocations may read it, authenticated as at IssueToken (Basic metadata).
    async def WatchRevocations(  # type: ignore[override]  # noqa: N802 - the RPC's name
        self,
        request: token_pb2.WatchRevocationsRequest,
        context: grpc.aio.ServicerContext[object, object],
    ) -> None:
        if self._revocations is None:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, "this server keeps no revocation list")
        assert self._revocations is not None
        client_id = ""
        try:
            try:
                presented = presented_credentials(authorization_values(context.invocation_metadata()))
            except OAuthError as exc:
                self._issuer.refused(client_id, exc, peer=context.peer())
                raise
            client_id = presented.client_id
            client = await self._issuer.authenticate(presented, peer=context.peer())  # logs refusals
            if REVOCATIONS_SCOPE not in client.allowed_scopes:
                refusal = UnauthorizedClient(f"the revocation list needs the scope {REVOCATIONS_SCOPE}")
                self._issuer.refused(client_id, refusal, peer=context.peer())
                raise refusal
            slot = self.watch_slots.acquire(context.peer())
        except (OAuthError, RateLimited) as exc:
            await context.abort_with_status(status_for(exc))
            raise AssertionError("unreachable") from exc
        try:
            async with contextlib.aclosing(self._revocations.watch(int(request.after_sequence))) as updates:
                async for snapshot, sequence, entries in updates:
                    await context.write(
                        token_pb2.WatchRevocationsResponse(
                            snapshot=snapshot,
                            sequence=sequence,
                            revocations=[revocation_message(e) for e in entries],
                        )
                    )
        finally:
            self.watch_slots.release(slot)


def revocation_message(entry: Revocation) -> token_pb2.Revocation:
    """The wire form of one entry of the list."""
    if entry.jti is not None:
        return token_pb2.Revocation(jti=entry.jti, expires_at=entry.expires_at)
    assert entry.client_id is not None
    return token_pb2.Revocation(
        client_id=entry.client_id, not_before=entry.not_before, expires_at=entry.expires_at
    )
