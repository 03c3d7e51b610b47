"""Prometheus metrics of one server, shared by both services (the TokenService and the
PaymentService); imports no server code.

Each server has its own :class:`~prometheus_client.CollectorRegistry`, never the process-wide
default one, so that tests and several servers in one process do not collide.

gRPC server metrics use the names of go-grpc-prometheus, so that its dashboards and alerts work
as they are: ``grpc_server_started_total``, ``grpc_server_handled_total`` (with ``grpc_code``) and
the ``grpc_server_handling_seconds`` histogram, labelled by ``grpc_type`` (``unary``,
``client_stream``, ``server_stream``, ``bidi_stream``), ``grpc_service`` and ``grpc_method``. Codes
are spelled as Go spells them (``OK``, ``Unauthenticated``, ``InvalidArgument``, ...). Label
cardinality is bounded: a method is counted only when a handler is registered for it (a call to
an unknown method is not counted under the name the caller chose), and no label ever carries a
client id, a jti or anything else a caller controls beyond the registered method.

Domain metrics (:class:`TokenMetrics`): ``authsvc_tokens_issued_total`` and
``authsvc_tokens_refused_total{error}``, the error being the OAuth error code (a bounded set).
:class:`RateLimitMetrics`: ``authsvc_rate_limited_total{limit}``, requests refused by a rate
limit, ``limit`` being ``client``, ``peer`` or ``failed_auth`` (never the client or the address).
"""

from __future__ import annotations

import asyncio
import bisect
import inspect
import itertools
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import grpc
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client import values as _values
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from authsvc.core import errors as _errors
from authsvc.verify import outcomes as _outcomes

if TYPE_CHECKING:
    from aiohttp import web

    from authsvc.httpmetrics import HttpMetrics
    from authsvc.verify import JwksCache, TokenVerifier

__all__ = [
    "KEY_STATES",
    "GrpcMetrics",
    "JwksCollector",
    "KeyStateCollector",
    "KeyStates",
    "MetricsInterceptor",
    "RateLimitMetrics",
    "RevocationEntries",
    "RevocationListCollector",
    "ServerMetrics",
    "TokenMetrics",
    "VerificationMetrics",
    "grpc_code_name",
]

# grpc.StatusCode -> the Go spelling (codes.Code.String()) that go-grpc-prometheus uses
_GO_CODES = {
    grpc.StatusCode.OK: "OK",
    grpc.StatusCode.CANCELLED: "Canceled",
    grpc.StatusCode.UNKNOWN: "Unknown",
    grpc.StatusCode.INVALID_ARGUMENT: "InvalidArgument",
    grpc.StatusCode.DEADLINE_EXCEEDED: "DeadlineExceeded",
    grpc.StatusCode.NOT_FOUND: "NotFound",
    grpc.StatusCode.ALREADY_EXISTS: "AlreadyExists",
    grpc.StatusCode.PERMISSION_DENIED: "PermissionDenied",
    grpc.StatusCode.RESOURCE_EXHAUSTED: "ResourceExhausted",
    grpc.StatusCode.FAILED_PRECONDITION: "FailedPrecondition",
    grpc.StatusCode.ABORTED: "Aborted",
    grpc.StatusCode.OUT_OF_RANGE: "OutOfRange",
    grpc.StatusCode.UNIMPLEMENTED: "Unimplemented",
    grpc.StatusCode.INTERNAL: "Internal",
    grpc.StatusCode.UNAVAILABLE: "Unavailable",
    grpc.StatusCode.DATA_LOSS: "DataLoss",
    grpc.StatusCode.UNAUTHENTICATED: "Unauthenticated",
}
_BY_NUMBER = {code.value[0]: code for code in grpc.StatusCode}


def grpc_code_name(code: object) -> str:
    """The go-grpc-prometheus label value of a status code (a ``grpc.StatusCode``, its number,
    or None for OK)."""
    if code is None:
        return "OK"
    if isinstance(code, int):
        code = _BY_NUMBER.get(code, grpc.StatusCode.UNKNOWN)
    return _GO_CODES.get(code, "Unknown") if isinstance(code, grpc.StatusCode) else "Unknown"


