"""Attaching tokens to gRPC calls.

Production: :func:`authorized_channel` (TLS) or :func:`local_channel` (a Unix socket or a local
TCP connection), both with call credentials built on :class:`BearerAuthPlugin`. gRPC sends call
credentials only over channels it considers secure, so these refuse to leak a token in
plaintext across a network.

Development on plaintext loopback: :func:`insecure_loopback_channel` attaches the token with a
client interceptor instead, and refuses any target that is not a loopback address.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Sequence
from typing import Any

import grpc

from authsvc.client.credentials import ClientCredentials
from authsvc.core.errors import ConfigurationError
from authsvc.listen import is_loopback, split_host_port

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

        self._credentials.refresh_async().add_done_callback(done)


def call_credentials(credentials: ClientCredentials) -> grpc.CallCredentials:
    return grpc.metadata_call_credentials(BearerAuthPlugin(credentials), name="authsvc")


def authorized_channel(
    target: str,
    credentials: ClientCredentials,
    *,
    root_certificates: bytes | None = None,
    private_key: bytes | None = None,
    certificate_chain: bytes | None = None,
    options: Sequence[tuple[str, Any]] = (),
) -> grpc.Channel:
    """A TLS channel whose every call carries a token. ``root_certificates`` default to the
    system's; pass ``private_key``/``certificate_chain`` for mutual TLS."""
    channel_creds = grpc.ssl_channel_credentials(root_certificates, private_key, certificate_chain)
    composite = grpc.composite_channel_credentials(channel_creds, call_credentials(credentials))
    return grpc.secure_channel(target, composite, options=list(options))


def local_channel(
    target: str, credentials: ClientCredentials, *, options: Sequence[tuple[str, Any]] = ()
) -> grpc.Channel:
    """A channel over a Unix socket (``unix:/path``) or a local TCP connection, which gRPC treats
    as secure enough for call credentials."""
    kind = grpc.LocalConnectionType.UDS if target.startswith("unix:") else grpc.LocalConnectionType.LOCAL_TCP
    composite = grpc.composite_channel_credentials(
        grpc.local_channel_credentials(kind), call_credentials(credentials)
    )
    return grpc.secure_channel(target, composite, options=list(options))


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
    """Adds ``authorization: Bearer <token>`` to every call; for plaintext loopback development."""

    def __init__(self, credentials: ClientCredentials) -> None:
        self._credentials = credentials

    def _details(self, details: grpc.ClientCallDetails) -> grpc.ClientCallDetails:
        metadata = [*(details.metadata or ()), ("authorization", f"Bearer {self._credentials.token()}")]
        return _Details(
            details.method,
            details.timeout,
            metadata,
            details.credentials,
            getattr(details, "wait_for_ready", None),
            getattr(details, "compression", None),
        )

    def intercept_unary_unary(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return continuation(self._details(client_call_details), request)

    def intercept_unary_stream(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return continuation(self._details(client_call_details), request)

    def intercept_stream_unary(
        self, continuation: Any, client_call_details: Any, request_iterator: Any
    ) -> Any:
        return continuation(self._details(client_call_details), request_iterator)

    def intercept_stream_stream(
        self, continuation: Any, client_call_details: Any, request_iterator: Any
    ) -> Any:
        return continuation(self._details(client_call_details), request_iterator)


def insecure_loopback_channel(
    target: str, credentials: ClientCredentials, *, options: Sequence[tuple[str, Any]] = ()
) -> grpc.Channel:
    """A plaintext channel to a loopback address with the token added by an interceptor. Refuses
    other hosts: a bearer token in plaintext on a network is a stolen token."""
    if target.startswith("unix:"):
        host = "localhost"  # a Unix socket never leaves the machine
    else:
        try:
            host, _ = split_host_port(
                target.removeprefix("dns:///").removeprefix("ipv4:").removeprefix("ipv6:")
            )
        except ConfigurationError as exc:
            raise ValueError(f"{target!r} is not HOST:PORT or unix:PATH") from exc
    if not is_loopback(host):
        raise ValueError(f"refusing to send tokens in plaintext to {target}: use authorized_channel (TLS)")
    return grpc.intercept_channel(
        grpc.insecure_channel(target, options=list(options)), BearerInterceptor(credentials)
    )
