"""Certificate-bound access tokens at the resource server (RFC 8705 §3).

A token issued over mutual TLS carries ``cnf: {"x5t#S256": thumbprint}``, the SHA-256 of the
client's certificate. Whoever presents it must be that client: the resource server compares the
thumbprint with the certificate the caller presented in the TLS handshake of the call's own
connection (RFC 8705 §3: the protected resource "MUST obtain the client certificate used for
mutual TLS" and "MUST verify that the certificate matches the certificate associated with the
access token"; if not, it "MUST reject the request" with ``invalid_token``). A stolen bound token
is then useless without the client's private key.

The check runs on every call, on verified-token cache hits too: the cache remembers that the
token is valid, never who may use it. :meth:`TokenVerifier.verify
<authsvc.verify.TokenVerifier.verify>` does it when given the call's ``peer_certificate``, and
refuses a bound token when given none (deny by default): an edge that cannot see the peer
certificate (plain TLS, TLS ended at a proxy, an ASGI server without the ``tls`` extension) can
never accept a bound token by forgetting to look. The gRPC interceptors pass
:data:`DEFER_BINDING` to the verifier and call :func:`check_binding` themselves, with the
certificate of ``context.auth_context()``, which a ``grpc.aio`` interceptor only sees inside the
handler.

A ``cnf`` with any other confirmation method (DPoP's ``jkt``, a ``jwk``, ...), alone or beside
``x5t#S256``, is refused: this verifier could not check the proof it requires (RFC 7800 §3 leaves
unknown members to the application; deny by default).
"""

from __future__ import annotations

import functools
import hashlib
import hmac
from collections.abc import Iterable, Mapping
from typing import Any, Final

from authsvc.core.certs import X5T_S256, pem_to_der
from authsvc.core.errors import InvalidClient, InvalidToken
from authsvc.core.keys import b64url
from authsvc.verify.jose import b64url_decode_strict
from authsvc.verify.outcomes import CERTIFICATE_MISMATCH, Refused

__all__ = [
    "DEFER_BINDING",
    "DeferBinding",
    "bound_thumbprint",
    "check_binding",
    "check_grpc_binding",
    "grpc_peer_certificate",
    "pem_to_der",
]


class DeferBinding:
    """The type of :data:`DEFER_BINDING`."""

    def __repr__(self) -> str:
        return "DEFER_BINDING"


DEFER_BINDING: Final = DeferBinding()
"""``peer_certificate=DEFER_BINDING``: accept a certificate-bound token without checking its
binding here. Only for a caller that checks it itself with :func:`check_binding` on every call (the
gRPC interceptors), or that reports the binding instead of enforcing it (the issuer's token
introspection, RFC 8705 §3.2). A resource server that passes it and does not check accepts stolen
bound tokens."""


def bound_thumbprint(claims: Mapping[str, Any]) -> str | None:
    """The ``x5t#S256`` of a token's ``cnf`` claim (RFC 8705 §3.1), None when it has no ``cnf``.
    Raises InvalidToken for a ``cnf`` that is not exactly ``{"x5t#S256": <43 base64url
    characters>}``: malformed, or naming a confirmation method this verifier cannot check."""
    if "cnf" not in claims:
        return None
    cnf = claims["cnf"]
    if not isinstance(cnf, dict):
        raise InvalidToken("the token's cnf claim is malformed")
    if set(cnf) != {X5T_S256}:
        raise InvalidToken(
            "the token is bound by a confirmation method this resource server does not support"
        )
    thumbprint = cnf[X5T_S256]
    if not isinstance(thumbprint, str) or len(thumbprint) != 43:
        raise InvalidToken("the token's cnf claim is malformed")
    try:
        digest = b64url_decode_strict(thumbprint)
    except InvalidToken as exc:
        raise InvalidToken("the token's cnf claim is malformed") from exc
    if len(digest) != 32:
        raise InvalidToken("the token's cnf claim is malformed")
    return thumbprint


def check_binding(thumbprint: str, peer_certificate: bytes | None) -> None:
    """RFC 8705 §3: InvalidToken unless ``peer_certificate`` (the DER certificate the caller
    presented on this call's connection) has the SHA-256 ``thumbprint`` the token is bound to.
    Compared in constant time."""
    if peer_certificate is None:
        raise Refused(
            CERTIFICATE_MISMATCH,
            "the token is bound to a client certificate: call over mutual TLS with that certificate",
        )
    presented = b64url(hashlib.sha256(peer_certificate).digest())
    if not hmac.compare_digest(presented.encode("ascii"), thumbprint.encode("ascii")):
        raise Refused(CERTIFICATE_MISMATCH, "the token is bound to another client certificate")


def check_grpc_binding(thumbprint: str, auth_context: Mapping[str, Iterable[bytes]]) -> None:
    """:func:`check_binding` against the certificate of a gRPC call's connection
    (``context.auth_context()``, see :func:`grpc_peer_certificate`). A connection's certificate
    is the same on every call over it: its thumbprint is remembered by its PEM text (bounded), so
    a bound token costs a dict lookup per call rather than a PEM decode and a SHA-256."""
    pems = list(auth_context.get("x509_pem_cert") or ())
    if not pems:
        check_binding(thumbprint, None)
        return
    presented = _pem_thumbprint(bytes(pems[0]))
    if not hmac.compare_digest(presented.encode("ascii"), thumbprint.encode("ascii")):
        raise Refused(CERTIFICATE_MISMATCH, "the token is bound to another client certificate")


@functools.lru_cache(maxsize=1024)
def _pem_thumbprint(pem: bytes) -> str:
    """The x5t#S256 of a PEM certificate; InvalidToken (not remembered) if it does not decode."""
    try:
        der = pem_to_der(pem)
    except InvalidClient as exc:  # grpc's own PEM: never in practice; refuse rather than guess
        raise InvalidToken("the client certificate of this connection could not be read") from exc
    return b64url(hashlib.sha256(der).digest())


def grpc_peer_certificate(auth_context: Mapping[str, Iterable[bytes]]) -> bytes | None:
    """The DER certificate the caller presented on a gRPC call's connection, from
    ``context.auth_context()`` (``x509_pem_cert``, which grpc sets from the TLS handshake, never
    from metadata), or None. grpc asks for a client certificate only on a port bound with
    ``require_client_auth=True``: on any other port this is None, and bound tokens are refused."""
    pems = list(auth_context.get("x509_pem_cert") or ())
    if not pems:
        return None
    try:
        return pem_to_der(pems[0])
    except InvalidClient as exc:  # grpc's own PEM: never in practice; refuse rather than guess
        raise InvalidToken("the client certificate of this connection could not be read") from exc
