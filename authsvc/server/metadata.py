"""Reading client credentials from a gRPC call: the ``authorization`` metadata entries, handed to
the transport-free rules of :mod:`authsvc.core.client_auth`, and the client certificate of a
mutual-TLS connection (RFC 8705), from the call's auth context."""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping

from authsvc.core.certs import ClientCertificate
from authsvc.core.client_auth import MAX_AUTHORIZATION_LENGTH
from authsvc.core.client_auth import basic_credentials as _basic

__all__ = ["MAX_AUTHORIZATION_LENGTH", "authorization_values", "basic_credentials", "client_certificate"]


def authorization_values(metadata: Iterable[tuple[str, str | bytes]] | None) -> list[str | bytes]:
    return [v for k, v in (metadata or ()) if k == "authorization"]


def basic_credentials(metadata: Iterable[tuple[str, str | bytes]] | None) -> tuple[str, str] | None:
    """The ``(client_id, client_secret)`` of an ``authorization: Basic …`` entry, or None."""
    return _basic(authorization_values(metadata))


def client_certificate(auth_context: Mapping[str, Iterable[bytes]]) -> ClientCertificate | None:
    """The certificate the client presented on this call's connection (``x509_pem_cert`` of
    ``context.auth_context()``, set by grpc from the TLS handshake, never from metadata), or None.

    Only a port bound with a client CA (``authsvc serve --mtls-listen``) asks for one, and there
    grpc has verified it against that CA before any call: on every other port grpc never asks,
    so this is None. Raises InvalidClient if grpc hands over something that does not parse."""
    pems = list(auth_context.get("x509_pem_cert") or ())
    if not pems:
        return None
    return _parse(bytes(pems[0]))


@functools.lru_cache(maxsize=1024)
def _parse(pem: bytes) -> ClientCertificate:
    # a client presents the same certificate on every token request: parsing it (about 0.1 ms,
    # a sixth of the RSA signature) is done once; a value that does not parse is not remembered
    return ClientCertificate.from_pem(pem)
