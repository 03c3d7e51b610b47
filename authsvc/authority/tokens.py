"""Issuing tokens, transport-free: what the gRPC ``IssueToken`` and the HTTP token endpoint both
call, with the same checks and the same log lines.

A request whose client must be read from the store (not in the client cache), or whose
authentication method waits on I/O (private_key_jwt records each assertion's ``jti`` in the
store), runs in a worker thread, so that a slow or unreachable database never stalls the event
loop; a cached client presenting a secret is served on the loop, where a token costs one RSA
signature. Each issued token is logged by its ``jti``: as its audit event, or, with the
``authsvc.audit`` logger off, as a ``token issued`` line on ``authsvc.token`` (one record a token,
not both); refusals are logged at a bounded rate, with an unknown client id redacted
(:func:`~authsvc.logsafe.client_id_for_log`).

Each decision is also one event on the ``authsvc.audit`` logger (:func:`authsvc.logsetup.audit`):
``token.issued`` or ``token.refused`` with the client id, grant, authentication method, scopes,
audiences, kid, jti, the caller's address (``peer``), the certificate a token is bound to
(``x5t#S256``, over mutual TLS), the outcome and, for a refusal, the precise
internal reason (:func:`~authsvc.core.grants.refusal_detail`: unknown client, wrong secret, ...),
which never reaches the wire. Never a secret, an assertion or a token. Refusal events share the
refusal lines' rate limit.

Rate limits (:class:`~authsvc.authority.ratelimit.RateLimits`, when given) apply here, so that
both edges behave alike: the peer and failed-authentication limits before the client is
authenticated, the client limit after (a request refused by it is authenticated, never signed).
A refusal is a :class:`~authsvc.core.errors.RateLimited` with a ``retry_after``, logged and
audited as ``token.refused`` with the reason ``peer_rate_limit``, ``failed_auth_rate_limit`` or
``client_rate_limit``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Protocol, TypeVar

from authsvc.authority.ratelimit import Admission, RateLimits
from authsvc.core.client_auth import PresentedCredentials
from authsvc.core.clients import Client
from authsvc.core.errors import InvalidClient, OAuthError, RateLimited, ServiceError
from authsvc.core.grants import IssuedToken, TokenEndpoint, TokenRequest, refusal_detail
from authsvc.logsafe import LogRateLimiter, client_id_for_log
from authsvc.logsetup import AUDIT_LOGGER, audit
from authsvc.store.cache import CachedClientLookup

__all__ = ["IssuerMetrics", "TokenIssuer"]

log = logging.getLogger("authsvc.token")
_R = TypeVar("_R")
_AUDIT_REFUSED_KEY = "audit token.refused"  # its own bucket: the plain lines keep theirs


class IssuerMetrics(Protocol):
    """What the issuer counts (``authsvc.metrics.TokenMetrics``; no prometheus import here)."""

    def token_issued(self) -> None: ...

    def token_refused(self, error: str) -> None: ...


class TokenIssuer:
    """The token endpoint (:class:`~authsvc.core.grants.TokenEndpoint`) over a cached client
    lookup. ``refusal_log`` bounds the lines refused requests write; ``metrics``, when given,
    counts tokens issued and refused (by OAuth error code); ``limits``, when given, are the rate
    limits every request that authenticates a client passes."""

    def __init__(
        self,
        endpoint: TokenEndpoint,
        clients: CachedClientLookup,
        *,
        refusal_log: LogRateLimiter | None = None,
        metrics: IssuerMetrics | None = None,
        limits: RateLimits | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.clients = clients
        self.metrics = metrics
        self.limits = limits if limits is not None and limits.enabled else None
        self._refusals = refusal_log or LogRateLimiter(rate=10, burst=20)
        self._audit = logging.getLogger(AUDIT_LOGGER)

    def _inline(self, presented: PresentedCredentials) -> bool:
        """Whether authenticating ``presented`` can run on the event loop: no store read, no I/O."""
        return self.clients.is_cached(presented.client_id) and not self.endpoint.may_block(presented)

    async def _run(self, presented: PresentedCredentials, call: Callable[..., _R], *args: object) -> _R:
        """``call(*args)`` on the loop when authenticating ``presented`` needs neither a store read
        nor other I/O, else in a worker thread."""
        if self._inline(presented):
            return call(*args)
        return await asyncio.to_thread(call, *args)

    async def _admit(self, presented: PresentedCredentials, peer: str | None) -> Admission | None:
        """The limits before authentication; for a client over its own limit, authenticate it
        (wrong credentials are refused as always) and refuse it RATE_LIMITED. Raises RateLimited."""
        if self.limits is None:
            return None
        admission = await self.limits.admit(presented.client_id, peer)
        refusal = self.limits.client_refusal(admission)
        if refusal is not None:
            try:
                await self._run(presented, self.endpoint.authenticate, presented)
            except InvalidClient:
                await self.limits.failed(admission)
                raise
            raise refusal
        return admission

    async def _settle(self, admission: Admission | None, exc: BaseException | None) -> None:
        """Count the outcome in the buckets: a failed authentication, or a served client."""
        if admission is None or self.limits is None:
            return
        if exc is None:
            await self.limits.succeeded(admission)
        elif isinstance(exc, InvalidClient):
            await self.limits.failed(admission)

    async def issue(self, request: TokenRequest, *, peer: str | None = None) -> IssuedToken:
        """Run the grant from an event loop; raises an :class:`~authsvc.core.errors.OAuthError`
        or :class:`~authsvc.core.errors.RateLimited` (logged), or an unexpected error (logged
        with its traceback, at a bounded rate)."""
        try:
            credentials = request.credentials
            admission = await self._admit(credentials, peer)
            try:
                issued = await self._run(credentials, self.endpoint.issue, request)
            except OAuthError as exc:
                await self._settle(admission, exc)
                raise
            if admission is not None and self.limits is not None and self.limits.counts_successes:
                await self._settle(admission, None)
        except (OAuthError, RateLimited) as exc:
            self.refused(request.client_id, exc, request=request, peer=peer)
            raise
        except Exception:
            if self.metrics is not None:
                self.metrics.token_refused("server_error")  # what the caller is answered
            self._refusals.log(
                log,
                logging.ERROR,
                "token request failed",
                "token request failed unexpectedly: client_id=%s",
                client_id_for_log(request.client_id, known=False),
                exc_info=True,
            )
            raise
        if self.metrics is not None:
            self.metrics.token_issued()
        if not self._audit.isEnabledFor(logging.INFO):
            # the audit event is off: the plain line says what was issued (never the token)
            log.info(
                "token issued: jti=%s client_id=%s kid=%s scope=%r",
                issued.jti,
                issued.client_id,
                issued.kid,
                issued.scope,
            )
            return issued
        # the audit event holds all the plain line would (jti, client_id, kid, scope) and more: it is
        # the token's one line, since each log record costs the event loop a few percent of a token
        audit(
            "token.issued",
            {
                "outcome": "issued",
                "client_id": issued.client_id,
                "grant_type": request.grant_type,
                "auth_method": request.auth_method.value,
                "scope": issued.scope,
                "audience": list(request.audience) or None,
                "kid": issued.kid,
                "jti": issued.jti,
                "expires_in": issued.expires_in,
                "peer": peer,
                # RFC 8705: the token is bound to this certificate (the thumbprint is no secret)
                "x5t#S256": None
                if request.client_certificate is None
                else request.client_certificate.thumbprint,
            },
        )
        return issued

    async def authenticate(self, presented: PresentedCredentials, *, peer: str | None = None) -> Client:
        """Authenticate a client that calls another endpoint (introspection, revocation) with
        the token endpoint's rules and rate limits; raises InvalidClient or RateLimited (logged)
        as it would."""
        try:
            admission = await self._admit(presented, peer)
            try:
                client = await self._run(presented, self.endpoint.authenticate, presented)
            except OAuthError as exc:
                await self._settle(admission, exc)
                raise
            await self._settle(admission, None)
            return client
        except (OAuthError, RateLimited) as exc:
            self._log_refused(presented.client_id, exc, None, peer)  # not a token request: not counted
            raise

    def refused(
        self,
        client_id: str,
        exc: OAuthError | RateLimited,
        *,
        request: TokenRequest | None = None,
        peer: str | None = None,
    ) -> None:
        """Log a refusal; an edge calls it too for a request it refused before building one.
        ``request`` (when there is one) adds what was asked for to the audit event."""
        if self.metrics is not None:
            self.metrics.token_refused(exc.error)
        self._log_refused(client_id, exc, request, peer)

    def _log_refused(
        self, client_id: str, exc: OAuthError | RateLimited, request: TokenRequest | None, peer: str | None
    ) -> None:
        self._refusals.log(
            log,
            logging.INFO,
            "token refused",
            "token refused: client_id=%s error=%s",
            client_id_for_log(client_id, known=_client_known(exc)),
            exc.error,
        )
        self._audit_refused(client_id, exc, request, peer)

    def _audit_refused(
        self, client_id: str, exc: OAuthError | RateLimited, request: TokenRequest | None, peer: str | None
    ) -> None:
        if not self._audit.isEnabledFor(logging.INFO):
            return
        allowed, suppressed = self._refusals.acquire(_AUDIT_REFUSED_KEY)
        if not allowed:
            return
        if suppressed:
            audit("audit.suppressed", {"suppressed_event": "token.refused", "count": suppressed})
        audit(
            "token.refused",
            {
                "outcome": "refused",
                # a caller may paste a secret into the id: in full only if the store knows it
                "client_id": client_id if _client_known(exc) else client_id_for_log(client_id, known=False),
                "client_known": _client_known(exc),
                "grant_type": None if request is None else request.grant_type,
                "auth_method": None if request is None else request.auth_method.value,
                "scope": None if request is None else request.scope or None,
                "audience": None if request is None else list(request.audience) or None,
                "peer": peer,
                "error": exc.error,
                "reason": _reason(exc),
                "retry_after": getattr(exc, "retry_after", None),
            },
        )


def _client_known(exc: ServiceError) -> bool:
    """Whether the refused request named a registered client (its id may then be logged): as the
    core said, or an authenticated client over its own rate limit."""
    if isinstance(exc, RateLimited):
        return exc.limit == "client"
    return isinstance(exc, OAuthError) and exc.client_known


def _reason(exc: OAuthError | RateLimited) -> str:
    if isinstance(exc, RateLimited):
        return f"{exc.limit}_rate_limit" if exc.limit else "rate_limited"
    return refusal_detail(exc) or exc.description
