"""Where a resource server gets the issuer's public keys, and how it keeps them.

A :class:`JwksSource` fetches the JWK Set (RFC 7517 §5) as JSON text. A :class:`JwksCache` holds
the parsed keys in memory and decides when to fetch:

- on a schedule: once the set is older than ``max_age``, one background refresh (callers go on
  with the keys they have);
- on an unknown ``kid``: at most one fetch per ``cooldown``, single-flight, however many
  requests ask. Fetches run in a background thread; the caller that started one waits for it
  (bounded), others with unknown kids are refused at once rather than made to wait, and a kid
  still unknown afterwards is remembered in a bounded negative cache, so a flood of made-up kids
  costs nothing and never takes the threads that requests with known keys need;
- on failure: the last good set is kept, so a resource server keeps verifying while the issuer
  is down. Only when no set was ever fetched does verification fail, as temporarily unavailable;
- on a push: a source that can ``subscribe`` (``GrpcJwksSource`` through ``WatchJwks``) delivers
  every change as it happens, and polling becomes the fallback;
- hygiene: a set whose entries are all unusable never replaces the last good set, and a kid that
  two entries share is unusable.

Every installed set is one immutable :class:`KeySet`, swapped in whole with its ``epoch``: a
verification is only ever cached under the epoch of the set whose key checked it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Protocol

from cryptography.hazmat.primitives.asymmetric import rsa

from authsvc.core.errors import TemporarilyUnavailable
from authsvc.listen import is_loopback
from authsvc.verify.jose import parse_rsa_jwk

if TYPE_CHECKING:
    import grpc

__all__ = [
    "FileJwksSource",
    "GrpcJwksSource",
    "JwksCache",
    "JwksSource",
    "KeySet",
    "StaticJwksSource",
    "WouldBlock",
]

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
    """Raised by ``JwksCache.find(..., block=False)`` when answering needs a fetch that is now in
    flight: an event loop awaits ``future`` (it costs no thread) and asks again."""

    def __init__(self, future: Future[bool]) -> None:
        super().__init__("the key set is being fetched")
        self.future = future


@dataclass(frozen=True, slots=True)
class KeySet:
    """One installed JWK Set. Replaced whole, never changed in place, so that a reader holds keys
    and ``epoch`` of the same moment.

    ``epoch`` changes whenever a key leaves the set (or a kid's key material changes): anything
    derived from the set, such as a cached verification, is valid only under the epoch of the
    set that produced it. Adding a key (a rotation's ``next`` key) keeps the epoch, since it
    invalidates nothing.
    """

    keys: Mapping[str, rsa.RSAPublicKey]
    epoch: int


_EMPTY = KeySet(MappingProxyType({}), 0)


class JwksCache:
    """The in-memory key set of one issuer, refreshed as described in the module docstring.

    Fetches run in a background thread, one at a time. A caller that meets an unknown ``kid``
    may wait for one fetch, bounded by ``fetch_timeout``; at most ``max_waiters`` callers wait on
    any one fetch (default 1: the caller that started it), and the rest are refused at once, so
    that a flood of made-up kids never takes the threads that known-key requests need. Until a
    first set has been fetched every caller may wait: none could be served without it.
    """

    def __init__(
        self,
        source: JwksSource,
        *,
        max_age: float = 60.0,
        cooldown: float = 5.0,
        max_unknown_kids: int = 1024,
        max_waiters: int = 1,
        fetch_timeout: float = 5.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_waiters < 0 or fetch_timeout <= 0:
            raise ValueError("max_waiters must be >= 0 and fetch_timeout > 0")
        self.source = source
        self.max_age = max_age
        self.cooldown = cooldown
        self.max_waiters = max_waiters
        self.fetch_timeout = fetch_timeout
        self._max_unknown = max_unknown_kids
        self._now = monotonic
        self._set = _EMPTY
        self._fetched_at: float | None = None  # last successful fetch or push
        self._attempted_at: float | None = None  # last fetch started, successful or not
        self._unknown: OrderedDict[str, float] = OrderedDict()
        self._lock = threading.Lock()  # held for moments only, never across a fetch
        self._inflight: Future[bool] | None = None
        self._inflight_waiters = 0
        self._pushes = 0  # sets installed by push: a fetch older than a push must not undo it
        self.fetches = 0
        subscribe = getattr(source, "subscribe", None)
        if callable(subscribe):
            subscribe(self._pushed)

    @property
    def effective_max_age(self) -> float:
        """``max_age``, or less if the issuer said its keys may be cached for less."""
        hint = getattr(self.source, "max_age", None)
        return min(self.max_age, hint) if isinstance(hint, int | float) and hint > 0 else self.max_age

    @property
    def key_set(self) -> KeySet:
        """The keys installed now, with their epoch (one consistent snapshot)."""
        return self._set

    @property
    def epoch(self) -> int:
        return self._set.epoch

    @property
    def has_keys(self) -> bool:
        """True once a key set has been fetched or pushed."""
        return self._fetched_at is not None

    @property
    def kids(self) -> frozenset[str]:
        return frozenset(self._set.keys)

    def get(self, kid: str, *, block: bool = True) -> rsa.RSAPublicKey | None:
        """The key for ``kid``, or None; see :meth:`find`."""
        found = self.find(kid, block=block)
        return None if found is None else found[0]

    def find(self, kid: str, *, block: bool = True) -> tuple[rsa.RSAPublicKey, int] | None:
        """The key for ``kid`` and the epoch of the set it came from; None if the issuer has no
        such key (or it cannot be looked up now without waiting beyond the rules).

        A known kid never waits: a due scheduled refresh starts in the background. An unknown
        kid (or the very first use) starts a fetch unless one ran within the cooldown, and waits
        for it if a waiter slot is free; with ``block=False`` that raises :class:`WouldBlock`
        instead of waiting. Raises :class:`TemporarilyUnavailable` only when no key set could
        ever be fetched.
        """
        now = self._now()
        if self._fetched_at is not None and now - self._fetched_at >= self.effective_max_age:
            self._refresh_in_background(now)
        current = self._set
        key = current.keys.get(kid)
        if key is not None:
            return key, current.epoch
        if self._fetched_at is not None:
            expiry = self._unknown.get(kid)
            if expiry is not None and expiry > now:
                return None
        future = self._join_fetch(now)
        if future is not None:
            if not block:
                raise WouldBlock(future)
            with contextlib.suppress(FutureTimeout):
                future.result(timeout=self.fetch_timeout)
        return self.settle(kid)

    def settle(self, kid: str) -> tuple[rsa.RSAPublicKey, int] | None:
        """After waiting (or declining to wait) for a fetch: the key for ``kid`` if the set now
        has it; else None, and the kid is remembered as unknown for one cooldown."""
        if self._fetched_at is None:
            raise TemporarilyUnavailable("the issuer's keys are unreachable and none are cached")
        current = self._set
        key = current.keys.get(kid)
        if key is not None:
            return key, current.epoch
        with self._lock:
            self._unknown[kid] = self._now() + self.cooldown
            self._unknown.move_to_end(kid)
            while len(self._unknown) > self._max_unknown:
                self._unknown.popitem(last=False)
        return None

    def _join_fetch(self, now: float) -> Future[bool] | None:
        """The fetch to wait for, starting one unless one ran within the cooldown; None when
        there is none or its waiter slots are taken."""
        with self._lock:
            if self._inflight is None:
                if self._attempted_at is not None and now - self._attempted_at < self.cooldown:
                    return None
                self._launch(now)
            # before the first set arrives no request can succeed without it: all may wait
            if self._fetched_at is not None and self._inflight_waiters >= self.max_waiters:
                return None
            self._inflight_waiters += 1
            return self._inflight

    def _refresh_in_background(self, now: float) -> None:
        with self._lock:
            if self._inflight is not None:
                return
            # a scheduled refresh waits one max age after the last attempt, failed or not: polling
            # on time must not depend on the unknown-kid cooldown, and a down issuer is not hammered
            pause = min(self.cooldown, self.effective_max_age)
            if self._attempted_at is not None and now - self._attempted_at < pause:
                return
            self._launch(now)

    def _launch(self, now: float) -> Future[bool]:
        """Start a fetch in a background thread; the caller holds the lock."""
        future: Future[bool] = Future()
        future.set_running_or_notify_cancel()  # a waiter giving up must not cancel it for the rest
        self._inflight, self._inflight_waiters = future, 0
        self._attempted_at = now
        threading.Thread(
            target=self._run_fetch,
            args=(future, now, self._pushes),
            name="authsvc-jwks-fetch",
            daemon=True,
        ).start()
        return future

    def refresh(self) -> bool:
        """Fetch now, cooldown or not (joining a fetch in flight), and wait for it, at most
        ``fetch_timeout``; True if a usable set was loaded. Call it at start-up, so that the first
        request does not wait for the initial fetch."""
        with self._lock:
            future = self._inflight or self._launch(self._now())
        try:
            return future.result(timeout=self.fetch_timeout)
        except FutureTimeout:
            return False

    def _run_fetch(self, future: Future[bool], started: float, pushes: int) -> None:
        ok = False
        try:
            ok = self._fetch(started, pushes)
        except Exception:
            log.exception("JWKS fetch failed unexpectedly")
        finally:
            with self._lock:
                self._inflight = None
            future.set_result(ok)

    def _fetch(self, started: float, pushes: int) -> bool:
        self.fetches += 1
        try:
            document = self.source.fetch()
        except Exception as exc:
            log.warning(
                "JWKS fetch failed (%s); keeping %d cached keys", type(exc).__name__, len(self._set.keys)
            )
            return False
        with self._lock:
            if self._pushes != pushes:
                # a set was pushed while this fetch was in flight: the push is the newer truth,
                # and installing this answer could bring back a key it removed
                return True
            installed = self._install(document)
            if installed:
                self._fetched_at = started
        return installed

    def _pushed(self, jwks_json: str) -> None:
        """A key set the source pushed (WatchJwks): as good as a fetch, and newer than any fetch
        in flight."""
        with self._lock:
            if self._install(jwks_json):
                self._pushes += 1
                self._fetched_at = self._now()

    def _install(self, jwks_json: str) -> bool:
        """Parse and swap in a set; the caller holds the lock. False (and the last good set kept)
        for a document that is not a JWK Set, or whose entries are all unusable."""
        try:
            document = json.loads(jwks_json)
            entries = document["keys"] if isinstance(document, dict) else None
            if not isinstance(entries, list):
                raise ValueError("the JWK Set has no keys array")
        except (ValueError, KeyError) as exc:
            log.warning("ignoring a malformed JWK Set (%s); keeping %d cached keys", exc, len(self._set.keys))
            return False
        keys: dict[str, rsa.RSAPublicKey] = {}
        duplicates: set[str] = set()
        for entry in entries:
            try:
                kid, key = parse_rsa_jwk(entry)
            except ValueError as exc:
                log.warning("ignoring a JWK: %s", exc)
                continue
            if kid in keys or kid in duplicates:
                duplicates.add(kid)
                continue
            keys[kid] = key
        for kid in duplicates:
            # two keys under one kid: a token naming it could mean either, so it means neither
            log.warning("ignoring kid %r: the JWK Set has more than one key with it", kid[:64])
            keys.pop(kid, None)
        if entries and not keys:
            log.warning("ignoring a JWK Set with no usable key; keeping %d cached keys", len(self._set.keys))
            return False
        old = self._set.keys
        removed = any(
            kid not in keys or keys[kid].public_numbers() != key.public_numbers() for kid, key in old.items()
        )
        if removed or keys.keys() != old.keys():
            self._set = KeySet(MappingProxyType(keys), self._set.epoch + 1 if removed else self._set.epoch)
            self._unknown.clear()
        return True

    def close(self) -> None:
        """Stop the source's background work (the WatchJwks stream), if it has any."""
        close = getattr(self.source, "close", None)
        if callable(close):
            close()
