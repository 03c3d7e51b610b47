"""The keys of ``private_key_jwt`` clients, for the token endpoint (the core's
:class:`~authsvc.core.client_assertion.ClientKeyLookup`).

A client registered with ``--jwks-file`` has its JWK Set in its record: it is parsed once per
version of the record and kept. A client registered with ``--jwks-uri`` publishes its keys itself
and rotates them without re-registering: the set is fetched over HTTPS with the verifier's own
fetcher (:class:`authsvc.verify.HttpJwksSource`: certificate and host checked, redirects only
within the origin, at most :data:`~authsvc.core.client_keys.MAX_JWKS_BYTES`, a time limit on the
whole answer, ``ETag`` revalidation, ``Cache-Control`` freshness) and cached by the verifier's
rules:

- kept for ``max_age`` (less if the client's ``Cache-Control`` says so, never under 5 s), then
  refreshed on the next request that needs it;
- an unknown ``kid`` refreshes the set at most once per ``cooldown`` (the client has just
  rotated), never once per request;
- on a failed fetch the last good set is kept, and a set with no usable key never replaces it;
  a set that publishes private key material is refused and the cached one dropped, since a
  published private key signs for anyone;
- one fetch per URL at a time; while it runs, requests that have a set go on with it and others
  wait for it (bounded by the fetch's time limit).

The server, not the client, decides where it connects: a ``jwks_uri`` whose host resolves to a
loopback, private, link-local, shared, multicast or otherwise non-global address is refused at
connection time (every address it resolves to is checked, and the connection goes to a checked
address, so a DNS answer that changes between check and use cannot slip through), unless
``allow_internal`` (``authsvc serve --client-jwks-allow-internal``) says internal key servers are
expected.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from authsvc.core.client_assertion import ClientKeysUnavailable
from authsvc.core.client_keys import MAX_JWKS_BYTES, ClientKeySet, PrivateKeyMaterial, parse_client_jwks
from authsvc.core.clients import Client
from authsvc.logsafe import loggable
from authsvc.verify.jwks import MIN_HTTP_MAX_AGE, HttpJwksSource, JwksSource

__all__ = ["ClientKeys", "InternalAddress", "guarded_connection", "is_internal_address"]

log = logging.getLogger("authsvc.client_keys")

_MAX_CACHED = 4096


class InternalAddress(OSError):
    """A ``jwks_uri`` host resolved to an address the server must not be made to connect to."""


def is_internal_address(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """True for any address that is not a global unicast one: loopback, private (RFC 1918, ULA),
    link-local, shared (RFC 6598), documentation, reserved, unspecified, multicast; an IPv4-mapped
    IPv6 address counts as its IPv4 address."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return not address.is_global or address.is_multicast


def guarded_connection(*, allow_internal: bool) -> Callable[..., socket.socket]:
    """A ``socket.create_connection`` that resolves the host once, refuses (:class:`InternalAddress`)
    if any address it resolves to is internal (unless ``allow_internal``), and connects to one of
    the addresses it checked."""

    def connect(
        address: tuple[str, int], timeout: float | None = None, source_address: Any = None, *_more: Any
    ) -> socket.socket:
        host, port = address[0], address[1]
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        if not allow_internal:
            for *_rest, sockaddr in infos:
                ip = ipaddress.ip_address(str(sockaddr[0]).partition("%")[0])
                if is_internal_address(ip):
                    raise InternalAddress(
                        f"{loggable(host, 128)} resolves to the internal address {ip}: refused (a client's "
                        "jwks_uri must be a public host, unless the server allows internal ones)"
                    )
        last: OSError = OSError(f"{loggable(host, 128)} resolves to no address")
        for family, kind, proto, _name, sockaddr in infos:
            sock = socket.socket(family, kind, proto)
            try:
                if isinstance(timeout, int | float):  # else the "no timeout given" sentinel
                    sock.settimeout(timeout)
                if source_address is not None:
                    sock.bind(source_address)
                sock.connect(sockaddr)
            except OSError as exc:
                sock.close()
                last = exc
                continue
            return sock
        raise last

    return connect


class _UriKeys:
    """The cached JWK Set of one ``jwks_uri``."""

    def __init__(self, source: JwksSource, where: str) -> None:
        self.source = source
        self.where = where
        self.keys: ClientKeySet | None = None
        self.fetched_at: float | None = None
        self.attempted_at: float | None = None
        self.lock = threading.Lock()


