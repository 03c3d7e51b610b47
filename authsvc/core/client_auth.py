"""Which client credentials a token request carries (RFC 6749 §2.3), whatever the transport.

Both edges hand over what they found: the values of the ``authorization`` header (or metadata
entry) and the ``client_id``/``client_secret`` of the body. :func:`presented_credentials`
decides, with the same rules for gRPC and HTTP, and returns the :class:`PresentedCredentials`
that the registered method handlers (:mod:`authsvc.core.auth_methods`) check:

- ``Authorization: Basic base64(id ":" secret)``, where id and secret are first
  ``application/x-www-form-urlencoded`` (§2.3.1), is ``client_secret_basic``;
- ``client_id`` and ``client_secret`` in the body are ``client_secret_post``;
- ``client_assertion_type`` and ``client_assertion`` in the body are ``private_key_jwt`` (RFC 7523
  §2.2): the type must be ``urn:ietf:params:oauth:client-assertion-type:jwt-bearer``
  (``invalid_client`` otherwise), the two go together, the assertion is at most 8 KiB (refused
  unparsed), and the client is the one its ``sub`` names (a ``client_id`` parameter, if sent, must
  be the same: the method's handler checks it);
- two methods at once (Basic and ``client_secret``, or an assertion with either) is
  ``invalid_request`` (§2.3: "MUST NOT use more than one authentication method in each
  request"); two authorization values are ``invalid_request``; another scheme or a value that does
  not decode is ``invalid_client``.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from urllib.parse import unquote_plus

from authsvc.core.certs import ClientCertificate
from authsvc.core.client_assertion import CLIENT_ASSERTION_TYPE, MAX_ASSERTION_LENGTH, peek_subject
from authsvc.core.clients import ClientAuthMethod
from authsvc.core.errors import InvalidClient, InvalidRequest, with_detail

__all__ = ["MAX_AUTHORIZATION_LENGTH", "PresentedCredentials", "basic_credentials", "presented_credentials"]

MAX_AUTHORIZATION_LENGTH = 2048


@dataclass(frozen=True, slots=True)
class PresentedCredentials:
    """What a request presented to authenticate its client, as the edge read it: the method and
    its material. Never shown by ``repr``: only the method and the id are."""

    method: ClientAuthMethod
    client_id: str
    client_secret: str = field(default="", repr=False)
    client_assertion: str = field(default="", repr=False)
    client_assertion_type: str = ""
    # the verified peer certificate of a mutual-TLS connection (RFC 8705): what tls_client_auth
    # authenticates with, and what any token issued on that connection is bound to
    client_certificate: ClientCertificate | None = field(default=None, repr=False)


def basic_credentials(values: Sequence[str | bytes]) -> tuple[str, str] | None:
    """The ``(client_id, client_secret)`` of the one ``Basic`` authorization value, or None when
    there is none. RFC 7617 and RFC 6749 §2.3.1."""
    if not values:
        return None
    if len(values) > 1:
        raise InvalidRequest("more than one authorization header")
    value = values[0]
    if isinstance(value, bytes) or len(value) > MAX_AUTHORIZATION_LENGTH:
        raise InvalidRequest("the authorization header is malformed")
    scheme, _, encoded = value.partition(" ")
    if scheme.lower() != "basic":
        raise InvalidClient("the token endpoint accepts only Basic client authentication")
    try:
        decoded = base64.b64decode(encoded.strip().encode("ascii"), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeError) as exc:
        raise InvalidClient("the Basic credentials do not decode") from exc
    client_id, sep, secret = decoded.partition(":")
    if not sep:
        raise InvalidClient("the Basic credentials lack a colon")
    return unquote_plus(client_id), unquote_plus(secret)


def presented_credentials(
    authorization: Sequence[str | bytes],
    *,
    client_id: str = "",
    client_secret: str = "",
    client_assertion: str = "",
    client_assertion_type: str = "",
    client_certificate: ClientCertificate | None = None,
) -> PresentedCredentials:
    """The credentials of a request, from its authorization values, its body's parameters and
    the peer certificate of a mutual-TLS connection; raises as the module docstring says. A
    request on a mutual-TLS connection with a ``client_id`` and no other credentials is
    ``tls_client_auth`` (RFC 8705 §2); with a secret or an assertion it is that method, and its
    certificate only binds the token."""
    presented = _presented(
        authorization,
        client_id=client_id,
        client_secret=client_secret,
        client_assertion=client_assertion,
        client_assertion_type=client_assertion_type,
    )
    if client_certificate is None:
        return presented
    if presented.method is ClientAuthMethod.CLIENT_SECRET_POST and not presented.client_secret:
        return PresentedCredentials(
            ClientAuthMethod.TLS_CLIENT_AUTH, presented.client_id, client_certificate=client_certificate
        )
    return replace(presented, client_certificate=client_certificate)


def _presented(
    authorization: Sequence[str | bytes],
    *,
    client_id: str,
    client_secret: str,
    client_assertion: str,
    client_assertion_type: str,
) -> PresentedCredentials:
    basic = basic_credentials(authorization)
    if client_assertion or client_assertion_type:
        if basic is not None or client_secret:
            raise InvalidRequest("use either a client assertion or a client secret, not both")
        if not client_assertion or not client_assertion_type:
            raise InvalidRequest("client_assertion and client_assertion_type go together")
        if len(client_assertion) > MAX_ASSERTION_LENGTH:
            raise InvalidRequest("client_assertion is too long")
        if client_assertion_type != CLIENT_ASSERTION_TYPE:
            raise with_detail(
                InvalidClient(f"client_assertion_type must be {CLIENT_ASSERTION_TYPE}"),
                "assertion_type_unsupported",
            )
        return PresentedCredentials(
            ClientAuthMethod.PRIVATE_KEY_JWT,
            client_id or peek_subject(client_assertion),
            client_assertion=client_assertion,
            client_assertion_type=client_assertion_type,
        )
    if basic is None:
        return PresentedCredentials(ClientAuthMethod.CLIENT_SECRET_POST, client_id, client_secret)
    if client_secret:
        raise InvalidRequest("use either Basic authentication or client_secret, not both")
    if client_id and client_id != basic[0]:
        raise InvalidRequest("client_id differs from the Basic credentials")
    return PresentedCredentials(ClientAuthMethod.CLIENT_SECRET_BASIC, basic[0], basic[1])
