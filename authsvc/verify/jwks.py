"""Where a resource server gets the issuer's public keys, and how it keeps them.

A :class:`JwksSource` fetches the JWK Set (RFC 7517 §5) as JSON text. A :class:`JwksCache` holds
the parsed keys in memory and decides when to fetch:

- on a schedule: once the set is older than ``max_age``, one background refresh (callers go on
  with the keys they have);
- on an unknown ``kid``: at most one fetch per ``cooldown``, single-flight, however many
  requests ask; a kid still unknown afterwards is remembered in a bounded negative cache so a
  flood of made-up kids costs nothing;
- on failure: the last good set is kept, so a resource server keeps verifying while the issuer
  is down. Only when no set was ever fetched does verification fail, as temporarily unavailable;
- on a push: a source that can ``subscribe`` (``GrpcJwksSource`` through ``WatchJwks``) delivers
  every change as it happens, and polling becomes the fallback.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from cryptography.hazmat.primitives.asymmetric import rsa

from authsvc.core.errors import TemporarilyUnavailable
from authsvc.listen import is_loopback
from authsvc.verify.jose import parse_rsa_jwk

if TYPE_CHECKING:
    import grpc

__all__ = ["FileJwksSource", "GrpcJwksSource", "JwksCache", "JwksSource", "StaticJwksSource", "WouldBlock"]

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


def _is_local(target: str) -> bool:
    if target.startswith("unix:"):
        return True
    host = target.removeprefix("dns:///").removeprefix("ipv4:").removeprefix("ipv6:").rpartition(":")[0]
    return is_loopback(host.strip("[]"))


class GrpcJwksSource:
    """The TokenService's keys over gRPC: ``GetJwks`` to poll, and ``WatchJwks`` to be told.

    With ``watch`` (the default), a :class:`JwksCache` built on this source subscribes to the
    ``WatchJwks`` stream in a background thread: the TokenService pushes every change of its key
    set, so a new key arrives long before it signs. The stream reconnects with backoff; a server
    without WatchJwks (UNIMPLEMENTED) leaves the cache polling ``GetJwks`` as usual.

    ``credentials`` are channel credentials for TLS (``grpc.ssl_channel_credentials(...)``).
    Without them the channel is plaintext, which is accepted only for a loopback or ``unix:``
    target unless ``allow_plaintext`` says a trusted mesh provides the transport security.
    """

    def __init__(
        self,
        target: str,
        *,
        credentials: grpc.ChannelCredentials | None = None,
        timeout: float = 2.0,
        options: Sequence[tuple[str, str | int]] = (),
        watch: bool = True,
        max_backoff: float = 30.0,
        allow_plaintext: bool = False,
    ) -> None:
        if credentials is None and not allow_plaintext and not _is_local(target):
            # keys fetched in plaintext across a network can be swapped for an attacker's, who
            # could then mint any token this verifier accepts
            raise ValueError(
                f"refusing to fetch signing keys from {target} without TLS: pass credentials="
                "grpc.ssl_channel_credentials(...), or allow_plaintext=True inside a trusted mesh"
            )
        self.target = target
        self._credentials = credentials
        self._timeout = timeout
        self._options = list(options)
        self._watch = watch
        self._max_backoff = max_backoff
        self._lock = threading.Lock()
        self._channel: grpc.Channel | None = None
        self._closed = threading.Event()
        self._stream: Any = None
        self.max_age: float | None = None
        """The max age the TokenService attached to its last GetJwks answer."""
        self.watching = False
        """True while a WatchJwks stream is open."""

    def _stub(self) -> Any:
        with self._lock:
            if self._channel is None:
                import grpc  # noqa: PLC0415 - only this source needs grpc at import

                if self._credentials is None:
                    self._channel = grpc.insecure_channel(self.target, options=self._options)
                else:
                    self._channel = grpc.secure_channel(self.target, self._credentials, options=self._options)
            from authsvc.v1 import token_pb2_grpc  # noqa: PLC0415

            return token_pb2_grpc.TokenServiceStub(self._channel)

    def fetch(self) -> str:
        from authsvc.v1 import token_pb2  # noqa: PLC0415

        response = self._stub().GetJwks(token_pb2.GetJwksRequest(), timeout=self._timeout)
        self.max_age = float(response.max_age_seconds) or None
        return str(response.jwks_json)

    def subscribe(self, callback: Callable[[str], object]) -> None:
        """Deliver every JWK Set the server pushes to ``callback``, from a background thread."""
        if self._watch:
            threading.Thread(
                target=self._watch_loop, args=(callback,), name="authsvc-jwks-watch", daemon=True
            ).start()

    def _watch_loop(self, callback: Callable[[str], object]) -> None:
        import grpc  # noqa: PLC0415

        from authsvc.v1 import token_pb2  # noqa: PLC0415

        backoff = 0.5
        while not self._closed.is_set():
            was_watching = False
            try:
                self._stream = self._stub().WatchJwks(token_pb2.WatchJwksRequest())
                for response in self._stream:
                    self.watching = was_watching = True
                    backoff = 0.5
                    callback(str(response.jwks_json))
            except grpc.RpcError as err:
                code = err.code() if hasattr(err, "code") else None
                if code == grpc.StatusCode.UNIMPLEMENTED:
                    log.info("%s does not offer WatchJwks; polling GetJwks only", self.target)
                    return
                if self._closed.is_set():
                    return
                # say so once when a stream drops; retries of a down issuer stay at debug level
                log.log(
                    logging.INFO if was_watching else logging.DEBUG,
                    "WatchJwks stream to %s ended (%s); reconnecting",
                    self.target,
                    code,
                )
            finally:
                self.watching = False
            # full jitter, so that many verifiers do not reconnect in step
            self._closed.wait(random.uniform(0, backoff))  # noqa: S311 - jitter, not secrecy
            backoff = min(self._max_backoff, backoff * 2)

    def close(self) -> None:
        self._closed.set()
        with self._lock:
            if self._stream is not None:
                self._stream.cancel()
            if self._channel is not None:
                self._channel.close()
            self._channel = None


class WouldBlock(Exception):
    """Raised by ``JwksCache.get(..., block=False)`` when answering needs a fetch in this thread."""


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
        self._fetch_lock = threading.Lock()  # held across a fetch: one in flight at a time
        self._state_lock = threading.Lock()  # held for moments: installing keys, bookkeeping
        self._background: threading.Thread | None = None
        self.generation = 0
        self.fetches = 0
        subscribe = getattr(source, "subscribe", None)
        if callable(subscribe):
            subscribe(self._pushed)

    @property
    def effective_max_age(self) -> float:
        """``max_age``, or less if the issuer said its keys may be cached for less."""
        hint = getattr(self.source, "max_age", None)
        return min(self.max_age, hint) if isinstance(hint, int | float) and hint > 0 else self.max_age

    def get(self, kid: str, *, block: bool = True) -> rsa.RSAPublicKey | None:
        """The key for ``kid``, fetching as the rules allow; None if the issuer has no such key.

        A known kid never waits: a due scheduled refresh runs in a background thread. Only an
        unknown kid (or the very first use) may fetch in the caller's thread; with
        ``block=False`` that raises :class:`WouldBlock` instead, so that an event loop can retry
        the call in a worker thread. Raises :class:`TemporarilyUnavailable` only when no key set
        could ever be fetched.
        """
        now = self._now()
        if self._fetched_at is None:
            self._refresh_blocking(initial=True, block=block)
        elif now - self._fetched_at >= self.effective_max_age:
            self._refresh_in_background()
        key = self._keys.get(kid)
        if key is not None:
            return key
        expiry = self._unknown.get(kid)
        if expiry is not None and expiry > now:
            return None
        self._refresh_blocking(initial=False, block=block)
        key = self._keys.get(kid)
        if key is None:
            with self._state_lock:
                self._unknown[kid] = self._now() + self.cooldown
                self._unknown.move_to_end(kid)
                while len(self._unknown) > self._max_unknown:
                    self._unknown.popitem(last=False)
        return key

    def _cooling_down(self) -> bool:
        return self._attempted_at is not None and self._now() - self._attempted_at < self.cooldown

    def _refresh_blocking(self, *, initial: bool, block: bool) -> None:
        """Fetch in this thread unless a fetch ran within the cooldown. Concurrent callers wait for
        the one fetch in flight (single-flight) rather than starting their own."""
        fetched = initial and self._fetched_at is not None
        if not block and not fetched and (not self._cooling_down() or self._fetch_lock.locked()):
            raise WouldBlock()  # a fetch is due, or one is in flight and would be waited for
        with self._fetch_lock:
            if initial and self._fetched_at is not None:
                return  # another thread fetched while we waited
            if not self._cooling_down():
                self._fetch()
        if self._fetched_at is None:
            raise TemporarilyUnavailable("the issuer's keys are unreachable and none are cached")

    def _refresh_in_background(self) -> None:
        with self._state_lock:
            if self._background is not None and self._background.is_alive():
                return
            # a scheduled refresh waits one max age after the last attempt, failed or not: polling
            # on time must not depend on the unknown-kid cooldown, and a down issuer is not hammered
            pause = min(self.cooldown, self.effective_max_age)
            if self._attempted_at is not None and self._now() - self._attempted_at < pause:
                return
            self._attempted_at = self._now()  # claimed: no second background refresh starts meanwhile
            self._background = threading.Thread(target=self.refresh, name="authsvc-jwks-refresh", daemon=True)
            self._background.start()

    def refresh(self) -> bool:
        """Fetch now (waiting only for a fetch already in flight); True if a usable set was loaded."""
        with self._fetch_lock:
            return self._fetch()

    def _fetch(self) -> bool:
        """Fetch and install, holding only the fetch lock: readers of known keys never wait on it."""
        self._attempted_at = self._now()
        self.fetches += 1
        try:
            document = self.source.fetch()
        except Exception as exc:
            log.warning("JWKS fetch failed (%s); keeping %d cached keys", type(exc).__name__, len(self._keys))
            return False
        with self._state_lock:
            installed = self._install(document)
            if installed:
                self._fetched_at = self._attempted_at
        return installed

    def _pushed(self, jwks_json: str) -> None:
        """A key set the source pushed (WatchJwks): as good as a fetch."""
        with self._state_lock:
            if self._install(jwks_json):
                self._fetched_at = self._now()

    def _install(self, jwks_json: str) -> bool:
        try:
            document = json.loads(jwks_json)
            entries = document["keys"] if isinstance(document, dict) else None
            if not isinstance(entries, list):
                raise ValueError("the JWK Set has no keys array")
        except (ValueError, KeyError) as exc:
            log.warning("ignoring a malformed JWK Set (%s); keeping %d cached keys", exc, len(self._keys))
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
        return True

    @property
    def kids(self) -> frozenset[str]:
        return frozenset(self._keys)

    def close(self) -> None:
        """Stop the source's background work (the WatchJwks stream), if it has any."""
        close = getattr(self.source, "close", None)
        if callable(close):
            close()
