"""gRPC start-up and drain, written once for every service built on authsvc (the TokenService and
the PaymentService; ``payments_svc`` may import this, not ``authsvc.server``).

:func:`new_server` makes a ``grpc.aio`` server with the options every service wants (message and
metadata caps, no accidental port sharing, the connection limits of
:class:`~authsvc.listen.ConnectionLimits`) and the :class:`~authsvc.status.DecodeGuard`;
:func:`add_health_and_reflection` registers the health service and server reflection;
:func:`bind` adds the listening port, TLS when certificate and key are given; :func:`serving`
reports SERVING; :func:`describe` renders the address for the start-up log line.
:func:`start_http` serves an aiohttp application beside it, on the same event loop, with the same
TLS files, and stops it gracefully (aiohttp is imported only then: a process that serves no HTTP
never loads it). :func:`start_management` serves ``/metrics``, ``/livez`` and
``/readyz`` on a plaintext management port (``--metrics-listen``); :func:`track_health` keeps the
gRPC health service in agreement with ``/readyz``.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from authsvc.listen import ConnectionLimits, split_host_port
from authsvc.status import DecodeGuard

if TYPE_CHECKING:
    from aiohttp import web

__all__ = [
    "HEALTH_SERVICE",
    "HttpListener",
    "Readiness",
    "add_health_and_reflection",
    "bind",
    "describe",
    "management_app",
    "new_server",
    "peer_certificate",
    "server_ssl_context",
    "serving",
    "start_http",
    "start_management",
    "track_health",
]

HEALTH_SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name


def new_server(
    *,
    limits: ConnectionLimits,
    max_message_bytes: int,
    max_metadata_bytes: int,
    interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
    reuse_port: bool = False,
) -> grpc.aio.Server:
    """A ``grpc.aio`` server; ``interceptors`` run before the :class:`DecodeGuard`."""
    return grpc.aio.server(
        interceptors=[*interceptors, DecodeGuard()],
        options=[
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", 4 * 1024 * 1024),
            ("grpc.max_metadata_size", max_metadata_bytes),
            # gRPC enables SO_REUSEPORT by default; a second server on a taken port must fail
            # loudly unless we deliberately share the port between our own workers
            ("grpc.so_reuseport", 1 if reuse_port else 0),
            ("grpc.keepalive_permit_without_calls", 0),
            *limits.grpc_options(),
        ],
        maximum_concurrent_rpcs=limits.max_concurrent_rpcs,
    )


_REFLECTION_V1_SERVICE = "grpc.reflection.v1.ServerReflection"
_REFLECTION_V1_FILE = "grpc/reflection/v1/reflection.proto"


def add_health_and_reflection(server: grpc.aio.Server, services: Sequence[str]) -> HealthServicer:
    """Register ``grpc.health.v1.Health`` (NOT_SERVING until :func:`serving`) and server
    reflection of ``services`` plus those, under both ``grpc.reflection.v1`` (what grpcurl, grpc-java
    and Postman ask first) and ``grpc.reflection.v1alpha`` (older clients).

    grpcio-reflection ships only v1alpha (grpc/grpc#38576). v1 is the same protocol under another
    package name, field for field, so its messages are the same bytes on the wire: one v1alpha
    servicer answers both paths, and the v1 file (derived from the v1alpha one by renaming the
    package) joins the descriptor pool so that a v1 client can describe the service it talks to."""
    health = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    _add_reflection_v1_file(descriptor_pool.Default())
    servicer = reflection.aio.ReflectionServicer(
        [*services, HEALTH_SERVICE, reflection.SERVICE_NAME, _REFLECTION_V1_SERVICE]
    )
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(servicer, server)
    v1_info = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(_REFLECTION_V1_SERVICE, {"ServerReflectionInfo": v1_info}),)
    )
    return health


def _add_reflection_v1_file(pool: descriptor_pool.DescriptorPool) -> None:
    """Add ``grpc/reflection/v1/reflection.proto`` to ``pool`` unless it is there already (a second
    server in the process, or a grpcio-reflection that ships it)."""
    with contextlib.suppress(ImportError):  # a grpcio-reflection that ships v1 owns the file
        importlib.import_module("grpc_reflection.v1.reflection_pb2")
    try:
        pool.FindFileByName(_REFLECTION_V1_FILE)
        return
    except KeyError:
        pass
    alpha, v1 = f".{reflection_pb2.DESCRIPTOR.package}.", ".grpc.reflection.v1."
    file = descriptor_pb2.FileDescriptorProto()
    reflection_pb2.DESCRIPTOR.CopyToProto(file)
    file.name, file.package = _REFLECTION_V1_FILE, v1.strip(".")
    file.ClearField("options")
    for message in file.message_type:
        for field in message.field:
            if field.type_name.startswith(alpha):
                field.type_name = v1 + field.type_name.removeprefix(alpha)
    for service in file.service:
        for method in service.method:
            method.input_type = v1 + method.input_type.removeprefix(alpha)
            method.output_type = v1 + method.output_type.removeprefix(alpha)
    pool.AddSerializedFile(file.SerializeToString())


def bind(
    server: grpc.aio.Server,
    listen: str,
    *,
    tls_cert: Path | None,
    tls_key: Path | None,
    client_ca: Path | None = None,
) -> int:
    """Add the listening port (TLS when ``tls_cert`` and ``tls_key`` are given); returns the port
    bound (useful with port 0).

    With ``client_ca`` the port is mutual TLS: the handshake fails unless the client presents a
    certificate that chains to ``client_ca``, and the call's ``context.auth_context()`` then holds
    it (``x509_pem_cert``). grpcio has no middle way: ``require_client_auth=False`` does not even
    ask the client for a certificate (grpc core's ``GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE``),
    whatever the roots, so a port either requires certificates or never sees one."""
    if tls_cert is not None and tls_key is not None:
        credentials = grpc.ssl_server_credentials(
            [(tls_key.read_bytes(), tls_cert.read_bytes())],
            root_certificates=None if client_ca is None else client_ca.read_bytes(),
            require_client_auth=client_ca is not None,
        )
        return server.add_secure_port(listen, credentials)
    if client_ca is not None:
        raise ValueError("mutual TLS needs the server's own certificate and key")
    return server.add_insecure_port(listen)


async def serving(health: HealthServicer, services: Sequence[str]) -> None:
    """Report SERVING for the server as a whole and for each of ``services``."""
    for name in ("", *services):
        await health.set(name, health_pb2.HealthCheckResponse.SERVING)


def describe(listen: str, port: int) -> str:
    """``host:port`` for a log line (IPv6 hosts in brackets); a ``unix:PATH`` as it is."""
    if listen.startswith("unix:"):
        return listen
    host, _ = split_host_port(listen)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# -- HTTP -------------------------------------------------------------------------------------


@dataclass
class HttpListener:
    """A started aiohttp application on one address."""

    runner: web.AppRunner
    port: int

    async def stop(self) -> None:
        """Stop accepting, let requests in flight finish (within the runner's shutdown timeout),
        close the connections."""
        await self.runner.cleanup()


def server_ssl_context(
    tls_cert: Path, tls_key: Path, *, client_ca: Path | None = None, require_client_cert: bool = True
) -> ssl.SSLContext:
    """TLS 1.2 or later for an HTTP listener, from the same files as the gRPC listener.

    With ``client_ca``, the handshake asks the client for a certificate that chains to it: one is
    required (``CERT_REQUIRED``), or with ``require_client_cert=False`` optional
    (``CERT_OPTIONAL``: a client without one connects, one with a bad certificate does not). The
    peer certificate is then ``transport.get_extra_info("ssl_object").getpeercert(True)``."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(tls_cert, tls_key)
    if client_ca is not None:
        context.load_verify_locations(cafile=str(client_ca))
        context.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_OPTIONAL
    return context


def peer_certificate(request: web.Request) -> bytes | None:
    """The DER certificate the client presented in the TLS handshake of this request's
    connection, or None (plaintext, or a listener that asked for none: only one started with a
    client CA does, :func:`server_ssl_context`). Read from the connection itself, never from a
    header a proxy could set."""
    transport = request.transport
    ssl_object = None if transport is None else transport.get_extra_info("ssl_object")
    if not isinstance(ssl_object, ssl.SSLObject | ssl.SSLSocket):
        return None
    der = ssl_object.getpeercert(binary_form=True)
    return der or None


async def start_http(
    app: web.Application,
    listen: str,
    *,
    tls_cert: Path | None,
    tls_key: Path | None,
    grace: float,
    reuse_port: bool = False,
    idle_timeout: float = 75.0,
    client_ca: Path | None = None,
    require_client_cert: bool = True,
) -> HttpListener:
    """Serve ``app`` on ``listen`` (``HOST:PORT`` or ``unix:PATH``), TLS when certificate and
    key are given (mutual TLS with ``client_ca``: :func:`server_ssl_context`), on the running
    event loop. ``grace`` bounds how long :meth:`HttpListener.stop`
    waits for requests in flight; ``reuse_port`` lets ``--workers`` share the port;
    ``idle_timeout`` closes a keep-alive connection with no request for that long (aiohttp's own
    default is an hour)."""
    from aiohttp import web  # noqa: PLC0415 - aiohttp only in a process that serves HTTP

    runner = web.AppRunner(
        app,
        access_log=None,
        handle_signals=False,
        shutdown_timeout=grace,
        keepalive_timeout=idle_timeout,
        max_line_size=8190,
        max_field_size=8190,
    )
    await runner.setup()
    context = (
        server_ssl_context(tls_cert, tls_key, client_ca=client_ca, require_client_cert=require_client_cert)
        if tls_cert is not None and tls_key is not None
        else None
    )
    if client_ca is not None and context is None:
        raise ValueError("mutual TLS needs the server's own certificate and key")
    site: web.BaseSite
    if listen.startswith("unix:"):
        site = web.UnixSite(runner, listen.removeprefix("unix:"), ssl_context=context)
    else:
        host, port = split_host_port(listen)
        site = web.TCPSite(runner, host, port, ssl_context=context, reuse_port=reuse_port or None)
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    addresses = runner.addresses
    bound = addresses[0][1] if addresses and isinstance(addresses[0], tuple) else 0
    return HttpListener(runner, int(bound))


# -- management port: metrics and probes ------------------------------------------------------

Readiness = Callable[[], str | None]
"""Why the service cannot do its job now (a short reason), or None when it can."""


def management_app(registry: CollectorRegistry, readiness: Readiness) -> web.Application:
    """``GET /metrics`` (``registry`` in the Prometheus text format), ``GET /livez`` (200 while
    the process runs) and ``GET /readyz`` (200 when ``readiness`` has no objection, else 503 with
    ``{"status": "not ready", "reason": ...}``)."""
    from aiohttp import web  # noqa: PLC0415 - aiohttp only in a process that serves HTTP

    async def metrics(_: web.Request) -> web.Response:
        body = generate_latest(registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def livez(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(_: web.Request) -> web.Response:
        reason = readiness()
        if reason is None:
            return web.json_response({"status": "ready"})
        return web.json_response({"status": "not ready", "reason": reason}, status=503)

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/livez", livez)
    app.router.add_get("/readyz", readyz)
    return app


async def start_management(
    listen: str, registry: CollectorRegistry, readiness: Readiness, *, grace: float, reuse_port: bool = False
) -> HttpListener:
    """The management port: :func:`management_app` on ``listen``, in plaintext (probes and
    Prometheus scrape in plaintext; it serves no secret). ``reuse_port`` lets ``--workers`` share
    it: each answers with the metrics of the whole group (``ServerMetrics(multiprocess_dir=...)``)."""
    return await start_http(
        management_app(registry, readiness),
        listen,
        tls_cert=None,
        tls_key=None,
        grace=grace,
        reuse_port=reuse_port,
    )


async def track_health(
    health: HealthServicer,
    services: Sequence[str],
    readiness: Readiness,
    *,
    interval: float = 0.5,
    while_not_ready: Callable[[], None] | None = None,
    while_ready: Callable[[], None] | None = None,
) -> None:
    """Keep the gRPC health status of the server and of ``services`` SERVING while
    ``readiness`` has no objection and NOT_SERVING otherwise, checked every ``interval`` seconds
    until cancelled. ``while_not_ready`` is called on each check that finds the service not ready
    (e.g. to try fetching keys again), ``while_ready`` on each other one (e.g. to keep keys
    fresh while no request comes); both must return at once."""
    last: bool | None = None
    while True:
        ready = readiness() is None
        if ready != last:
            status = (
                health_pb2.HealthCheckResponse.SERVING
                if ready
                else health_pb2.HealthCheckResponse.NOT_SERVING
            )
            for name in ("", *services):
                await health.set(name, status)
            last = ready
        if not ready and while_not_ready is not None:
            while_not_ready()
        elif ready and while_ready is not None:
            while_ready()
        await asyncio.sleep(interval)
