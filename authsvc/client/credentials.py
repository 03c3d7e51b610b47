"""Client credentials that fetch, cache and refresh access tokens (RFC 6749 §4.4) for the caller.

Modelled on google-auth's ``Credentials``: a token with an expiry and a state.

- **fresh**: more than ``refresh_window`` seconds left; served as is.
- **stale**: inside the refresh window; still served, while one background refresh runs.
- **invalid**: no token, or less than ``expiry_skew`` seconds left; the caller waits for a refresh.

However many threads ask, one refresh is in flight (single-flight). Transient failures
(UNAVAILABLE, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED) are retried with exponential backoff and full
jitter; everything else (INVALID_CLIENT, INVALID_SCOPE, ...) fails at once. Errors are never
cached: the next call tries again. Secrets and tokens never reach a log line or a ``repr``.

A refusal that says when to retry (the TokenService's rate limits: the ``grpc-retry-pushback-ms``
trailer, or a ``google.rpc.RetryInfo`` detail) is honoured: the next attempt, and any refresh
started before that time, waits at least that long, unless the wait is longer than
``RetryPolicy.max_retry_after`` or would end after ``RetryPolicy.deadline``; then it fails at once
with :class:`TokenFetchError` (``retry_after`` says how long is left) without asking again.
"""

from __future__ import annotations

import base64
import hmac
import logging
import math
import os
import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote

import grpc

from authsvc.client.private_key_jwt import CLIENT_ASSERTION_TYPE, PrivateKeyJwtCredentials
from authsvc.client.transport import PemSource, check_secret_transport, token_service_channel

__all__ = [
    "AccessToken",
    "ClientCredentials",
    "GrpcTokenFetcher",
    "RetryPolicy",
    "TokenFetchError",
    "TokenFetcher",
    "TokenRequests",
    "TokenState",
    "read_secret",
]

log = logging.getLogger("authsvc.client")

RETRYABLE = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED}
)


class TokenState(Enum):
    FRESH = "fresh"
    STALE = "stale"
    INVALID = "invalid"


@dataclass(frozen=True, slots=True)
class AccessToken:
    """A token and when it expires (seconds on the credentials' clock)."""

    token: str = field(repr=False)
    expires_at: float
    scope: str
    lifetime: float


class TokenFetchError(Exception):
    """The TokenService refused or could not be reached. ``reason`` is the ErrorInfo reason
    (e.g. ``INVALID_CLIENT``) when the service sent one; ``retry_after`` the seconds it asked the
    caller to wait before trying again (``RATE_LIMITED``), when it said (``math.inf``: never)."""

    def __init__(
        self, code: grpc.StatusCode, reason: str, message: str, *, retry_after: float | None = None
    ) -> None:
        super().__init__(f"{code.name} {reason}: {message}" if reason else f"{code.name}: {message}")
        self.code = code
        self.reason = reason
        self.retry_after = retry_after

    @property
    def retryable(self) -> bool:
        return self.code in RETRYABLE


class TokenFetcher(Protocol):
    """Asks the TokenService for a token; returns (token, expires_in, scope) or raises
    :class:`TokenFetchError`."""

    def __call__(self) -> tuple[str, float, str]: ...


def error_info_reason(trailing_metadata: Any) -> str:
    """The ``google.rpc.ErrorInfo`` reason in a call's trailing metadata, or "" (sync and
    ``grpc.aio`` metadata alike: any iterable of key/value pairs)."""
    try:
        from google.rpc import error_details_pb2, status_pb2  # noqa: PLC0415

        for key, value in trailing_metadata or ():
            if key != "grpc-status-details-bin" or not isinstance(value, bytes):
                continue
            status = status_pb2.Status.FromString(value)
            for detail in status.details:
                info = error_details_pb2.ErrorInfo()
                if detail.Unpack(info):
                    return str(info.reason)
    except Exception:  # noqa: S110 - a malformed detail is no refusal we can act on
        pass
    return ""


RETRY_PUSHBACK_KEY = "grpc-retry-pushback-ms"


