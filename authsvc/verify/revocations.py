"""The revocation list at a resource server: the :class:`~authsvc.verify.jwks.JwksCache`'s sibling.

A :class:`RevocationCache` holds one immutable :class:`~authsvc.core.revocation.RevocationSet`,
swapped in whole, so a verification reads one consistent view in two dict lookups. A
:class:`RevocationSource` feeds it: :class:`GrpcRevocationSource` keeps a ``WatchRevocations``
stream open to the TokenService in a background thread, applies the snapshot (replace) and the
numbered changes (merge) it sends, and after a disconnect resumes from the last sequence seen;
:class:`HttpRevocationSource` polls the HTTP edge's ``GET /oauth2/revocations`` instead, where
only HTTP reaches the TokenService, and applies each answer as a snapshot.

Entries are dropped as time passes (an injected clock), once no token they refuse can still be
accepted: ``keep_after_expiry`` seconds after their ``expires_at``, which covers the verifier's
leeway on ``exp`` (at most 300 s); never sooner, and at most once every ``DROP_INTERVAL`` seconds,
since each drop rebuilds the list.

Staleness is an explicit policy. The list is *stale* once no stream has worked for
``max_staleness`` seconds (counting from creation while none ever has). Then either

- fail open (the default): verification goes on with the list as it was, without the newest
  entries; logged once, and readable as :attr:`RevocationCache.stale`; or
- fail closed: every token is refused with
  :class:`~authsvc.core.errors.TemporarilyUnavailable` until a stream works again. A fail-closed
  cache also refuses before its first snapshot: there is nothing yet to check tokens against.
"""

from __future__ import annotations

import base64
import json
import logging
import math
import random
import ssl
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import quote

from authsvc.core.ports import Clock, SystemClock
from authsvc.core.revocation import Revocation, RevocationSet
from authsvc.logsafe import loggable
from authsvc.verify.jwks import (
    JwksFetchError,
    _is_local,
    _origin,
    _SameOriginRedirects,
    checked_url,
    read_capped,
)
from authsvc.verify.outcomes import REVOCATIONS_UNAVAILABLE, REVOKED, Refused, Unavailable

if TYPE_CHECKING:
    import grpc

__all__ = [
    "REVOKED_MESSAGE",
    "GrpcRevocationSource",
    "HttpRevocationSource",
    "RevocationCache",
    "RevocationFetchError",
    "RevocationSink",
    "RevocationSource",
]

log = logging.getLogger("authsvc.verify.revocations")

REVOKED_MESSAGE = "the token has been revoked"
"""The InvalidToken message for a token the list refuses."""

KEEP_AFTER_EXPIRY = 300.0
"""Seconds an entry is kept after its ``expires_at``: the largest leeway a TokenVerifier allows."""

DROP_INTERVAL = 10.0
"""Seconds at least between two drops of expired entries. Each drop rebuilds the list (it is
immutable, read without a lock), so dropping every entry the moment it may go would cost a
rebuild per entry under the lock a verification takes then; an entry kept a little longer refuses
only tokens that are past their ``exp`` and leeway anyway."""


class RevocationSink(Protocol):
    """What a source feeds: :class:`RevocationCache` is one."""

    @property
    def sequence(self) -> int:
        """The last sequence applied: where a reconnecting stream resumes (0: a snapshot)."""
        ...

    def apply(self, *, snapshot: bool, sequence: int, entries: Sequence[Revocation]) -> None:
        """A message of the stream: the whole list (``snapshot``) or entries added."""
        ...

    def stream_down(self) -> None:
        """The stream ended or failed; staleness counts from now."""
        ...


class RevocationSource(Protocol):
    """Delivers the list to a sink from a background thread until closed."""

    def subscribe(self, sink: RevocationSink) -> None: ...

    def close(self) -> None: ...


