"""Where a resource server gets the issuer's public keys, and how it keeps them.

A :class:`JwksSource` fetches the JWK Set (RFC 7517 §5) as JSON text. A :class:`JwksCache` holds
the parsed keys in memory and decides when to fetch:

- on a schedule: once the set is older than ``max_age``, one background refresh (callers go on
  with the keys they have);
- on an unknown ``kid``: at most one fetch per ``cooldown``, single-flight, however many
  requests ask; a kid still unknown afterwards is remembered in a bounded negative cache so a
  flood of made-up kids costs nothing;
- on failure: the last good set is kept, so a resource server keeps verifying while the issuer
  is down. Only when no set was ever fetched does verification fail, as temporarily unavailable.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from cryptography.hazmat.primitives.asymmetric import rsa

from authsvc.core.errors import TemporarilyUnavailable
from authsvc.verify.jose import parse_rsa_jwk

if TYPE_CHECKING:
    import grpc

__all__ = ["FileJwksSource", "GrpcJwksSource", "JwksCache", "JwksSource", "StaticJwksSource"]

log = logging.getLogger("authsvc.verify.jwks")


class JwksSource(Protocol):
    """Fetches the issuer's JWK Set as JSON text. Raises on failure."""

    def fetch(self) -> str: ...


class StaticJwksSource:
    """A fixed JWK Set (tests, or keys distributed by configuration management)."""

    def __init__(self, jwks_json: str) -> None:
        self.jwks_json = jwks_json

    def fetch(self) -> str:
        return self.jwks_json


class FileJwksSource:
    """A JWK Set in a local file, re-read on every fetch."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)

    def fetch(self) -> str:
        return self.path.read_text(encoding="utf-8")


class GrpcJwksSource:
    """The TokenService's ``GetJwks`` over gRPC.

    ``credentials`` are channel credentials for TLS (``grpc.ssl_channel_credentials(...)``);
    without them the channel is plaintext, which is only fit for loopback or a trusted mesh.
    """

    def __init__(
        self,
        target: str,
        *,
        credentials: grpc.ChannelCredentials | None = None,
        timeout: float = 2.0,
        options: Sequence[tuple[str, str | int]] = (),
    ) -> None:
        self.target = target
        self._credentials = credentials
        self._timeout = timeout
        self._options = list(options)
        self._lock = threading.Lock()
        self._channel: grpc.Channel | None = None
        self._fetch: Callable[..., object] | None = None

    def _stub_call(self) -> Callable[..., object]:
        with self._lock:
            if self._fetch is None:
                import grpc  # noqa: PLC0415 - only this source needs grpc at import

                from authsvc.v1 import token_pb2_grpc  # noqa: PLC0415

                if self._credentials is None:
                    self._channel = grpc.insecure_channel(self.target, options=self._options)
                else:
                    self._channel = grpc.secure_channel(self.target, self._credentials, options=self._options)
                self._fetch = token_pb2_grpc.TokenServiceStub(self._channel).GetJwks
            return self._fetch

    def fetch(self) -> str:
        from authsvc.v1 import token_pb2  # noqa: PLC0415

        response = self._stub_call()(token_pb2.GetJwksRequest(), timeout=self._timeout)
        return str(response.jwks_json)  # type: ignore[attr-defined]

    def close(self) -> None:
        with self._lock:
            if self._channel is not None:
                self._channel.close()
            self._channel, self._fetch = None, None


class JwksCache:
    """The in-memory key set of one issuer, refreshed as described in the module docstring.

    ``generation`` increases whenever the set of keys changes, so that anything derived from the
    old set (verified tokens) can be invalidated.
    """

    def __init__(
        self,
        source: JwksSource,
        *,
        max_age: float = 60.0,
        cooldown: float = 5.0,
        max_unknown_kids: int = 1024,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.source = source
        self.max_age = max_age
        self.cooldown = cooldown
        self._max_unknown = max_unknown_kids
        self._now = monotonic
        self._keys: dict[str, rsa.RSAPublicKey] = {}
        self._fetched_at: float | None = None  # last successful fetch
        self._attempted_at: float | None = None  # last fetch attempt, successful or not
        self._unknown: OrderedDict[str, float] = OrderedDict()
        self._lock = threading.Lock()
        self._background: threading.Thread | None = None
        self.generation = 0
        self.fetches = 0

    def get(self, kid: str) -> rsa.RSAPublicKey | None:
        """The key for ``kid``, fetching as the rules allow; None if the issuer has no such key.

        Raises :class:`TemporarilyUnavailable` only when no key set could ever be fetched.
        """
        now = self._now()
        if self._fetched_at is None:
            self._refresh_blocking(initial=True)
        elif now - self._fetched_at >= self.max_age:
            self._refresh_in_background()
        key = self._keys.get(kid)
        if key is not None:
            return key
        expiry = self._unknown.get(kid)
        if expiry is not None and expiry > now:
            return None
        self._refresh_blocking(initial=False)
        key = self._keys.get(kid)
        if key is None:
            with self._lock:
                self._unknown[kid] = self._now() + self.cooldown
                self._unknown.move_to_end(kid)
                while len(self._unknown) > self._max_unknown:
                    self._unknown.popitem(last=False)
        return key

    def _refresh_blocking(self, *, initial: bool) -> None:
        with self._lock:
            if initial and self._fetched_at is not None:
                return  # another thread fetched while we waited
            if self._attempted_at is not None and self._now() - self._attempted_at < self.cooldown:
                if self._fetched_at is None:
                    raise TemporarilyUnavailable("the issuer's keys are unreachable and none are cached")
                return
            self._fetch_locked()
        if self._fetched_at is None:
            raise TemporarilyUnavailable("the issuer's keys are unreachable and none are cached")

    def _refresh_in_background(self) -> None:
        with self._lock:
            if self._background is not None and self._background.is_alive():
                return
            if self._attempted_at is not None and self._now() - self._attempted_at < self.cooldown:
                return
            self._background = threading.Thread(target=self.refresh, name="authsvc-jwks-refresh", daemon=True)
            self._background.start()

    def refresh(self) -> bool:
        """Fetch now (subject to nothing); True if a usable set was loaded."""
        with self._lock:
            return self._fetch_locked()

    def _fetch_locked(self) -> bool:
        self._attempted_at = self._now()
        self.fetches += 1
        try:
            document = json.loads(self.source.fetch())
            entries = document["keys"] if isinstance(document, dict) else None
            if not isinstance(entries, list):
                raise ValueError("the JWK Set has no keys array")
        except Exception as exc:
            log.warning("JWKS fetch failed (%s); keeping %d cached keys", type(exc).__name__, len(self._keys))
            return False
        keys: dict[str, rsa.RSAPublicKey] = {}
        for entry in entries:
            try:
                kid, key = parse_rsa_jwk(entry)
            except ValueError as exc:
                log.warning("ignoring a JWK: %s", exc)
                continue
            keys[kid] = key
        if set(keys) != set(self._keys) or any(
            keys[k].public_numbers() != self._keys[k].public_numbers() for k in keys
        ):
            self.generation += 1
            self._unknown.clear()
        self._keys = keys
        self._fetched_at = self._attempted_at
        return True

    @property
    def kids(self) -> frozenset[str]:
        return frozenset(self._keys)