def retry_delay(trailing_metadata: Any) -> float | None:
    """The seconds a refused call was asked to wait before a retry: the ``grpc-retry-pushback-ms``
    trailer (gRPC A6; a negative or malformed value means "do not retry": ``math.inf``), else the
    ``retry_delay`` of a ``google.rpc.RetryInfo`` detail; None when the server said nothing."""
    details: bytes | None = None
    for key, value in trailing_metadata or ():
        if key == RETRY_PUSHBACK_KEY:
            text = value.decode("ascii", "replace") if isinstance(value, bytes) else str(value)
            millis = int(text) if text.strip().isdigit() else -1
            return millis / 1000 if millis >= 0 else math.inf
        if key == "grpc-status-details-bin" and isinstance(value, bytes):
            details = value
    if details is None:
        return None
    try:
        from google.rpc import error_details_pb2, status_pb2  # noqa: PLC0415

        for detail in status_pb2.Status.FromString(details).details:
            info = error_details_pb2.RetryInfo()
            if detail.Unpack(info):
                delay = info.retry_delay.seconds + info.retry_delay.nanos / 1e9
                return delay if delay >= 0 else math.inf
    except Exception:  # noqa: S110 - a malformed detail says nothing we can act on
        pass
    return None


def is_token_refusal(code: object, trailing_metadata: Any) -> bool:
    """UNAUTHENTICATED with ErrorInfo reason INVALID_TOKEN: the resource server refused the
    access token itself (RFC 6750 §3.1 ``invalid_token``), before its handler ran."""
    return code == grpc.StatusCode.UNAUTHENTICATED and error_info_reason(trailing_metadata) == "INVALID_TOKEN"


def _reason(err: grpc.RpcError) -> str:
    try:
        from google.rpc import error_details_pb2  # noqa: PLC0415
        from grpc_status import rpc_status  # noqa: PLC0415

        status = rpc_status.from_call(err)
        for detail in status.details if status is not None else ():
            info = error_details_pb2.ErrorInfo()
            if detail.Unpack(info):
                return str(info.reason)
    except Exception:  # noqa: S110 - a malformed status still yields the code below
        pass
    return ""


def fetch_error(err: grpc.RpcError) -> TokenFetchError:
    code = err.code() if hasattr(err, "code") else grpc.StatusCode.UNKNOWN
    details = err.details() if hasattr(err, "details") else str(err)
    try:
        retry_after = retry_delay(err.trailing_metadata()) if hasattr(err, "trailing_metadata") else None
    except Exception:  # a call that cannot say its trailers asked for no delay
        retry_after = None
    return TokenFetchError(code, _reason(err), details or "", retry_after=retry_after)


def token_request(
    client_id: str, client_secret: str, scopes: Sequence[str], audience: Sequence[str]
) -> tuple[tuple[tuple[str, str]], Any]:
    """The Basic metadata and the IssueTokenRequest for a client_credentials grant. RFC 6749
    §2.3.1: id and secret are form-urlencoded before they are joined for Basic."""
    from authsvc.v1 import token_pb2  # noqa: PLC0415

    basic = base64.b64encode(f"{quote(client_id, safe='')}:{quote(client_secret, safe='')}".encode()).decode()
    request = token_pb2.IssueTokenRequest(
        grant_type="client_credentials", scope=" ".join(scopes), audience=list(audience)
    )
    return (("authorization", f"Basic {basic}"),), request


class TokenRequests:
    """What each IssueToken call sends: the same Basic metadata and request every time for a
    secret, a request with a freshly signed assertion every time for ``private_key_jwt``
    (RFC 7523 §2.2: a new ``jti`` per request, so a retry is never refused as a replay)."""

    def __init__(
        self,
        *,
        client_id: str,
        client_secret: str | None,
        private_key_jwt: PrivateKeyJwtCredentials | None,
        scopes: Sequence[str],
        audience: Sequence[str],
    ) -> None:
        if (client_secret is None) == (private_key_jwt is None):
            raise ValueError("give the client's secret or its private_key_jwt credentials, one of them")
        self.client_id = client_id
        self._key = private_key_jwt
        self._scopes = list(scopes)
        self._audience = list(audience)
        self._fixed = (
            None if client_secret is None else token_request(client_id, client_secret, scopes, audience)
        )

    @property
    def method(self) -> str:
        return "client_secret_basic" if self._key is None else "private_key_jwt"

    def __call__(self) -> tuple[tuple[tuple[str, str], ...], Any]:
        if self._fixed is not None:
            return self._fixed
        from authsvc.v1 import token_pb2  # noqa: PLC0415

        assert self._key is not None
        return (), token_pb2.IssueTokenRequest(
            grant_type="client_credentials",
            scope=" ".join(self._scopes),
            audience=self._audience,
            client_assertion_type=CLIENT_ASSERTION_TYPE,
            client_assertion=self._key.assertion(self.client_id),
        )