class ClientKeys:
    """The keys of private_key_jwt clients (module docstring). ``source_for`` makes the fetcher of a
    ``jwks_uri`` (tests pass another); ``monotonic`` paces the cache."""

    def __init__(
        self,
        *,
        allow_internal: bool = False,
        ca_file: Path | None = None,
        max_age: float = 60.0,
        cooldown: float = 5.0,
        timeout: float = 3.0,
        source_for: Callable[[str], JwksSource] | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_age < MIN_HTTP_MAX_AGE or cooldown <= 0 or timeout <= 0:
            raise ValueError("max_age, cooldown or timeout is out of range")
        self.allow_internal = allow_internal
        self.max_age = max_age
        self.cooldown = cooldown
        self.timeout = timeout
        self._connect = guarded_connection(allow_internal=allow_internal)
        self._ca_file = ca_file
        self._source_for = source_for or self._https_source
        self._now = monotonic
        self._registered: OrderedDict[str, ClientKeySet] = OrderedDict()
        self._uris: OrderedDict[str, _UriKeys] = OrderedDict()
        self._lock = threading.Lock()

    def _https_source(self, uri: str) -> JwksSource:
        return HttpJwksSource(
            uri,
            timeout=self.timeout,
            ca_file=self._ca_file,
            max_bytes=MAX_JWKS_BYTES,
            create_connection=self._connect,
        )

    def keys_for(self, client: Client, kid: str | None) -> ClientKeySet:
        if client.jwks is not None:
            return self._registered_keys(client.jwks)
        if client.jwks_uri is not None:
            return self._uri_keys(client.jwks_uri, kid)
        raise ClientKeysUnavailable(f"client {client.client_id!r} has no keys registered")

    def _registered_keys(self, jwks: str) -> ClientKeySet:
        digest = hashlib.sha256(jwks.encode()).hexdigest()
        found = self._registered.get(digest)
        if found is None:
            found, _ = parse_client_jwks(jwks)  # checked whole at registration
            with self._lock:
                self._registered[digest] = found
                while len(self._registered) > _MAX_CACHED:
                    self._registered.popitem(last=False)
        return found

    def _entry(self, uri: str) -> _UriKeys:
        with self._lock:
            entry = self._uris.get(uri)
            if entry is None:
                source = self._source_for(uri)
                entry = self._uris[uri] = _UriKeys(source, _without_query(uri))
            self._uris.move_to_end(uri)
            while len(self._uris) > _MAX_CACHED:
                self._uris.popitem(last=False)
            return entry

    def _max_age(self, entry: _UriKeys) -> float:
        hint = getattr(entry.source, "max_age", None)
        return min(self.max_age, hint) if isinstance(hint, int | float) and hint > 0 else self.max_age

    def _wants_fetch(self, entry: _UriKeys, kid: str | None, now: float) -> bool:
        if entry.attempted_at is not None and now - entry.attempted_at < self.cooldown:
            return False
        if entry.keys is None or entry.fetched_at is None:
            return True
        if now - entry.fetched_at >= self._max_age(entry):
            return True
        return kid is not None and kid not in entry.keys.keys

    def _uri_keys(self, uri: str, kid: str | None) -> ClientKeySet:
        entry = self._entry(uri)
        if self._wants_fetch(entry, kid, self._now()):
            # with a set in hand, never wait for another request's fetch; without one, wait for it
            held = (
                entry.lock.acquire(blocking=False)
                if entry.keys is not None
                else entry.lock.acquire(timeout=self.timeout + 1)
            )
            if held:
                try:
                    if self._wants_fetch(entry, kid, self._now()):
                        self._fetch(entry)
                finally:
                    entry.lock.release()
        if entry.keys is None:
            raise ClientKeysUnavailable(f"no keys could be fetched from {entry.where}")
        return entry.keys

    def _fetch(self, entry: _UriKeys) -> None:
        started = self._now()
        entry.attempted_at = started
        try:
            document = entry.source.fetch()
            keys, problems = parse_client_jwks(document)
        except PrivateKeyMaterial as exc:
            entry.keys = entry.fetched_at = None
            log.warning("refusing the client keys at %s: %s; its assertions are refused", entry.where, exc)
            return
        except Exception as exc:
            kept = 0 if entry.keys is None else len(entry.keys.keys)
            log.warning("fetching client keys from %s failed (%s); keeping %d cached keys", entry.where,
                        loggable(str(exc) or type(exc).__name__, 300), kept)  # fmt: skip
            return
        for problem in problems:
            log.warning("ignoring a client key at %s: %s", entry.where, problem)
        if not keys.keys and entry.keys is not None:
            log.warning("the client keys at %s hold no usable key; keeping the %d cached", entry.where,
                        len(entry.keys.keys))  # fmt: skip
            return
        entry.keys, entry.fetched_at = keys, started


def _without_query(uri: str) -> str:
    return uri.partition("?")[0].partition("#")[0]
