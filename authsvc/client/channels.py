"""Attaching tokens to gRPC calls.

Production: :func:`authorized_channel` (TLS) or :func:`local_channel` (a Unix socket or a local
TCP connection), both with call credentials built on :class:`BearerAuthPlugin`. gRPC sends call
credentials only over channels it considers secure, so these refuse to leak a token in
plaintext across a network.

Development on plaintext loopback: :func:`insecure_loopback_channel` attaches the token with a
client interceptor instead, and refuses any target that is not a loopback address.

All three learn when the resource server refuses a token with INVALID_TOKEN (RFC 6750 §3.1):
call credentials cannot retry a call, so a client interceptor on each channel drops the refused
token (compare-and-drop, :meth:`ClientCredentials.drop_refused`) and sends a blocking unary call
once more with a fresh token. Streaming calls and ``.future()`` calls only drop the token; no
call is ever sent a third time.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Sequence
from typing import Any

import grpc

from authsvc.client.credentials import ClientCredentials, is_token_refusal
from authsvc.client.transport import PemSource, is_local_target, loopback_hosts, tls_credentials

__all__ = [
    "BearerAuthPlugin",
    "BearerInterceptor",
    "authorized_channel",
    "call_credentials",
    "insecure_loopback_channel",
    "local_channel",
]

log = logging.getLogger("authsvc.client")


class BearerAuthPlugin(grpc.AuthMetadataPlugin):
    """gRPC call credentials that send ``authorization: Bearer <token>``.

    ``__call__`` answers at once with a fresh or stale token (a stale one also starts a
    background refresh); only when there is no usable token does it wait, and then on a
    background refresh, never on gRPC's own thread.
    """

    def __init__(self, credentials: ClientCredentials) -> None:
        self._credentials = credentials

    def __call__(self, context: grpc.AuthMetadataContext, callback: grpc.AuthMetadataPluginCallback) -> None:
        cached = self._credentials.cached()
        if cached is not None:
            callback((("authorization", f"Bearer {cached.token}"),), None)
            return

        def done(future: Any) -> None:
            exc = future.exception()
            if exc is not None:
                callback((), exc)
            else:
                callback((("authorization", f"Bearer {future.result().token}"),), None)

        # not refresh_async: a token that a concurrent refresh installed a moment ago will do
        self._credentials.usable_async().add_done_callback(done)


def call_credentials(credentials: ClientCredentials) -> grpc.CallCredentials:
    return grpc.metadata_call_credentials(BearerAuthPlugin(credentials), name="authsvc")


def authorized_channel(
    target: str,
    credentials: ClientCredentials,
    *,
    root_certificates: PemSource | None = None,
    private_key: PemSource | None = None,
    certificate_chain: PemSource | None = None,
    options: Sequence[tuple[str, Any]] = (),
) -> grpc.Channel:
    """A TLS channel whose every call carries a token. ``root_certificates`` default to the
    system's; pass ``private_key`` and ``certificate_chain`` (the client's certificate, PEM bytes
    or files) for mutual TLS.

    A token issued over mutual TLS is bound to the client's certificate (RFC 8705 §3): the
    resource server accepts it only on a connection that presents the same certificate, so give
    this channel the certificate the credentials' TokenService channel used::

        creds = ClientCredentials.for_target("auth.internal:8443", ..., root_certificates=ca,
                                             certificate_chain="shop.crt", private_key="shop.key")
        channel = authorized_channel("payments.internal:50052", creds, root_certificates=ca,
                                     certificate_chain="shop.crt", private_key="shop.key")
    """
    channel_creds = tls_credentials(root_certificates, private_key, certificate_chain)
    composite = grpc.composite_channel_credentials(channel_creds, call_credentials(credentials))
    return grpc.intercept_channel(
        grpc.secure_channel(target, composite, options=list(options)),
        BearerInterceptor(credentials, attach=False),
    )


def local_channel(
    target: str, credentials: ClientCredentials, *, options: Sequence[tuple[str, Any]] = ()
) -> grpc.Channel:
    """A channel over a Unix socket (``unix:/path``) or a local TCP connection, which gRPC treats
    as secure enough for call credentials."""
    kind = grpc.LocalConnectionType.UDS if target.startswith("unix:") else grpc.LocalConnectionType.LOCAL_TCP
    composite = grpc.composite_channel_credentials(
        grpc.local_channel_credentials(kind), call_credentials(credentials)
    )
    return grpc.intercept_channel(
        grpc.secure_channel(target, composite, options=list(options)),
        BearerInterceptor(credentials, attach=False),
    )


class _Details(
    collections.namedtuple(
        "_Details", ["method", "timeout", "metadata", "credentials", "wait_for_ready", "compression"]
    ),
    grpc.ClientCallDetails,
):
    pass


class BearerInterceptor(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Adds ``authorization: Bearer <token>`` to every call (``attach``; for plaintext loopback
    development), and drops a token the resource server refuses with INVALID_TOKEN.

    With ``attach=False`` (on :func:`authorized_channel` and :func:`local_channel`, where call
    credentials attach the token) it only watches: the token it compares is the one cached when
    the call started, which is the one the call credentials sent unless a refresh finished in
    between (then nothing is dropped, and the retry carries the newer token anyway).

    ``retry_refused``: a blocking unary call refused with INVALID_TOKEN is sent once more, with
    another token, and only if there is another token. The refusal comes from the server's
    interceptor before any handler runs, so the retry cannot do anything twice.
    """

    def __init__(
        self, credentials: ClientCredentials, *, attach: bool = True, retry_refused: bool = True
    ) -> None:
        self._credentials = credentials
        self._attach = attach
        self._retry_refused = retry_refused

    def _token(self) -> str | None:
        if self._attach:
            return self._credentials.token()
        current = self._credentials.peek()
        return current.token if current is not None else None

    def _details(self, details: grpc.ClientCallDetails, token: str | None) -> grpc.ClientCallDetails:
        if not self._attach or token is None:
            return details
        metadata = [*(details.metadata or ()), ("authorization", f"Bearer {token}")]
        return _Details(
            details.method,
            details.timeout,
            metadata,
            details.credentials,
            getattr(details, "wait_for_ready", None),
            getattr(details, "compression", None),
        )

    def _refused(self, sent: str | None) -> bool:
        """Drop ``sent``; True if a retry would carry another token."""
        if sent is None:  # call credentials fetched the first token during the call
            current = self._credentials.peek()
            if current is None:
                return False
            sent = current.token
        dropped = self._credentials.drop_refused(sent)
        current = self._credentials.peek()
        return dropped or current is None or current.token != sent

    def _watch(self, call: Any, sent: str | None) -> Any:
        """Drop ``sent`` when ``call`` ends refused (now, or later for one still running)."""

        def done(finished: Any) -> None:
            try:
                refused = is_token_refusal(finished.code(), finished.trailing_metadata())
            except Exception:  # a call that cannot say how it ended refused nothing
                return
            if refused:
                self._refused(sent)

        if hasattr(call, "add_done_callback"):
            call.add_done_callback(done)
        return call

    def intercept_unary_unary(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        sent = self._token()
        outcome = continuation(self._details(client_call_details, sent), request)
        if not (self._retry_refused and outcome.done()):
            return self._watch(outcome, sent)  # a .future() call: never block it to retry
        error = outcome.exception()
        if error is None or not is_token_refusal(outcome.code(), outcome.trailing_metadata()):
            return outcome
        if not self._refused(sent):
            return outcome
        retried = continuation(self._details(client_call_details, self._token()), request)
        return self._watch(retried, None)

    def intercept_unary_stream(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        sent = self._token()
        return self._watch(continuation(self._details(client_call_details, sent), request), sent)

    def intercept_stream_unary(
        self, continuation: Any, client_call_details: Any, request_iterator: Any
    ) -> Any:
        sent = self._token()
        return self._watch(continuation(self._details(client_call_details, sent), request_iterator), sent)

    def intercept_stream_stream(
        self, continuation: Any, client_call_details: Any, request_iterator: Any
    ) -> Any:
        sent = self._token()
        return self._watch(continuation(self._details(client_call_details, sent), request_iterator), sent)


def insecure_loopback_channel(
    target: str, credentials: ClientCredentials, *, options: Sequence[tuple[str, Any]] = ()
) -> grpc.Channel:
    """A plaintext channel to a loopback address with the token added by an interceptor. Refuses
    other hosts: a bearer token in plaintext on a network is a stolen token."""
    loopback_hosts(target)  # says what a target looks like when it is none
    if not is_local_target(target):
        raise ValueError(f"refusing to send tokens in plaintext to {target}: use authorized_channel (TLS)")
    # never through an HTTP CONNECT proxy from the environment: it would see every token
    plain = grpc.insecure_channel(target, options=[*options, ("grpc.enable_http_proxy", 0)])
    return grpc.intercept_channel(plain, BearerInterceptor(credentials))
