"""Reading client credentials from gRPC metadata: the ``authorization`` entries, handed to the
transport-free rules of :mod:`authsvc.core.client_auth`."""

from __future__ import annotations

from collections.abc import Iterable

from authsvc.core.client_auth import MAX_AUTHORIZATION_LENGTH
from authsvc.core.client_auth import basic_credentials as _basic

__all__ = ["MAX_AUTHORIZATION_LENGTH", "authorization_values", "basic_credentials"]


def authorization_values(metadata: Iterable[tuple[str, str | bytes]] | None) -> list[str | bytes]:
    return [v for k, v in (metadata or ()) if k == "authorization"]


def basic_credentials(metadata: Iterable[tuple[str, str | bytes]] | None) -> tuple[str, str] | None:
    """The ``(client_id, client_secret)`` of an ``authorization: Basic …`` entry, or None."""
    return _basic(authorization_values(metadata))