class GrpcTokenFetcher:
    """Calls ``authsvc.v1.TokenService/IssueToken`` with client_secret_basic authentication, or
    with ``private_key_jwt`` (a fresh assertion per call) when given those credentials instead.

    Refuses (``ValueError``, before anything is sent) a channel that may be plaintext to another
    host: see :func:`~authsvc.client.transport.check_secret_transport` (an assertion is a
    credential too, for its lifetime, and the token that comes back is one for longer).
    ``secure=True`` is the caller's word that ``channel`` uses TLS; never pass it for
    ``grpc.insecure_channel``.
    """

    def __init__(
        self,
        channel: grpc.Channel,
        *,
        client_id: str,
        client_secret: str | None = None,
        private_key_jwt: PrivateKeyJwtCredentials | None = None,
        scopes: Sequence[str] = (),
        audience: Sequence[str] = (),
        timeout: float = 5.0,
        secure: bool = False,
    ) -> None:
        from authsvc.v1 import token_pb2_grpc  # noqa: PLC0415

        check_secret_transport(channel, secure=secure)

        self._requests = TokenRequests(
            client_id=client_id,
            client_secret=client_secret,
            private_key_jwt=private_key_jwt,
            scopes=scopes,
            audience=audience,
        )
        self._call = token_pb2_grpc.TokenServiceStub(channel).IssueToken
        self._timeout = timeout
        self.client_id = client_id

    def __call__(self) -> tuple[str, float, str]:
        metadata, request = self._requests()
        try:
            response = self._call(request, metadata=metadata, timeout=self._timeout)
        except grpc.RpcError as err:
            raise fetch_error(err) from None
        return response.access_token, float(response.expires_in), response.scope

    def __repr__(self) -> str:
        return f"GrpcTokenFetcher(client_id={self.client_id!r}, {self._requests.method}=<redacted>)"


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with full jitter for transient failures.

    A refusal with a retry delay (rate limits) is waited out instead of the backoff when it is
    longer, up to ``max_retry_after`` seconds: a server asking for more is not retried (the error
    is raised, with its ``retry_after``). ``deadline``, when set, bounds one refresh, its waits
    included: a wait that would end after it is not begun.
    """

    max_attempts: int = 4
    initial_backoff: float = 0.2
    max_backoff: float = 5.0
    multiplier: float = 2.0
    max_retry_after: float = 30.0
    deadline: float | None = None

    def __post_init__(self) -> None:
        if self.max_attempts < 1 or self.initial_backoff < 0 or self.max_backoff < 0 or self.multiplier < 1:
            raise ValueError("a retry policy needs max_attempts >= 1, backoffs >= 0 and multiplier >= 1")
        if self.max_retry_after < 0 or (self.deadline is not None and self.deadline <= 0):
            raise ValueError("a retry policy needs max_retry_after >= 0 and a positive deadline")

    def delays(self, rng: Callable[[], float]) -> list[float]:
        """The sleeps between attempts: uniform in [0, min(max, initial * multiplier**n)]."""
        return [
            rng() * min(self.max_backoff, self.initial_backoff * self.multiplier**n)
            for n in range(self.max_attempts - 1)
        ]


def read_secret(
    secret: str | None = None, *, secret_file: Path | str | None = None, env: Mapping[str, str] | None = None
) -> str:
    """The client secret from an argument, a file (``secret_file`` or ``AUTHSVC_CLIENT_SECRET_FILE``)
    or the environment (``AUTHSVC_CLIENT_SECRET``), in that order. Never from code. ``env``
    defaults to ``os.environ``."""
    if secret:
        return secret
    env = os.environ if env is None else env
    path = secret_file or env.get("AUTHSVC_CLIENT_SECRET_FILE")
    if path:
        value = Path(path).read_text(encoding="utf-8").strip()
        if not value:
            raise ValueError(f"the client secret file {path} is empty")
        return value
    from_env = env.get("AUTHSVC_CLIENT_SECRET")
    if from_env:
        return from_env
    raise ValueError("no client secret: pass it, or set AUTHSVC_CLIENT_SECRET or AUTHSVC_CLIENT_SECRET_FILE")


class _Base:
    """The state machine shared by the threaded and asyncio credentials."""

    def __init__(
        self,
        *,
        refresh_window: float,
        expiry_skew: float,
        clock: Callable[[], float],
        retry: RetryPolicy,
        sleep: Callable[[float], object],
        jitter: Callable[[], float],
        refusal_cooldown: float,
    ) -> None:
        if refresh_window < 0 or expiry_skew < 0 or refusal_cooldown < 0:
            raise ValueError("refresh_window, expiry_skew and refusal_cooldown must not be negative")
        self.refresh_window = refresh_window
        self.expiry_skew = expiry_skew
        self.refusal_cooldown = refusal_cooldown
        self._clock = clock
        self.retry = retry
        self._sleep = sleep
        self._jitter = jitter
        self._token: AccessToken | None = None
        # guards every change of _token, so compare-and-drop never drops a token it did not compare
        self._swap_lock = threading.Lock()
        self._dropped_at = float("-inf")
        self._not_before = float("-inf")  # the TokenService asked for no request before then
        self.fetches = 0
        self.refusals_dropped = 0

    def _state_of(self, token: AccessToken | None, now: float) -> TokenState:
        if token is None:
            return TokenState.INVALID
        left = token.expires_at - now
        # a short-lived token refreshes halfway, whatever the configured window
        if left <= min(self.expiry_skew, token.lifetime / 10):
            return TokenState.INVALID
        if left <= min(self.refresh_window, token.lifetime / 2):
            return TokenState.STALE
        return TokenState.FRESH

    @property
    def state(self) -> TokenState:
        return self._state_of(self._token, self._clock())

    def peek(self) -> AccessToken | None:
        """The cached token whatever its state, without starting anything."""
        return self._token

    def invalidate(self) -> None:
        """Forget the token, whichever it is: the next call fetches a new one."""
        with self._swap_lock:
            self._token = None

    def drop_refused(self, token: str) -> bool:
        """The resource server refused ``token`` with INVALID_TOKEN (RFC 6750 §3.1): forget it if
        it is still the cached one, so the next call fetches a fresh token. True if dropped.

        Compare-and-drop: a stampede of calls refused with the same token drops it once, and a
        refusal of an older token never drops its successor. At most one drop per
        ``refusal_cooldown`` seconds, so a resource server that refuses every token costs the
        TokenService one request per cooldown, never one per call.
        """
        with self._swap_lock:
            current = self._token
            if current is None or not hmac.compare_digest(current.token.encode(), token.encode()):
                return False
            now = self._clock()
            if now - self._dropped_at < self.refusal_cooldown:
                return False
            self._dropped_at = now
            self._token = None
            self.refusals_dropped += 1
        log.warning("the resource server refused the access token (INVALID_TOKEN); fetching a new one")
        return True

    def _pushback(self, began: float) -> float:
        """Seconds to wait before the first attempt of a refresh that begins at ``began``: what
        is left of a delay the TokenService asked for. Raises TokenFetchError, asking nothing,
        when that is more than the policy waits."""
        left = self._not_before - began
        if left <= 0:
            return 0.0
        if left > self.retry.max_retry_after or (
            self.retry.deadline is not None and left > self.retry.deadline
        ):
            raise TokenFetchError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                "RATE_LIMITED",
                f"the TokenService asked for no request in the next {left:.1f} s",
                retry_after=left,
            )
        return left

    def _retry_delay(
        self, exc: TokenFetchError, attempt: int, delays: list[float], began: float
    ) -> float | None:
        """The sleep before attempt ``attempt + 1`` after ``exc``, or None to raise it: the
        backoff, or the server's retry delay when longer (recorded for later refreshes too)."""
        if exc.retry_after is not None and math.isfinite(exc.retry_after):
            self._not_before = max(self._not_before, self._clock() + exc.retry_after)
        if not exc.retryable or attempt >= len(delays):
            return None
        delay = delays[attempt]
        if exc.retry_after is not None:
            if exc.retry_after > self.retry.max_retry_after:
                return None
            delay = max(delay, exc.retry_after)
        if self.retry.deadline is not None and self._clock() + delay - began > self.retry.deadline:
            return None
        return delay

    def _accept(self, started: float, result: tuple[str, float, str]) -> AccessToken:
        token, expires_in, scope = result
        if not token or expires_in <= 0:
            raise TokenFetchError(grpc.StatusCode.INTERNAL, "", "the TokenService answered without a token")
        # count the lifetime from when we asked, not when the answer arrived: never optimistic
        access = AccessToken(token=token, expires_at=started + expires_in, scope=scope, lifetime=expires_in)
        with self._swap_lock:
            self._token = access
        return access