_GRPC_LABELS = ("grpc_type", "grpc_service", "grpc_method")
_STARTED_HELP = "Total number of RPCs started on the server."
_HANDLED_HELP = "Total number of RPCs completed on the server, regardless of success or failure."
_SECONDS_HELP = (
    "Histogram of response latency (seconds) of gRPC that had been application-level handled by the server."
)
_BOUNDS = Histogram.DEFAULT_BUCKETS  # ends with +Inf
_BOUND_LABELS = tuple(floatToGoString(b) for b in _BOUNDS)  # type: ignore[no-untyped-call]


class GrpcMetrics:
    """The go-grpc-prometheus server metrics, registered in ``registry``.

    ``local`` (one process, every call on one event loop, as in a ``grpc.aio`` server): each method
    counts in plain numbers that a collector reads at scrape time, on the same loop; a call then
    costs a few additions instead of four locked prometheus_client updates and their wrappers (see
    ``tests/bench/bench_metrics.py``). Otherwise (``--workers N``) prometheus_client's own counters
    and histogram, which its multiprocess mode writes to the shared files."""

    def __init__(self, registry: CollectorRegistry, *, local: bool = False) -> None:
        self.local = local
        self._local_methods: list[_LocalMethod] = []
        if local:
            registry.register(_LocalGrpcCollector(self._local_methods))
            return
        self.started = Counter("grpc_server_started_total", _STARTED_HELP, _GRPC_LABELS, registry=registry)
        self.handled = Counter(
            "grpc_server_handled_total", _HANDLED_HELP, (*_GRPC_LABELS, "grpc_code"), registry=registry
        )
        self.handling_seconds = Histogram(
            "grpc_server_handling_seconds", _SECONDS_HELP, _GRPC_LABELS, registry=registry
        )

    def method(self, rpc_type: str, full_method: str) -> _LocalMethod | _SharedMethod:
        """What one registered method counts into (resolved once per method)."""
        service, _, name = full_method.lstrip("/").rpartition("/")
        labels = (rpc_type, service, name)
        if self.local:
            method = _LocalMethod(labels)
            self._local_methods.append(method)
            return method
        return _SharedMethod(self, labels)


def _rpc_type(handler: grpc.RpcMethodHandler[Any, Any]) -> str:
    if handler.request_streaming:
        return "bidi_stream" if handler.response_streaming else "client_stream"
    return "server_stream" if handler.response_streaming else "unary"


class _SharedMethod:
    """The prometheus_client label children of one registered method, resolved once."""

    __slots__ = ("handled", "labels", "metrics", "seconds", "start")

    def __init__(self, metrics: GrpcMetrics, labels: tuple[str, str, str]) -> None:
        self.metrics = metrics
        self.labels = labels
        self.start: Callable[[], None] = metrics.started.labels(*labels).inc
        self.seconds = metrics.handling_seconds.labels(*labels)
        self.handled: dict[str, Any] = {}

    def done(self, code: str, started: float) -> None:
        child = self.handled.get(code)
        if child is None:  # at most one per status code: 17
            child = self.handled[code] = self.metrics.handled.labels(*self.labels, code)
        child.inc()
        self.seconds.observe(time.perf_counter() - started)


class _LocalMethod:
    """One registered method's counts in plain numbers, changed and read on one event loop only."""

    __slots__ = ("buckets", "handled", "labels", "started", "sum")

    def __init__(self, labels: tuple[str, str, str]) -> None:
        self.labels = labels
        self.started = 0
        self.handled: dict[str, int] = {}
        self.buckets = [0] * len(_BOUNDS)  # observations in (previous bound, bound]
        self.sum = 0.0

    def start(self) -> None:
        self.started += 1

    def done(self, code: str, started: float) -> None:
        elapsed = time.perf_counter() - started
        handled = self.handled
        handled[code] = handled.get(code, 0) + 1
        self.sum += elapsed
        self.buckets[bisect.bisect_left(_BOUNDS, elapsed)] += 1