class RevocationCache:
    """The revocation list one verifier holds; see the module docstring.

    ``source`` is subscribed at once; without one, the caller feeds the cache with :meth:`apply`
    (and :meth:`stream_down`). ``clock`` (wall time) drops expired entries; ``monotonic``
    measures staleness.
    """

    def __init__(
        self,
        source: RevocationSource | None = None,
        *,
        max_staleness: float = 60.0,
        fail_closed: bool = False,
        keep_after_expiry: float = KEEP_AFTER_EXPIRY,
        clock: Clock | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if not math.isfinite(max_staleness) or max_staleness <= 0:
            raise ValueError("max_staleness must be a positive number of seconds")
        if not 0 <= keep_after_expiry <= 86_400:
            raise ValueError("keep_after_expiry must be between 0 and 86400 seconds")
        self.source = source
        self.max_staleness = max_staleness
        self.fail_closed = fail_closed
        self.keep_after_expiry = keep_after_expiry
        self._clock = clock or SystemClock()
        self._monotonic = monotonic
        self._set = RevocationSet()
        self._next_expiry = math.inf  # wall time at which the next entry may be dropped
        self._has_list = False
        self._down_since: float | None = monotonic()  # None while a stream works
        self._stale_logged = False
        self._changed = threading.Condition()  # guards every swap; notified on each
        if source is not None:
            source.subscribe(self)

    # -- what verification reads ----------------------------------------------------------------

    @property
    def revocations(self) -> RevocationSet:
        """The list now (one immutable view), without entries that have expired."""
        self._drop_expired(self._clock.now())
        return self._set

    @property
    def sequence(self) -> int:
        return self._set.sequence

    @property
    def has_list(self) -> bool:
        """True once a snapshot has arrived."""
        return self._has_list

    @property
    def down_since(self) -> float | None:
        """When (``monotonic``) the stream stopped working, or None while it works; set from
        creation until the first snapshot."""
        return self._down_since

    @property
    def seconds_behind(self) -> float:
        """Seconds since the list was last known current: 0 while its source works, else since it
        stopped working (or since creation, before the first snapshot)."""
        down = self._down_since
        return 0.0 if down is None else max(0.0, self._monotonic() - down)

    @property
    def stale(self) -> bool:
        """True when no stream has worked for more than ``max_staleness`` seconds: the list may
        lack the newest revocations."""
        down = self._down_since
        return down is not None and self._monotonic() - down > self.max_staleness

    def check(self, *, jti: str, client_id: str, issued_at: float) -> None:
        """Raise :class:`InvalidToken` if the list refuses a token with these claims, or
        :class:`TemporarilyUnavailable` if the cache fails closed and the list is stale (or has
        never arrived). Call it only for a token whose signature checked: the answer says
        whether a jti or client is on the list, which only the issuer's tokens may learn."""
        current = self._set
        now = self._clock.now()
        if now >= self._next_expiry:
            current = self._drop_expired(now)
        if current.refuses(jti=jti, client_id=client_id, issued_at=issued_at):
            raise Refused(REVOKED, REVOKED_MESSAGE)
        if self._down_since is not None and (self.fail_closed or not self._stale_logged):
            self._check_staleness()

    def _check_staleness(self) -> None:
        stale = self.stale
        if stale and not self._stale_logged:
            self._stale_logged = True
            log.warning(
                "the revocation list is stale: no working stream for over %gs; %s",
                self.max_staleness,
                "refusing every token (fail closed)"
                if self.fail_closed
                else "verifying without the newest revocations (fail open)",
            )
        if self.fail_closed and (stale or not self._has_list):
            raise Unavailable(REVOCATIONS_UNAVAILABLE, "the revocation list is unavailable")

    # -- what the source feeds -------------------------------------------------------------------

    def apply(self, *, snapshot: bool, sequence: int, entries: Sequence[Revocation]) -> None:
        """A snapshot replaces the list; changes are merged into it. Either proves the stream
        works. Changes before any snapshot are merged but do not make the list complete."""
        now = self._clock.now()
        with self._changed:
            base = RevocationSet() if snapshot else self._set
            new = base.with_entries(entries, sequence=sequence).without_expired(now - self.keep_after_expiry)
            self._install(new, now)
            if snapshot:
                self._has_list = True
            if self._has_list:
                if self._stale_logged:
                    log.info("the revocation list is current again (sequence %d)", sequence)
                self._down_since = None
                self._stale_logged = False
            self._changed.notify_all()

    def stream_down(self) -> None:
        with self._changed:
            if self._down_since is None:
                self._down_since = self._monotonic()

    def wait_for(self, sequence: int = 0, timeout: float | None = None) -> bool:
        """Wait until a snapshot has arrived and the list has reached ``sequence``; False if
        ``timeout`` passed first. For start-up (``wait_for(timeout=5)``) and tests."""
        with self._changed:
            return self._changed.wait_for(lambda: self._has_list and self._set.sequence >= sequence, timeout)

    def close(self) -> None:
        """Stop the source (the stream); the cache keeps the list it has."""
        if self.source is not None:
            self.source.close()

    # -- internals --------------------------------------------------------------------------------

    def _drop_expired(self, now: float) -> RevocationSet:
        with self._changed:
            if now >= self._next_expiry:
                self._install(self._set.without_expired(now - self.keep_after_expiry), now)
            return self._set

    def _install(self, new: RevocationSet, now: float) -> None:
        """Swap in ``new`` and schedule the next drop: when its first entry may go, but not
        sooner than DROP_INTERVAL from ``now``; the caller holds the lock."""
        expiries = [*new.by_jti.values(), *(exp for _, exp in new.by_client.values())]
        first = min(expiries) + self.keep_after_expiry if expiries else math.inf
        self._next_expiry = max(first, now + DROP_INTERVAL)
        self._set = new


def basic_authorization(client_id: str, client_secret: str) -> str:
    """``Basic base64(urlencode(id):urlencode(secret))``, RFC 6749 §2.3.1."""
    pair = f"{quote(client_id, safe='')}:{quote(client_secret, safe='')}"
    return "Basic " + base64.b64encode(pair.encode("utf-8")).decode("ascii")


def revocation_of(message: Any) -> Revocation:
    """The entry a ``authsvc.v1.Revocation`` message carries; ValueError if it names nothing."""
    which = message.WhichOneof("subject")
    if which == "jti":
        return Revocation(expires_at=int(message.expires_at), jti=str(message.jti))
    if which == "client_id":
        return Revocation(
            expires_at=int(message.expires_at),
            client_id=str(message.client_id),
            not_before=int(message.not_before),
        )
    raise ValueError("a revocation entry names neither a jti nor a client_id")


class GrpcRevocationSource:
    """The TokenService's revocation list over ``WatchRevocations``, in a background thread.

    The caller authenticates as a registered client holding the scope ``authsvc:revocations``,
    with ``authorization: Basic`` metadata (RFC 6749 §2.3.1: id and secret form-urlencoded, then
    joined). The stream is opened with ``after_sequence`` = the last sequence the sink applied,
    so a reconnect gets only what it missed (or a fresh snapshot). A failed or ended stream is
    retried with exponential backoff and full jitter (``min_backoff`` doubling up to
    ``max_backoff``), also when the server refuses the credentials: logged, never a tight loop.

    ``credentials`` are channel credentials for TLS. Without them the channel is plaintext, which
    is refused for a target other than loopback or ``unix:`` unless ``allow_plaintext`` says a
    trusted mesh provides the transport security: the stream carries the client secret.
    """

    def __init__(
        self,
        target: str,
        *,
        client_id: str,
        client_secret: str,
        credentials: grpc.ChannelCredentials | None = None,
        allow_plaintext: bool = False,
        options: Sequence[tuple[str, str | int]] = (),
        min_backoff: float = 0.5,
        max_backoff: float = 30.0,
        jitter: Callable[[float, float], float] = random.uniform,
    ) -> None:
        if not client_id or not client_secret:
            raise ValueError("client_id and client_secret are required to read the revocation list")
        if credentials is None and not allow_plaintext and not _is_local(target):
            raise ValueError(
                f"refusing to send client credentials to {target} without TLS: pass credentials="
                "grpc.ssl_channel_credentials(...), or allow_plaintext=True inside a trusted mesh"
            )
        if not 0 < min_backoff <= max_backoff:
            raise ValueError("backoff bounds must satisfy 0 < min_backoff <= max_backoff")
        self.target = target
        self.client_id = client_id
        self._metadata = (("authorization", basic_authorization(client_id, client_secret)),)
        self._credentials = credentials
        self._options = list(options)
        self._min_backoff = min_backoff
        self._max_backoff = max_backoff
        self._jitter = jitter
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._channel: grpc.Channel | None = None
        self._stream: Any = None
        self._thread: threading.Thread | None = None
        self.watching = False
        """True while a stream is open and has delivered a message."""
        self.attempts = 0
        """Streams opened so far."""
        self.last_error: grpc.StatusCode | None = None
        """The status of the last stream that failed."""

    def __repr__(self) -> str:  # never the secret
        return f"GrpcRevocationSource({self.target!r}, client_id={self.client_id!r})"

    def subscribe(self, sink: RevocationSink) -> None:
        with self._lock:
            if self._thread is not None:
                raise RuntimeError("a GrpcRevocationSource feeds one cache")
            self._thread = threading.Thread(
                target=self._watch_loop, args=(sink,), name="authsvc-revocations-watch", daemon=True
            )
            self._thread.start()

    def _stub(self) -> Any:
        """The stub on this source's channel; None once closed (no channel opens after close)."""
        with self._lock:
            if self._closed.is_set():
                return None
            if self._channel is None:
                import grpc  # noqa: PLC0415 - only this source needs grpc at import

                if self._credentials is None:
                    self._channel = grpc.insecure_channel(self.target, options=self._options)
                else:
                    self._channel = grpc.secure_channel(self.target, self._credentials, options=self._options)
            from authsvc.v1 import token_pb2_grpc  # noqa: PLC0415

            return token_pb2_grpc.TokenServiceStub(self._channel)

    def _watch_loop(self, sink: RevocationSink) -> None:
        backoff = self._min_backoff
        while not self._closed.is_set():
            if self._watch_once(sink):
                backoff = self._min_backoff  # the stream worked: the next failure starts afresh
            if self._closed.is_set():
                return
            self._closed.wait(self._jitter(0, backoff))
            backoff = min(self._max_backoff, backoff * 2)

    def _watch_once(self, sink: RevocationSink) -> bool:
        """One stream, until it ends; True if it delivered anything."""
        import grpc  # noqa: PLC0415

        from authsvc.v1 import token_pb2  # noqa: PLC0415

        delivered = False
        try:
            request = token_pb2.WatchRevocationsRequest(after_sequence=sink.sequence)
            stub = self._stub()
            with self._lock:  # so that close() cancels whatever stream this opens
                if stub is None or self._closed.is_set():
                    return False
                self.attempts += 1
                stream = self._stream = stub.WatchRevocations(request, metadata=self._metadata)
            for response in stream:
                entries = []
                for message in response.revocations:
                    try:
                        entries.append(revocation_of(message))
                    except ValueError as exc:
                        log.warning("ignoring a revocation entry from %s: %s", self.target, exc)
                sink.apply(snapshot=bool(response.snapshot), sequence=int(response.sequence), entries=entries)
                self.watching = delivered = True
                self.last_error = None
            if not self._closed.is_set():
                log.info("WatchRevocations stream to %s ended; reconnecting", self.target)
        except grpc.RpcError as err:
            code = err.code() if hasattr(err, "code") else None
            if not self._closed.is_set():  # a cancel by close() is no failure
                self._log_failure(code, delivered)
                self.last_error = code
        except Exception:
            log.exception("the WatchRevocations stream to %s failed unexpectedly", self.target)
        finally:
            self.watching = False
            sink.stream_down()
        return delivered

    def _log_failure(self, code: grpc.StatusCode | None, delivered: bool) -> None:
        import grpc  # noqa: PLC0415

        if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
            # the registration is wrong: say so every time it changes, never the secret
            level = logging.WARNING if code != self.last_error else logging.DEBUG
            log.log(
                level,
                "%s refused the revocation stream to client %s (%s): check --client-id, its secret "
                "and the scope authsvc:revocations; retrying with backoff",
                self.target,
                loggable(self.client_id),
                code,
            )
        elif code == grpc.StatusCode.UNIMPLEMENTED:
            level = logging.WARNING if code != self.last_error else logging.DEBUG
            log.log(level, "%s keeps no revocation list (UNIMPLEMENTED); retrying with backoff", self.target)
        else:
            # a drop of a working stream is news; retries of a down issuer stay at debug level
            log.log(
                logging.INFO if delivered else logging.DEBUG,
                "WatchRevocations stream to %s ended (%s); reconnecting",
                self.target,
                code,
            )

    def close(self) -> None:
        self._closed.set()
        with self._lock:
            if self._stream is not None:
                self._stream.cancel()
            if self._channel is not None:
                self._channel.close()
            self._channel = None


class RevocationFetchError(Exception):
    """A poll of the revocation list was refused or failed. The message is safe to log: it names
    the URL (without its query) and what was wrong, never the body nor the credentials."""


DEFAULT_POLL_INTERVAL = 5.0
"""Seconds between two polls of ``GET /oauth2/revocations`` while it answers."""


def revocation_of_json(item: object) -> Revocation:
    """The entry one item of ``GET /oauth2/revocations`` carries; ValueError if it is malformed."""
    if not isinstance(item, dict):
        raise ValueError("a revocation entry is not an object")

    def integer(name: str) -> int:
        value = item.get(name)
        if type(value) is not int or not 0 <= value < 2**63:
            raise ValueError(f"a revocation entry has no valid {name}")
        return value

    def text(name: str) -> str:
        value = item.get(name)
        if not isinstance(value, str) or not 0 < len(value) <= 1024:
            raise ValueError(f"a revocation entry has no valid {name}")
        return value

    if "jti" in item and "client_id" not in item:
        return Revocation(expires_at=integer("expires_at"), jti=text("jti"))
    if "client_id" in item and "jti" not in item:
        return Revocation(
            expires_at=integer("expires_at"), client_id=text("client_id"), not_before=integer("not_before")
        )
    raise ValueError("a revocation entry names neither a jti nor a client_id, or both")


class HttpRevocationSource:
    """The TokenService's revocation list polled over HTTP (``GET /oauth2/revocations``, which
    the TokenService's metadata names ``revocation_list_endpoint``), in a background thread.

    For a resource server that reaches the TokenService only over HTTP (its keys from the
    ``jwks_uri``). Every ``poll_interval`` seconds (less up to a fifth, as jitter, so that many
    verifiers do not poll in step) it asks for the list with ``If-None-Match``; a 200 is applied
    as a snapshot (the list is small by construction and always sent whole), a 304 confirms the
    list held. A revocation thus reaches this verifier within one poll interval (plus the
    TokenService's one-second tick), not at once as over ``WatchRevocations``.

    The caller authenticates as a registered client holding the scope ``authsvc:revocations``,
    with ``Authorization: Basic`` (RFC 6749 §2.3.1: id and secret form-urlencoded, then joined).
    Since that header carries the secret, the URL must be ``https://`` (certificate and host name
    verified against the system's trust store, ``ca_file``, or your verifying ``ssl_context``);
    ``http://`` only to a loopback host, unless ``allow_plaintext`` says a trusted mesh provides
    the transport security. Standard library only; environment proxies are not used; a redirect
    is followed only within the same origin (scheme, host and port). Answers: a JSON 200 of at
    most ``max_bytes``, or a 304; anything else is a failed poll.

    A failed poll (refused credentials, a missing scope, an unreachable server, a body too large
    or malformed) keeps the list last applied and tells the cache the source is down: its
    staleness policy counts from the first failed poll (at most one interval after the last
    good answer). Failures are retried with exponential backoff (from ``poll_interval``,
    doubling up to ``max_backoff``, jittered between half and all of it); a refusal is logged
    when it first happens, never the secret.
    """

    def __init__(
        self,
        url: str,
        *,
        client_id: str,
        client_secret: str,
        poll_interval: float = DEFAULT_POLL_INTERVAL,
        timeout: float = 2.0,
        ca_file: str | Path | None = None,
        ssl_context: ssl.SSLContext | None = None,
        allow_plaintext: bool = False,
        max_bytes: int = 1024 * 1024,
        max_backoff: float = 60.0,
        jitter: Callable[[float, float], float] = random.uniform,
    ) -> None:
        if not client_id or not client_secret:
            raise ValueError("client_id and client_secret are required to read the revocation list")
        if not (math.isfinite(poll_interval) and 0 < poll_interval <= 3600):
            raise ValueError("poll_interval must be between 0 and 3600 seconds")
        if not (math.isfinite(max_backoff) and max_backoff > 0):
            raise ValueError("max_backoff must be a positive number of seconds")
        if not 0 < timeout <= 300 or max_bytes < 1:
            raise ValueError("timeout or max_bytes is out of range")
        parts, ssl_context = checked_url(
            url,
            what="the revocation list URL",
            ca_file=ca_file,
            ssl_context=ssl_context,
            allow_plaintext=allow_plaintext,
            refusal="refusing to send client credentials to {origin} without TLS",
        )
        self.url = url
        self.client_id = client_id
        self._authorization = basic_authorization(client_id, client_secret)
        self._where = urllib.parse.urlunsplit(parts._replace(query=""))
        self.poll_interval = poll_interval
        self._timeout = timeout
        self._max_bytes = max_bytes
        self._max_backoff = max(max_backoff, poll_interval)
        self._jitter = jitter
        self._opener = urllib.request.OpenerDirector()
        for handler in (
            urllib.request.ProxyHandler({}),  # never the environment's proxies
            urllib.request.HTTPHandler(),
            urllib.request.HTTPSHandler(context=ssl_context),
            _SameOriginRedirects(_origin(parts), self._where),
            urllib.request.HTTPDefaultErrorHandler(),  # any other non-2xx answer raises HTTPError
            urllib.request.HTTPErrorProcessor(),
        ):
            self._opener.add_handler(handler)
        self._etag: str | None = None  # of the last answer applied
        self._sequence = 0
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._thread: threading.Thread | None = None
        self.polls = 0
        """Polls made so far."""
        self.last_error: str | None = None
        """Why the last poll failed (safe to log), or None after one that worked."""

    def __repr__(self) -> str:  # never the secret
        return f"HttpRevocationSource({self._where!r}, client_id={self.client_id!r})"

    def subscribe(self, sink: RevocationSink) -> None:
        with self._lock:
            if self._thread is not None:
                raise RuntimeError("an HttpRevocationSource feeds one cache")
            self._thread = threading.Thread(
                target=self._poll_loop, args=(sink,), name="authsvc-revocations-poll", daemon=True
            )
            self._thread.start()

    def close(self) -> None:
        """Stop polling (a poll in flight ends within ``timeout``); the cache keeps its list."""
        self._closed.set()

    def _poll_loop(self, sink: RevocationSink) -> None:
        backoff = self.poll_interval
        while not self._closed.is_set():
            if self.poll_once(sink):
                backoff = self.poll_interval
                wait = self._jitter(0.8 * self.poll_interval, self.poll_interval)
            else:
                wait = self._jitter(backoff / 2, backoff)
                backoff = min(self._max_backoff, backoff * 2)
            self._closed.wait(max(wait, 0.0))

    def poll_once(self, sink: RevocationSink) -> bool:
        """One poll, applied to ``sink``; True if it worked. The background thread calls it;
        tests may too, on a source that was never subscribed."""
        if self._closed.is_set():
            return False
        self.polls += 1
        try:
            answer = self._fetch()
            if answer is None:  # 304: the list held is current
                sink.apply(snapshot=False, sequence=self._sequence, entries=())
            else:
                etag, sequence, entries = answer
                sink.apply(snapshot=True, sequence=sequence, entries=entries)
                self._etag, self._sequence = etag, sequence
        except Exception as exc:
            self._failed(exc)
            sink.stream_down()
            return False
        if self.last_error is not None:
            log.info("the revocation list at %s answers again", self._where)
        self.last_error = None
        return True

    def _failed(self, exc: Exception) -> None:
        if isinstance(exc, RevocationFetchError | JwksFetchError):
            why = str(exc)
        elif isinstance(exc, urllib.error.URLError):
            why = f"{self._where} is unreachable ({loggable(str(exc.reason), 128)})"
        else:
            why = f"{self._where} failed ({type(exc).__name__})"
        # say so when the reason changes; retries of the same failure stay at debug level
        level = logging.WARNING if why != self.last_error else logging.DEBUG
        log.log(level, "revocation list poll failed: %s; keeping the list held, retrying with backoff", why)
        self.last_error = why

    def _fetch(self) -> tuple[str | None, int, list[Revocation]] | None:
        """``(etag, sequence, entries)`` of a 200, or None for a 304; raises on anything else."""
        deadline = time.monotonic() + self._timeout
        request = urllib.request.Request(  # noqa: S310 - the scheme is checked: https, or http as allowed
            self.url,
            headers={
                "Accept": "application/json",
                "User-Agent": "authsvc-verify",
                "Authorization": self._authorization,
            },
        )
        if self._etag is not None:
            request.add_header("If-None-Match", self._etag)
        try:
            response = self._opener.open(request, timeout=self._timeout)
        except urllib.error.HTTPError as err:
            with err:
                if err.code == 304 and self._etag is not None:
                    return None
                if err.code in (401, 403):
                    raise RevocationFetchError(
                        f"{self._where} refused client {loggable(self.client_id)} (HTTP {err.code}): check "
                        "the client id, its secret and the scope authsvc:revocations"
                    ) from None
                raise RevocationFetchError(f"{self._where} answered HTTP {err.code}") from None
        with response:
            if response.status != 200:
                raise RevocationFetchError(f"{self._where} answered HTTP {response.status}")
            headers = response.headers
            media_type = (headers.get("Content-Type") or "").split(";")[0].strip().lower()
            if media_type != "application/json":
                raise RevocationFetchError(f"{self._where} answered {loggable(media_type)}, not JSON")
            if (headers.get("Content-Encoding") or "identity").strip().lower() != "identity":
                raise RevocationFetchError(f"{self._where} answered an encoded body")
            length = headers.get("Content-Length")
            if length is not None and length.strip().isdigit() and int(length) > self._max_bytes:
                raise RevocationFetchError(f"{self._where} answered more than {self._max_bytes} bytes")
            body = read_capped(
                response, deadline=deadline, max_bytes=self._max_bytes, where=self._where,
                timeout=self._timeout, error=RevocationFetchError,
            )  # fmt: skip
            etag = headers.get("ETag")
        sequence, entries = self._parse(body)
        return (etag if etag and len(etag) <= 64 and etag.isprintable() else None), sequence, entries

    def _parse(self, body: bytes) -> tuple[int, list[Revocation]]:
        try:
            document = json.loads(body.decode("utf-8"))
        except ValueError as exc:
            raise RevocationFetchError(f"{self._where} answered a body that is not JSON") from exc
        sequence = document.get("sequence") if isinstance(document, dict) else None
        items = document.get("revocations") if isinstance(document, dict) else None
        if type(sequence) is not int or not 0 <= sequence < 2**63 or not isinstance(items, list):
            raise RevocationFetchError(f"{self._where} answered JSON that is not a revocation list")
        entries: list[Revocation] = []
        for item in items:
            try:
                entries.append(revocation_of_json(item))
            except ValueError as exc:
                log.warning("ignoring a revocation entry from %s: %s", self._where, exc)
        return sequence, entries