class ClientCredentials(_Base):
    """A thread-safe token source for one client, scopes and audience.

    ``fetcher`` asks the TokenService; build one with :meth:`for_target` (the SDK makes the
    channel), :meth:`for_channel`, or pass your own. The clock is ``time.monotonic`` unless
    injected (tests pass a fake and a no-op ``sleep``).
    """

    def __init__(
        self,
        fetcher: TokenFetcher,
        *,
        refresh_window: float = 60.0,
        expiry_skew: float = 10.0,
        retry: RetryPolicy | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], object] = time.sleep,
        jitter: Callable[[], float] = random.random,
        background: bool = True,
        refusal_cooldown: float = 30.0,
    ) -> None:
        super().__init__(
            refresh_window=refresh_window,
            expiry_skew=expiry_skew,
            clock=clock,
            retry=retry or RetryPolicy(),
            sleep=sleep,
            jitter=jitter,
            refusal_cooldown=refusal_cooldown,
        )
        self._fetcher = fetcher
        self._lock = threading.Lock()
        self._inflight: Future[AccessToken] | None = None
        self._failed_at = float("-inf")
        self._background = background
        self._owned_channel: grpc.Channel | None = None

    @classmethod
    def for_target(
        cls,
        target: str,
        *,
        client_id: str,
        client_secret: str | None = None,
        private_key_jwt: PrivateKeyJwtCredentials | None = None,
        scopes: Sequence[str] = (),
        audience: Sequence[str] = (),
        root_certificates: PemSource | None = None,
        private_key: PemSource | None = None,
        certificate_chain: PemSource | None = None,
        channel_credentials: grpc.ChannelCredentials | None = None,
        channel_options: Sequence[tuple[str, Any]] = (),
        timeout: float = 5.0,
        **options: object,
    ) -> ClientCredentials:
        """Credentials on a TokenService channel the SDK builds itself: TLS to every host but a
        loopback or ``unix:`` target (the system's roots unless ``root_certificates``; add
        ``private_key``/``certificate_chain`` for mutual TLS, or pass ``channel_credentials``),
        plaintext only there. :meth:`close` closes that channel. The client authenticates with
        ``client_secret``, or with ``private_key_jwt`` (:class:`PrivateKeyJwtCredentials`: a
        fresh signed assertion per token request).

        The TLS material is PEM bytes or the path of a file holding it. With a client certificate
        on a mutual-TLS port (``authsvc serve --mtls-listen``, RFC 8705) every token is bound to
        that certificate: call the resource server with the same one
        (``authorized_channel(..., private_key=..., certificate_chain=...)``), or it refuses the
        token."""
        channel, _ = token_service_channel(
            target,
            root_certificates=root_certificates,
            private_key=private_key,
            certificate_chain=certificate_chain,
            channel_credentials=channel_credentials,
            options=channel_options,
        )
        try:
            fetcher = GrpcTokenFetcher(
                channel,
                client_id=client_id,
                client_secret=client_secret,
                private_key_jwt=private_key_jwt,
                scopes=scopes,
                audience=audience,
                timeout=timeout,
                secure=True,  # TLS, or plaintext only to the loopback or unix: target it checked
            )
            made = cls(fetcher, **options)  # type: ignore[arg-type]
        except BaseException:
            channel.close()
            raise
        made._owned_channel = channel
        return made

    @classmethod
    def for_channel(
        cls,
        channel: grpc.Channel,
        *,
        client_id: str,
        client_secret: str | None = None,
        private_key_jwt: PrivateKeyJwtCredentials | None = None,
        scopes: Sequence[str] = (),
        audience: Sequence[str] = (),
        secure: bool = False,
        **options: object,
    ) -> ClientCredentials:
        """Credentials on a TokenService channel you built. Refused with ``ValueError`` unless
        the channel goes to a loopback or ``unix:`` target, or ``secure=True`` says it is a TLS
        channel (the SDK cannot check that: prefer :meth:`for_target`)."""
        fetcher = GrpcTokenFetcher(
            channel,
            client_id=client_id,
            client_secret=client_secret,
            private_key_jwt=private_key_jwt,
            scopes=scopes,
            audience=audience,
            secure=secure,
        )
        return cls(fetcher, **options)  # type: ignore[arg-type]

    def close(self) -> None:
        """Close the TokenService channel that :meth:`for_target` made (a no-op otherwise)."""
        if self._owned_channel is not None:
            self._owned_channel.close()
            self._owned_channel = None

    def token(self) -> str:
        """A usable access token. Blocks only when there is none or it has (nearly) expired."""
        return self.access_token().token

    def access_token(self) -> AccessToken:
        current = self._token
        state = self._state_of(current, self._clock())
        if state is TokenState.FRESH and current is not None:
            return current
        if state is TokenState.STALE and current is not None:
            if self._background:
                self._start_refresh(in_background=True)
            return current
        return self._start_refresh(in_background=False).result()

    def cached(self) -> AccessToken | None:
        """The current token if it is fresh or stale (starting a refresh if stale), else None.
        Never blocks: for callers, like gRPC's metadata plugin, that must not wait."""
        current = self._token
        state = self._state_of(current, self._clock())
        if state is TokenState.INVALID or current is None:
            return None
        if state is TokenState.STALE and self._background:
            self._start_refresh(in_background=True)
        return current

    def refresh_async(self) -> Future[AccessToken]:
        """Start a refresh (or join the one in flight) in a background thread, whatever the state."""
        return self._start_refresh(in_background=True, force=True)

    def usable_async(self) -> Future[AccessToken]:
        """A fresh or stale token: at once if there is one (also one that a refresh installed a
        moment ago), else from a refresh in a background thread (joined if one is in flight)."""
        return self._start_refresh(in_background=True, any_usable=True)

    def _start_refresh(
        self, *, in_background: bool, force: bool = False, any_usable: bool = False
    ) -> Future[AccessToken]:
        with self._lock:
            if self._inflight is not None:
                return self._inflight
            # a refresh may have finished between the caller's look and this lock: don't fetch twice
            current, now = self._token, self._clock()
            state = self._state_of(current, now)
            usable = state is TokenState.FRESH or (
                state is TokenState.STALE and (any_usable or not in_background)
            )
            if current is not None and usable and not force:
                done: Future[AccessToken] = Future()
                done.set_result(current)
                return done
            recently_failed = now - self._failed_at < self.retry.initial_backoff * 5
            if in_background and not force and not any_usable and recently_failed:
                done = Future()
                done.set_exception(
                    TokenFetchError(grpc.StatusCode.UNAVAILABLE, "", "refresh failed moments ago")
                )
                return done
            future: Future[AccessToken] = Future()
            self._inflight = future
        if in_background:
            threading.Thread(
                target=self._refresh, args=(future,), name="authsvc-token-refresh", daemon=True
            ).start()
        else:
            self._refresh(future)
        return future

    def _refresh(self, future: Future[AccessToken]) -> None:
        try:
            result = self._fetch_with_retries()
        except BaseException as exc:
            with self._lock:
                self._inflight = None
                self._failed_at = self._clock()
            log.warning("token refresh failed: %s", exc)
            future.set_exception(exc)
            return
        with self._lock:
            self._inflight = None
        future.set_result(result)

    def _fetch_with_retries(self) -> AccessToken:
        delays = self.retry.delays(self._jitter)
        began = self._clock()
        wait = self._pushback(began)
        if wait:
            self._sleep(wait)
        for attempt in range(self.retry.max_attempts):
            started = began if attempt == 0 and not wait else self._clock()  # one clock read when calm
            self.fetches += 1
            try:
                return self._accept(started, self._fetcher())
            except TokenFetchError as exc:
                delay = self._retry_delay(exc, attempt, delays, began)
                if delay is None:
                    raise
                log.info("token fetch attempt %d failed (%s); retrying", attempt + 1, exc.code.name)
                self._sleep(delay)
        raise AssertionError("unreachable")

    def __repr__(self) -> str:
        return f"ClientCredentials(fetcher={self._fetcher!r}, state={self.state.value})"