class _LocalGrpcCollector:
    """The go-grpc-prometheus families of :class:`_LocalMethod` counts, at scrape time."""

    def __init__(self, methods: list[_LocalMethod]) -> None:
        self._methods = methods

    def collect(self) -> Iterator[Metric]:
        started = CounterMetricFamily("grpc_server_started", _STARTED_HELP, labels=_GRPC_LABELS)
        handled = CounterMetricFamily(
            "grpc_server_handled", _HANDLED_HELP, labels=(*_GRPC_LABELS, "grpc_code")
        )
        seconds = HistogramMetricFamily("grpc_server_handling_seconds", _SECONDS_HELP, labels=_GRPC_LABELS)
        for method in list(self._methods):
            started.add_metric(method.labels, method.started)
            for code, count in list(method.handled.items()):
                handled.add_metric((*method.labels, code), count)
            cumulative = itertools.accumulate(method.buckets)
            seconds.add_metric(method.labels, list(zip(_BOUND_LABELS, cumulative, strict=True)), method.sum)
        yield started
        yield handled
        yield seconds


def _outcome(context: grpc.aio.ServicerContext[Any, Any], exc: BaseException | None) -> str:
    """The status code a call ended with: the code set on the context (by ``abort`` or
    ``set_code``), else OK; UNKNOWN for an unexpected exception, as grpc answers it."""
    if isinstance(exc, asyncio.CancelledError):
        return "Canceled"
    code = context.code()
    if code is not None:
        return grpc_code_name(code)
    if exc is not None and not isinstance(exc, grpc.aio.AbortError):
        return "Unknown"
    return "OK"


