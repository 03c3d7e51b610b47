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
- age: :meth:`JwksCache.age` says how long ago the keys were last known to be the issuer's
  current ones (a successful fetch or push, or a push stream seen open), so that an owner can
  stop taking traffic when they are too old (payments-svc's readiness), while verification goes
  on with them;
- hygiene: a set whose entries are all unusable never replaces the last good set, and a kid that
  two entries share is unusable.

Every installed set is one immutable :class:`KeySet`, swapped in whole with its ``epoch``: a
verification is only ever cached under the epoch of the set whose key checked it.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import random
import ssl
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from email.message import Message
from http.client import HTTPMessage, HTTPResponse
from pathlib import Path
from types import MappingProxyType
from typing import IO, TYPE_CHECKING, Any, Protocol

from cryptography.hazmat.primitives.asymmetric import rsa

from authsvc.listen import is_loopback
from authsvc.logsafe import loggable
from authsvc.verify.jose import parse_rsa_jwk
from authsvc.verify.outcomes import KEYS_UNAVAILABLE, Unavailable

if TYPE_CHECKING:
    import grpc

__all__ = [
    "FileJwksSource",
    "GrpcJwksSource",
    "HttpJwksSource",
    "JwksCache",
    "JwksFetchError",
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


_RECONNECT_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.initial_reconnect_backoff_ms", 500),
    ("grpc.max_reconnect_backoff_ms", 5000),
)


class GrpcJwksSource:
    """The TokenService's keys over gRPC: ``GetJwks`` to poll, and ``WatchJwks`` to be told.

    With ``watch`` (the default), a :class:`JwksCache` built on this source subscribes to the
    ``WatchJwks`` stream in a background thread: the TokenService pushes every change of its key
    set, so a new key arrives long before it signs. The stream reconnects with backoff; a server
    without WatchJwks (UNIMPLEMENTED) leaves the cache polling ``GetJwks`` as usual.

    The channel tries to reconnect at most 5 s apart (gRPC's own back-off grows to two minutes),
    so that the keys are fetched again within seconds of the issuer coming back; ``options``
    may set ``grpc.max_reconnect_backoff_ms`` otherwise.

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
        given = {name for name, _ in options}
        # a channel's reconnect back-off grows to 120 s by default: a verifier whose issuer was
        # down for minutes would wait that long after it is back; cap it (one channel per verifier)
        self._options = [
            *options,
            *((name, value) for name, value in _RECONNECT_OPTIONS if name not in given),
        ]
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


class JwksFetchError(Exception):
    """A JWKS fetch was refused or failed. The message is safe to log: it names the issuer's URL
    (without its query) and what was wrong, never the body."""


MIN_HTTP_MAX_AGE = 5.0
"""The shortest freshness an :class:`HttpJwksSource` reports, in seconds, whatever the issuer says."""

_JWKS_MEDIA_TYPES = frozenset({"application/json", "application/jwk-set+json"})
_MAX_ETAG_CHARS = 256


def _origin(parts: urllib.parse.SplitResult) -> tuple[str, str, int | None]:
    default = {"http": 80, "https": 443}.get(parts.scheme)
    return parts.scheme, (parts.hostname or "").lower(), parts.port or default


def _cache_max_age(cache_control: str, age: str | None) -> float | None:
    """RFC 9111 §5.2.2: the freshness lifetime ``Cache-Control`` gives, minus ``Age`` (§5.1);
    0 for ``no-store`` or ``no-cache`` (revalidate every time); None when it says nothing."""
    directives: dict[str, str] = {}
    for item in cache_control.split(","):
        name, _, value = item.strip().partition("=")
        directives.setdefault(name.strip().lower(), value.strip().strip('"'))
    if "no-store" in directives or "no-cache" in directives:
        return 0.0
    max_age = directives.get("max-age")
    if max_age is None:
        return None
    if not max_age.isdigit():  # §1.2.2 delta-seconds: digits only; anything else is stale
        return 0.0
    seconds = float(min(int(max_age[:12]), 2**31))
    if age is not None and age.strip().isdigit():
        seconds -= float(min(int(age.strip()[:12]), 2**31))
    return max(seconds, 0.0)


class _SameOriginRedirects(urllib.request.HTTPRedirectHandler):
    """Follows a redirect only within one origin: never to another host, nor from HTTPS to
    plaintext (where the keys could be swapped)."""

    max_redirections = 3

    def __init__(self, origin: tuple[str, str, int | None], where: str) -> None:
        self.origin = origin
        self.where = where

    def redirect_request(  # noqa: PLR0917 - urllib's signature
        self,
        req: urllib.request.Request,
        fp: IO[bytes],
        code: int,
        msg: str,
        headers: HTTPMessage,
        newurl: str,
    ) -> urllib.request.Request | None:
        if _origin(urllib.parse.urlsplit(newurl)) != self.origin:
            raise JwksFetchError(
                f"{self.where} redirected ({code}) to another origin or to plaintext: {loggable(newurl, 128)}"
            )
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def read_capped(
    response: HTTPResponse,
    *,
    deadline: float,
    max_bytes: int,
    where: str,
    timeout: float,
    error: type[Exception],
) -> bytes:
    """The body of ``response``, refused (``error``) past ``max_bytes`` or the monotonic
    ``deadline``: one socket read at a time (``read1``), so a server dripping bytes meets it."""
    chunks: list[bytes] = []
    size = 0
    while True:
        if time.monotonic() > deadline:
            raise error(f"{where} took longer than {timeout:g}s to answer")
        chunk = response.read1(min(65536, max_bytes + 1 - size))
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        size += len(chunk)
        if size > max_bytes:
            raise error(f"{where} answered more than {max_bytes} bytes")


def checked_url(
    url: str,
    *,
    what: str,
    ca_file: str | Path | None,
    ssl_context: ssl.SSLContext | None,
    allow_plaintext: bool,
    refusal: str,
) -> tuple[urllib.parse.SplitResult, ssl.SSLContext]:
    """The parts of ``url`` and the TLS context to fetch it with, for every HTTP source of the
    verifier: an absolute https:// URL without credentials or fragment, or http:// to a loopback
    host (or anywhere with ``allow_plaintext``, inside a trusted mesh); a given ``ssl_context`` must
    verify certificate and host name. ``refusal`` (with ``{origin}``) says why plaintext is refused."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ValueError(f"{what} must be an absolute https:// URL")
    if parts.username is not None or parts.password is not None:
        raise ValueError(f"{what} must not carry credentials")
    if parts.fragment:
        raise ValueError(f"{what} must not have a fragment")
    if ca_file is not None and ssl_context is not None:
        raise ValueError("give ca_file or ssl_context, not both")
    if parts.scheme == "http":
        if ca_file is not None or ssl_context is not None:
            raise ValueError(f"ca_file and ssl_context need an https:// URL for {what}")
        if not allow_plaintext and not is_loopback(parts.hostname):
            origin = f"{parts.scheme}://{parts.netloc}"
            raise ValueError(
                refusal.format(origin=origin)
                + ": use https://, or allow_plaintext=True inside a trusted mesh"
            )
    if ssl_context is None:
        ssl_context = ssl.create_default_context(cafile=None if ca_file is None else str(ca_file))
        ssl_context.minimum_version = ssl.TLSVersion.TLSv1_2
    elif ssl_context.verify_mode != ssl.CERT_REQUIRED or not ssl_context.check_hostname:
        raise ValueError("ssl_context must verify the server's certificate and host name")
    return parts, ssl_context


CreateConnection = Callable[..., Any]
"""``socket.create_connection(address, timeout, source_address)``, or a replacement for it."""


class _HttpVia(urllib.request.HTTPHandler):
    """Plain HTTP whose connections are opened by ``connect`` (http.client's own seam for it)."""

    def __init__(self, connect: CreateConnection) -> None:
        super().__init__()
        self._connect = connect

    def http_open(self, req: urllib.request.Request) -> HTTPResponse:
        connect = self._connect

        def connection(host: str, **kwargs: Any) -> http.client.HTTPConnection:
            conn = http.client.HTTPConnection(host, **kwargs)
            conn._create_connection = connect  # type: ignore[attr-defined]
            return conn

        return self.do_open(connection, req)


class _HttpsVia(urllib.request.HTTPSHandler):
    """HTTPS, as ``HTTPSHandler(context=...)`` does, whose TCP connections ``connect`` opens; the
    TLS handshake (certificate, host name) is the standard library's, unchanged."""

    def __init__(self, connect: CreateConnection, context: ssl.SSLContext) -> None:
        super().__init__(context=context)
        self._connect = connect
        self._ssl_context = context

    def https_open(self, req: urllib.request.Request) -> HTTPResponse:
        connect = self._connect

        def connection(host: str, **kwargs: Any) -> http.client.HTTPSConnection:
            conn = http.client.HTTPSConnection(host, **kwargs)
            conn._create_connection = connect  # type: ignore[attr-defined]
            return conn

        return self.do_open(connection, req, context=self._ssl_context)


class HttpJwksSource:
    """The issuer's keys from its ``jwks_uri`` (RFC 8414 §2, RFC 7517 §5) over HTTPS.

    Standard library only (:mod:`urllib.request` with an :mod:`ssl` context), so resource servers
    need no HTTP client; :class:`JwksCache` runs each fetch in its own thread, one at a time, with
    the usual rules (stale-on-error, a throttled refresh for an unknown kid).

    Transport: ``https://`` with certificate and host name verification, against the system's
    trust store, ``ca_file`` (a PEM bundle), or your ``ssl_context`` (refused if it does not
    verify). ``http://`` only to a loopback host, unless ``allow_plaintext`` says a trusted mesh
    provides the transport security: keys fetched in plaintext across a network can be swapped
    for an attacker's, who could then mint any token this verifier accepts. Environment proxies
    are not used. A redirect is followed only within the same origin (scheme, host and port), so
    never to another host nor from HTTPS to plaintext.

    Answers: 200 with a JSON body (``Content-Type`` ``application/json`` or
    ``application/jwk-set+json``) of at most ``max_bytes``, or 304 to a conditional request
    (the source sends ``If-None-Match`` with the last ``ETag``, and a 304 reuses the last body).
    Anything else raises :class:`JwksFetchError`: the cache keeps its last good set and logs why.
    ``timeout`` bounds each socket operation (connecting, the status line and headers) and the
    reading of the whole body, however slowly a server drips it; name resolution is not covered.
    ``create_connection`` (``socket.create_connection``'s signature) opens the TCP connection
    instead of the standard library, e.g. to connect only to addresses a guard has checked.

    Freshness: ``Cache-Control: max-age`` (less ``Age``) sets :attr:`max_age`, which the cache
    takes as an upper bound on its own ``max_age``. ``no-store``, ``no-cache`` and ``max-age=0``
    ask to revalidate on every use, which would be a fetch per request: they mean
    ``min_max_age`` (default :data:`MIN_HTTP_MAX_AGE`), the shortest freshness reported, so a
    verifier revalidates (cheaply, with ``If-None-Match``) at most that often. Without
    ``Cache-Control`` the cache's own ``max_age`` applies.
    """

    def __init__(
        self,
        url: str,
        *,
        timeout: float = 2.0,
        ca_file: str | Path | None = None,
        ssl_context: ssl.SSLContext | None = None,
        allow_plaintext: bool = False,
        max_bytes: int = 512 * 1024,
        min_max_age: float = MIN_HTTP_MAX_AGE,
        create_connection: CreateConnection | None = None,
    ) -> None:
        if not 0 < timeout <= 300 or max_bytes < 1 or min_max_age < 0:
            raise ValueError("timeout, max_bytes or min_max_age is out of range")
        parts, ssl_context = checked_url(
            url,
            what="the JWKS URL",
            ca_file=ca_file,
            ssl_context=ssl_context,
            allow_plaintext=allow_plaintext,
            refusal="refusing to fetch signing keys from {origin} without TLS",
        )
        self.url = url
        self._where = urllib.parse.urlunsplit(parts._replace(query=""))  # a query may hold a key
        self._origin = _origin(parts)
        self._timeout = timeout
        self._max_bytes = max_bytes
        self._min_max_age = min_max_age
        self._opener = urllib.request.OpenerDirector()
        for handler in (
            urllib.request.ProxyHandler({}),  # never the environment's proxies
            urllib.request.HTTPHandler() if create_connection is None else _HttpVia(create_connection),
            urllib.request.HTTPSHandler(context=ssl_context)
            if create_connection is None
            else _HttpsVia(create_connection, ssl_context),
            _SameOriginRedirects(self._origin, self._where),
            urllib.request.HTTPDefaultErrorHandler(),  # any other non-2xx answer raises HTTPError
            urllib.request.HTTPErrorProcessor(),
        ):
            self._opener.add_handler(handler)
        self._etag: str | None = None
        self._body: str | None = None
        self.max_age: float | None = None
        """How long the issuer said its last answer stays fresh (None: it did not say)."""

    def fetch(self) -> str:
        """The JWK Set as JSON text; raises :class:`JwksFetchError` (or an OSError) on failure.
        Called by the cache from one thread at a time."""
        deadline = time.monotonic() + self._timeout
        request = urllib.request.Request(  # noqa: S310 - the scheme is checked: https, or http as allowed
            self.url,
            headers={"Accept": "application/jwk-set+json, application/json", "User-Agent": "authsvc-verify"},
        )
        if self._etag is not None and self._body is not None:
            request.add_header("If-None-Match", self._etag)
        try:
            response = self._opener.open(request, timeout=self._timeout)
        except urllib.error.HTTPError as err:
            with err:
                if err.code == 304 and self._body is not None:
                    self._freshness(err.headers)
                    return self._body
                raise JwksFetchError(f"{self._where} answered HTTP {err.code}") from None
        with response:
            status = response.status
            if status != 200:  # 2xx other than 200: no JWK Set we could rely on
                raise JwksFetchError(f"{self._where} answered HTTP {status}")
            headers = response.headers
            media_type = (headers.get("Content-Type") or "").split(";")[0].strip().lower()
            if media_type not in _JWKS_MEDIA_TYPES:
                raise JwksFetchError(f"{self._where} answered {loggable(media_type)}, not JSON")
            if (headers.get("Content-Encoding") or "identity").strip().lower() != "identity":
                raise JwksFetchError(f"{self._where} answered an encoded body")
            length = headers.get("Content-Length")
            if length is not None and length.strip().isdigit() and int(length) > self._max_bytes:
                raise JwksFetchError(f"{self._where} answered more than {self._max_bytes} bytes")
            body = read_capped(
                response, deadline=deadline, max_bytes=self._max_bytes, where=self._where,
                timeout=self._timeout, error=JwksFetchError,
            )  # fmt: skip
        try:
            text = body.decode("utf-8")
            json.loads(text)
        except ValueError as exc:
            raise JwksFetchError(f"{self._where} answered a body that is not JSON") from exc
        etag = headers.get("ETag")
        self._etag = etag if etag and len(etag) <= _MAX_ETAG_CHARS and etag.isprintable() else None
        self._body = text
        self._freshness(headers)
        return text

    def _freshness(self, headers: Message) -> None:
        cache_control = headers.get("Cache-Control")
        max_age = None if cache_control is None else _cache_max_age(cache_control, headers.get("Age"))
        self.max_age = None if max_age is None else max(max_age, self._min_max_age)


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
        self.epoch = _EMPTY.epoch
        """The epoch of the installed set (see :class:`KeySet`), a plain attribute for the
        verifier's cached path; written before the set it belongs to."""
        self._fetched_at: float | None = None  # last successful fetch or push
        self._attempted_at: float | None = None  # last fetch started, successful or not
        self._failed_at: float | None = None  # last fetch that failed or brought no usable set
        self._watch_seen: float | None = None  # last time age() saw the push stream open
        self._unknown: OrderedDict[str, float] = OrderedDict()
        self._lock = threading.Lock()  # held for moments only, never across a fetch
        self._inflight: Future[bool] | None = None
        self._inflight_waiters = 0
        self._pushes = 0  # sets installed by push: a fetch older than a push must not undo it
        self.fetches = 0
        """Fetches started (for ``/metrics``; each counter below is written by one thread at a time)."""
        self.fetch_failures = 0
        """Fetches that brought no usable set: the source failed or answered something unusable."""
        self.unknown_kid_refreshes = 0
        """Fetches started because a token named a kid the set held did not have."""
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
    def has_keys(self) -> bool:
        """True once a key set has been fetched or pushed."""
        return self._fetched_at is not None

    @property
    def kids(self) -> frozenset[str]:
        return frozenset(self._set.keys)

    def age(self) -> float | None:
        """Seconds since the keys were last known to be the issuer's current set; None before
        the first set.

        Known current: at a successful fetch or push; and, with a source that pushes
        (``GrpcJwksSource.watching``), whenever its stream is open and no fetch has failed since
        the last success (a stream can look open across a silent network partition; a poll
        failing on the same channel shows it is not working, and the scheduled polls go on
        while the stream is open). Each call that finds the stream open notes the moment, so
        once it ends the age counts from the last time it was seen open: call this regularly
        (payments-svc's health task does, twice a second) to measure the age from the moment the
        issuer went away."""
        with self._lock:
            if self._fetched_at is None:
                return None
            now = self._now()
            confirmed = max(self._fetched_at, self._watch_seen or 0.0)
            failed = self._failed_at is not None and self._failed_at >= confirmed
            if getattr(self.source, "watching", False) is True and not failed:
                self._watch_seen = now
                return 0.0
            return max(0.0, now - confirmed)

    def refresh_if_due(self) -> None:
        """Start the scheduled background refresh if the set is older than its max age, as a
        verification does on its own: for an owner that keeps the set (and :meth:`age`) fresh
        while no request comes. Returns at once."""
        now = self._now()
        if self._fetched_at is not None and now - self._fetched_at >= self.effective_max_age:
            self._refresh_in_background(now)

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
            raise Unavailable(KEYS_UNAVAILABLE, "the issuer's keys are unreachable and none are cached")
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
                if self._fetched_at is not None:  # else the very first fetch, for any kid
                    self.unknown_kid_refreshes += 1
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
                if not ok:
                    self.fetch_failures += 1
            future.set_result(ok)

    def _fetch(self, started: float, pushes: int) -> bool:
        self.fetches += 1
        try:
            document = self.source.fetch()
        except Exception as exc:
            # a JwksFetchError says what was wrong in words safe to log; other errors by their type
            why = exc if isinstance(exc, JwksFetchError) else type(exc).__name__
            log.warning("JWKS fetch failed (%s); keeping %d cached keys", why, len(self._set.keys))
            with self._lock:
                self._failed_at = self._now()
            return False
        with self._lock:
            if self._pushes != pushes:
                # a set was pushed while this fetch was in flight: the push is the newer truth,
                # and installing this answer could bring back a key it removed
                return True
            installed = self._install(document)
            if installed:
                self._fetched_at = started
            else:
                self._failed_at = self._now()
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
            installed = KeySet(MappingProxyType(keys), self._set.epoch + 1 if removed else self._set.epoch)
            # the epoch first: a reader may see the new epoch with the old set (what it caches
            # under the old set's epoch is then not remembered), never the new set with the old one
            self.epoch = installed.epoch
            self._set = installed
            self._unknown.clear()
        return True

    def close(self) -> None:
        """Stop the source's background work (the WatchJwks stream), if it has any."""
        close = getattr(self.source, "close", None)
        if callable(close):
            close()
