"""HTTP server metrics for an aiohttp application (both services' HTTP edges), apart from
:mod:`authsvc.metrics` so that a server that serves no HTTP never imports aiohttp (a tenth of a
second of start-up in every process); :meth:`authsvc.metrics.ServerMetrics.instrument_http`
installs :class:`HttpMetrics`."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Histogram

__all__ = ["HTTP_ROUTE", "UNMATCHED", "HttpMetrics"]

HTTP_ROUTE = web.RequestKey("authsvc_http_route", str)
"""Where a handler that does its own routing (the PaymentService's HTTP API) puts the template of
the route it matched, for :class:`HttpMetrics`; without it, aiohttp's own route template."""

UNMATCHED = "unmatched"
"""The ``http_route`` of a request that matched no route: never the raw path, which the caller
chooses (and which may hold a transaction id)."""

_HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"})


class HttpMetrics:
    """HTTP server metrics in the OpenTelemetry semantic conventions, as its Prometheus exporter
    names them: the ``http_server_request_duration_seconds`` histogram (seconds, the default
    buckets) labelled ``http_request_method`` (the method, or ``_OTHER`` for one not in RFC 9110
    and RFC 5789), ``http_route`` (the route template, e.g. ``/api/v1/payments/{transaction_id}``;
    ``unmatched`` for none) and ``http_response_status_code``. Its ``_count`` is the number of
    requests. A request cancelled before it was answered (the client left) is not counted."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._duration = Histogram(
            "http_server_request_duration_seconds",
            "Duration of HTTP server requests.",
            ("http_request_method", "http_route", "http_response_status_code"),
            registry=registry,
        )
        self._children: dict[tuple[str, str, int], Any] = {}

    @web.middleware
    async def middleware(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        started = time.perf_counter()
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            self._observe(request, exc.status, started)
            raise
        except Exception:
            self._observe(request, 500, started)
            raise
        self._observe(request, response.status, started)
        return response

    def _observe(self, request: web.Request, status: int, started: float) -> None:
        method = request.method if request.method in _HTTP_METHODS else "_OTHER"
        route = request.get(HTTP_ROUTE)
        if route is None:
            resource = request.match_info.route.resource
            route = UNMATCHED if resource is None else resource.canonical
        key = (method, route, status)
        child = self._children.get(key)
        if child is None:  # bounded: methods x registered routes x status codes
            child = self._children[key] = self._duration.labels(method, route, str(status))
        child.observe(time.perf_counter() - started)