class MetricsInterceptor(grpc.aio.ServerInterceptor):
    """Counts every RPC (each kind) of a ``grpc.aio`` server into :class:`GrpcMetrics`.

    Install it first in the interceptor list, so that calls refused by the interceptors after it
    (authentication) are counted with their codes. It wraps the handler ``continuation`` returns,
    whatever those interceptors made of it, and keeps its RPC kind."""

    def __init__(self, metrics: GrpcMetrics) -> None:
        self._metrics = metrics
        self._methods: dict[tuple[str, str], _LocalMethod | _SharedMethod] = {}
        # the handler each method got last, and its wrapper: reused while continuation returns the
        # same handler (the registered one, or what a caching interceptor after this one made of it)
        self._wrapped: dict[str, tuple[object, grpc.RpcMethodHandler[Any, Any]]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        if handler is None:  # no such method: not counted under a name the caller chose
            return None
        name = handler_call_details.method
        cached = self._wrapped.get(name)
        if cached is not None and cached[0] is handler:
            return cached[1]
        rpc_type = _rpc_type(handler)
        key = (rpc_type, name)
        method = self._methods.get(key)
        if method is None:  # only registered methods get here: a bounded set
            method = self._methods[key] = self._metrics.method(rpc_type, name)
        wrapped = _wrap(handler, method)
        self._wrapped[name] = (handler, wrapped)  # registered methods only: bounded too
        return wrapped


def _wrap(
    handler: grpc.RpcMethodHandler[Any, Any], method: _LocalMethod | _SharedMethod
) -> grpc.RpcMethodHandler[Any, Any]:
    deserialize, serialize = handler.request_deserializer, handler.response_serializer
    if handler.response_streaming:
        inner_stream: Callable[..., Any] = (
            handler.stream_stream if handler.request_streaming else handler.unary_stream  # type: ignore[assignment]
        )

        async def streaming(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
            method.start()
            started = time.perf_counter()
            failure: BaseException | None = None
            try:
                result = inner_stream(request, context)
                if inspect.isasyncgen(result):
                    async for item in result:
                        await context.write(item)
                elif inspect.isawaitable(result):
                    await result
                elif result is not None:
                    for item in result:
                        await context.write(item)
            except BaseException as exc:
                failure = exc
                raise
            finally:
                method.done(_outcome(context, failure), started)

        if handler.request_streaming:
            return grpc.stream_stream_rpc_method_handler(
                streaming, request_deserializer=deserialize, response_serializer=serialize
            )
        return grpc.unary_stream_rpc_method_handler(
            streaming, request_deserializer=deserialize, response_serializer=serialize
        )
    inner: Callable[..., Any] = (
        handler.stream_unary if handler.request_streaming else handler.unary_unary  # type: ignore[assignment]
    )

    async def unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        method.start()
        started = time.perf_counter()
        failure: BaseException | None = None
        try:
            result = inner(request, context)
            return await result if inspect.isawaitable(result) else result
        except BaseException as exc:
            failure = exc
            raise
        finally:
            method.done(_outcome(context, failure), started)

    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(
            unary, request_deserializer=deserialize, response_serializer=serialize
        )
    return grpc.unary_unary_rpc_method_handler(
        unary, request_deserializer=deserialize, response_serializer=serialize
    )


def _oauth_error_codes() -> frozenset[str]:
    codes: set[str] = set()
    pending: list[type] = [_errors.ServiceError]
    while pending:
        cls = pending.pop()
        code = getattr(cls, "error", None)
        if isinstance(code, str):
            codes.add(code)
        pending.extend(cls.__subclasses__())
    return frozenset(codes)


class TokenMetrics:
    """``authsvc_tokens_issued_total`` and ``authsvc_tokens_refused_total{error}``; what
    :class:`~authsvc.authority.tokens.TokenIssuer` calls (it imports no prometheus code)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._issued = Counter("authsvc_tokens_issued_total", "Access tokens issued.", registry=registry)
        self._refused = Counter(
            "authsvc_tokens_refused_total",
            "Token requests refused, by OAuth error code.",
            ("error",),
            registry=registry,
        )
        self._codes = _oauth_error_codes()
        for code in sorted(self._codes):  # every series exists from the start, at zero
            self._refused.labels(code)

    def token_issued(self) -> None:
        self._issued.inc()

    def token_refused(self, error: str) -> None:
        # the codes are the core's own; anything else is folded, never a new series per value
        self._refused.labels(error if error in self._codes else "other").inc()


class RateLimitMetrics:
    """``authsvc_rate_limited_total{limit}``: what :class:`~authsvc.authority.ratelimit.RateLimits`
    calls for each refusal."""

    LIMITS = ("client", "peer", "failed_auth")

    def __init__(self, registry: CollectorRegistry) -> None:
        self._refused = Counter(
            "authsvc_rate_limited_total",
            "Requests refused by a rate limit, by limit (client, peer, failed_auth).",
            ("limit",),
            registry=registry,
        )
        self._children = {limit: self._refused.labels(limit) for limit in self.LIMITS}  # from zero

    def rate_limited(self, limit: str) -> None:
        child = self._children.get(limit)  # the limits are the code's own: never a new series
        if child is not None:
            child.inc()


class ServerMetrics:
    """Everything one server exposes on ``/metrics``: its own registry, the gRPC metrics and the
    interceptor that fills them.

    ``registry`` is where this server's metrics are created; ``exposed`` is what ``/metrics``
    serves. They are one registry, unless ``multiprocess_dir`` is given (``authsvc serve
    --workers N``): then every worker's counters and histograms live in memory-mapped files in that
    directory (prometheus_client's multiprocess mode, which the parent turned on for the workers
    with ``PROMETHEUS_MULTIPROC_DIR`` before starting them), and ``exposed`` reads them all, so
    that whichever worker answers a scrape shows the sums over the whole process group. Values
    computed at scrape time (:meth:`add_collector`) come from the answering worker."""

    def __init__(self, *, multiprocess_dir: Path | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        if multiprocess_dir is None:
            self.exposed = self.registry
        else:
            if not getattr(_values.ValueClass, "_multiprocess", False):
                # each worker would count alone, and a scrape would show one worker's share
                raise RuntimeError(
                    "prometheus_client is not in multiprocess mode: PROMETHEUS_MULTIPROC_DIR must be "
                    "set before it is imported"
                )
            self.exposed = CollectorRegistry(auto_describe=False)
            MultiProcessCollector(self.exposed, path=str(multiprocess_dir))  # type: ignore[no-untyped-call]
        # one process, one loop: plain numbers; the group's shared files need prometheus_client's own
        self.grpc = GrpcMetrics(self.registry, local=multiprocess_dir is None)
        self.interceptor = MetricsInterceptor(self.grpc)
        self._http: HttpMetrics | None = None

    def add_collector(self, collector: Collector) -> None:
        """Serve what ``collector`` computes at each scrape (never stored in the shared files)."""
        self.exposed.register(collector)

    def instrument_http(self, app: web.Application) -> None:
        """Count every request of ``app`` (:class:`~authsvc.httpmetrics.HttpMetrics`), outermost
        middleware first, so that requests the others refuse are counted with their status. Call
        before it starts."""
        from authsvc.httpmetrics import HttpMetrics  # noqa: PLC0415 - aiohttp only when HTTP is served

        if self._http is None:
            self._http = HttpMetrics(self.registry)
        app.middlewares.insert(0, self._http.middleware)

    def watch_verifier(self, verifier: TokenVerifier) -> None:
        """A resource server's verifier: count its verifications (:class:`VerificationMetrics`,
        set as ``verifier.metrics``) and show its key set and revocation list at each scrape."""
        verifier.metrics = VerificationMetrics(self.registry)
        self.add_collector(JwksCollector(verifier.keys))
        revocations = verifier.revocations
        if revocations is not None:
            self.add_collector(
                RevocationListCollector(lambda: revocations.revocations, lambda: revocations.seconds_behind)
            )

    def watch_keys(
        self, keyring: KeyStates, revocations: Callable[[], RevocationEntries] | None = None
    ) -> None:
        """The TokenService's signing keys by state (:class:`KeyStateCollector`) and the revocation
        list it serves (``revocations()``: the list now), at each scrape."""
        self.add_collector(KeyStateCollector(keyring))
        if revocations is not None:
            self.add_collector(RevocationListCollector(revocations))

    def tokens(self) -> TokenMetrics:
        return TokenMetrics(self.registry)

    def rate_limits(self) -> RateLimitMetrics:
        return RateLimitMetrics(self.registry)


# -- domain metrics: verification, keys, revocation list --------------------------------------


class VerificationMetrics:
    """``authsvc_token_verifications_total{outcome,cache}``: what a
    :class:`~authsvc.verify.TokenVerifier` calls once per verification
    (:class:`~authsvc.verify.outcomes.VerifierMetrics`; the verifier imports no prometheus code).
    ``outcome`` is ``accepted`` or one of :data:`~authsvc.verify.outcomes.REFUSALS`; ``cache`` is
    ``hit`` when the verified-token cache answered (no signature checked), else ``miss``. The
    children are resolved once: a call costs a branch and one counter increment."""

    def __init__(self, registry: CollectorRegistry) -> None:
        counter = Counter(
            "authsvc_token_verifications_total",
            "Access-token verifications, by outcome (accepted, or the check that refused) and whether "
            "the verified-token cache answered.",
            ("outcome", "cache"),
            registry=registry,
        )
        self._counter = counter
        self._hit = counter.labels(_outcomes.ACCEPTED, "hit")
        self._miss = counter.labels(_outcomes.ACCEPTED, "miss")
        self._known = frozenset(_outcomes.REFUSALS)
        # every refusal exists from the start at zero; the list is checked on cached acceptances too
        self._refused: dict[tuple[str, bool], Any] = {
            (outcome, False): counter.labels(outcome, "miss") for outcome in _outcomes.REFUSALS
        }
        for outcome in (_outcomes.REVOKED, _outcomes.REVOCATIONS_UNAVAILABLE, _outcomes.CERTIFICATE_MISMATCH):
            self._refused[(outcome, True)] = counter.labels(outcome, "hit")

    def accepted(self, cached: bool) -> None:
        (self._hit if cached else self._miss).inc()

    def refused(self, outcome: str, cached: bool) -> None:
        key = (outcome if outcome in self._known else _outcomes.ERROR, cached)
        child = self._refused.get(key)
        if child is None:  # at most len(REFUSALS) more: the set is fixed
            child = self._refused[key] = self._counter.labels(key[0], "hit" if cached else "miss")
        child.inc()


class JwksCollector:
    """A verifier's key set, computed at scrape time from its
    :class:`~authsvc.verify.jwks.JwksCache` (nothing is updated per call):
    ``authsvc_jwks_keys``, ``authsvc_jwks_age_seconds`` (:attr:`~authsvc.verify.JwksCache.age`: since
    the set was last known current; absent before the first), ``authsvc_jwks_fetches_total``,
    ``authsvc_jwks_fetch_failures_total`` and ``authsvc_jwks_unknown_kid_refreshes_total``."""

    def __init__(self, cache: JwksCache) -> None:
        self._cache = cache

    def collect(self) -> Iterator[Metric]:
        cache = self._cache
        yield GaugeMetricFamily("authsvc_jwks_keys", "Keys in the key set held.", len(cache.key_set.keys))
        age = cache.age()
        if age is not None:
            yield GaugeMetricFamily(
                "authsvc_jwks_age_seconds",
                "Seconds since the key set was last known current (a fetch, a push, an open stream).",
                age,
            )
        yield CounterMetricFamily("authsvc_jwks_fetches", "Key set fetches started.", cache.fetches)
        yield CounterMetricFamily(
            "authsvc_jwks_fetch_failures",
            "Key set fetches that brought no usable set (the last good set was kept).",
            cache.fetch_failures,
        )
        yield CounterMetricFamily(
            "authsvc_jwks_unknown_kid_refreshes",
            "Key set fetches started because a token named an unknown kid (throttled by the cooldown).",
            cache.unknown_kid_refreshes,
        )


class RevocationEntries(Protocol):
    """What :class:`RevocationListCollector` reads: a
    :class:`~authsvc.core.revocation.RevocationSet`."""

    @property
    def sequence(self) -> int: ...

    @property
    def by_jti(self) -> Mapping[str, int]: ...

    @property
    def by_client(self) -> Mapping[str, tuple[int, int]]: ...


class RevocationListCollector:
    """A revocation list, computed at scrape time from ``current()`` (the list held now):
    ``authsvc_revocation_list_entries{subject}`` (``jti`` or ``client``),
    ``authsvc_revocation_list_sequence`` and, given ``seconds_behind`` (a verifier's
    :attr:`~authsvc.verify.RevocationCache.seconds_behind`),
    ``authsvc_revocation_list_seconds_behind``: 0 while its source works, else seconds since it
    stopped."""

    def __init__(
        self, current: Callable[[], RevocationEntries], seconds_behind: Callable[[], float] | None = None
    ) -> None:
        self._current = current
        self._behind = seconds_behind

    def collect(self) -> Iterator[Metric]:
        held = self._current()
        entries = GaugeMetricFamily(
            "authsvc_revocation_list_entries",
            "Entries in the revocation list held, by subject.",
            labels=["subject"],
        )
        entries.add_metric(["jti"], len(held.by_jti))
        entries.add_metric(["client"], len(held.by_client))
        yield entries
        yield GaugeMetricFamily(
            "authsvc_revocation_list_sequence",
            "The last sequence of the revocation list applied.",
            held.sequence,
        )
        if self._behind is not None:
            yield GaugeMetricFamily(
                "authsvc_revocation_list_seconds_behind",
                "Seconds since the revocation list was last known current (0 while its source works).",
                self._behind(),
            )


class KeyStates(Protocol):
    """What :class:`KeyStateCollector` reads (the TokenService's ``Keyring``)."""

    @property
    def states(self) -> Mapping[str, int]: ...

    @property
    def active_since(self) -> int | None: ...


KEY_STATES = ("next", "active", "retiring", "retired", "revoked")


class KeyStateCollector:
    """The TokenService's signing keys, computed at scrape time from what its keyring loaded at
    its last tick (no store query per scrape): ``authsvc_signing_keys{state}`` for each life-cycle
    state and ``authsvc_signing_key_age_seconds``, since the active key became active."""

    def __init__(self, keys: KeyStates, *, clock: Callable[[], float] = time.time) -> None:
        self._keys = keys
        self._clock = clock

    def collect(self) -> Iterator[Metric]:
        states = self._keys.states
        family = GaugeMetricFamily(
            "authsvc_signing_keys", "Stored signing keys, by life-cycle state.", labels=["state"]
        )
        for state in KEY_STATES:
            family.add_metric([state], states.get(state, 0))
        yield family
        since = self._keys.active_since
        if since is not None:
            yield GaugeMetricFamily(
                "authsvc_signing_key_age_seconds",
                "Seconds since the active signing key became active.",
                max(0.0, self._clock() - since),
            )
