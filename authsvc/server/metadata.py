"""Reading client credentials from gRPC metadata (RFC 6749 §2.3.1, RFC 7617)."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable
from urllib.parse import unquote_plus

from authsvc.core.errors import InvalidClient, InvalidRequest

__all__ = ["MAX_AUTHORIZATION_LENGTH", "basic_credentials"]

MAX_AUTHORIZATION_LENGTH = 2048


def basic_credentials(metadata: Iterable[tuple[str, str | bytes]] | None) -> tuple[str, str] | None:
    """The ``(client_id, client_secret)`` of an ``authorization: Basic …`` entry, or None.

    RFC 6749 §2.3.1: the id and secret are form-urlencoded, joined by a colon and base64-encoded.
    More than one authorization entry is :class:`InvalidRequest`; another scheme, or a value that
    does not decode, is :class:`InvalidClient` (unsupported or failed client authentication).
    """
    values = [v for k, v in (metadata or ()) if k == "authorization"]
    if not values:
        return None
    if len(values) > 1:
        raise InvalidRequest("more than one authorization metadata entry")
    value = values[0]
    if isinstance(value, bytes) or len(value) > MAX_AUTHORIZATION_LENGTH:
        raise InvalidRequest("the authorization metadata entry is malformed")
    scheme, _, encoded = value.partition(" ")
    if scheme.lower() != "basic":
        raise InvalidClient("the token endpoint accepts only Basic client authentication in metadata")
    try:
        decoded = base64.b64decode(encoded.strip().encode("ascii"), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeError) as exc:
        raise InvalidClient("the Basic credentials do not decode") from exc
    client_id, sep, secret = decoded.partition(":")
    if not sep:
        raise InvalidClient("the Basic credentials lack a colon")
    return unquote_plus(client_id), unquote_plus(secret)
