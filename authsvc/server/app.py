"""Process wiring of the TokenService: build the server from a :class:`ServeConfig`, serve until
SIGTERM or SIGINT, shut down gracefully.

One process serves on one event loop; several workers (by default one per usable CPU,
:func:`~authsvc.server.cpus.usable_cpus`) are that many processes that share each listening port
(SO_REUSEPORT), so that token signing uses every core. A listener on port 0 or a Unix socket
cannot be shared: the default is then one process, and the log says why. With ``--metrics-listen``
they share the management port too, and count into one private directory (prometheus_client's
multiprocess mode), so that a scrape answered by any worker shows the whole group.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import multiprocessing.connection
import os
import shutil
import signal
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import grpc
from grpc_health.v1._async import HealthServicer
from prometheus_client.multiprocess import mark_process_dead

from authsvc import authority as application
from authsvc import serving
from authsvc.authority import Authority
from authsvc.authority.client_keys import ClientKeys
from authsvc.authority.deployment import DB_FILE
from authsvc.authority.keyring import Keyring
from authsvc.authority.ratelimit import RateLimits, RedisBuckets
from authsvc.authority.revocations import RevocationFeed
from authsvc.authority.tokens import TokenIssuer
from authsvc.core.auth_methods import PrivateKeyJwt, TlsClientAuth
from authsvc.core.client_assertion import AssertionPolicy
from authsvc.core.dburl import redact_database_url
from authsvc.core.errors import ConfigurationError
from authsvc.core.grants import TokenEndpoint, client_credentials_endpoint
from authsvc.core.ports import SystemClock, SystemRandom
from authsvc.listen import is_unix, split_host_port, stop_signal
from authsvc.logsafe import LogRateLimiter
from authsvc.metrics import ServerMetrics
from authsvc.server.config import ServeConfig
from authsvc.server.token_service import StreamSlots, TokenServicer
from authsvc.store.cache import CachedClientLookup
from authsvc.v1 import token_pb2, token_pb2_grpc
from authsvc.verify import JwksCache, TokenVerifier
from authsvc.verify.verifier import ANY_AUDIENCE

__all__ = ["TOKEN_SERVICE", "RunningServer", "open_authority", "run", "serve", "start_server"]

log = logging.getLogger("authsvc.server")

TOKEN_SERVICE = token_pb2.DESCRIPTOR.services_by_name["TokenService"].full_name
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"  # read by prometheus_client when a worker imports it


def open_authority(config: ServeConfig) -> Authority:
    """The deployment state for ``config``: store opened and migrated, KEK loaded and checked."""
    return application.open_authority(
        config.data_dir,
        kek=config.kek,
        kek_file=config.kek_file,
        clock=SystemClock(),
        random=SystemRandom(),
        database_url=config.database_url,
    )


@dataclass
class RunningServer:
    """A started TokenService."""

    server: grpc.aio.Server
    port: int
    health: HealthServicer
    authority: Authority
    keyring: Keyring
    keyring_task: asyncio.Task[None]
    watch_slots: StreamSlots | None = None  # the open WatchJwks and WatchRevocations streams
    http: serving.HttpListener | None = None  # the OAuth endpoints over HTTP (--http-listen)
    revocations: RevocationFeed | None = None  # the revocation list WatchRevocations streams
    revocations_task: asyncio.Task[None] | None = None
    metrics: ServerMetrics | None = None  # what /metrics shows (--metrics-listen)
    management: serving.HttpListener | None = None  # /metrics, /livez, /readyz
    health_task: asyncio.Task[None] | None = None  # keeps gRPC health in step with /readyz
    rate_limits: RateLimits | None = None  # --client-rate-limit, --peer-rate-limit, ...
    mtls_port: int | None = None  # the gRPC port that requires client certificates (--mtls-listen)
    mtls_http: serving.HttpListener | None = None  # the OAuth endpoints over mutual TLS

    @property
    def http_port(self) -> int:
        if self.http is None:
            raise RuntimeError("the TokenService serves no HTTP (--http-listen)")
        return self.http.port

    @property
    def metrics_port(self) -> int:
        if self.management is None:
            raise RuntimeError("the TokenService serves no metrics (--metrics-listen)")
        return self.management.port

    @property
    def mtls_http_port(self) -> int:
        if self.mtls_http is None:
            raise RuntimeError("the TokenService serves no HTTP over mutual TLS (--mtls-http-listen)")
        return self.mtls_http.port

    async def stop(self, grace: float | None) -> None:
        """Report NOT_SERVING, let in-flight calls on both listeners finish within ``grace``
        seconds, stop."""
        await self.health.enter_graceful_shutdown()
        if self.health_task is not None:
            self.health_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.health_task
        tasks = [t for t in (self.keyring_task, self.revocations_task) if t is not None]
        for task in tasks:
            task.cancel()
        listeners = [h.stop() for h in (self.http, self.mtls_http, self.management) if h is not None]
        await asyncio.gather(self.server.stop(grace), *listeners)
        for task in tasks:  # each waits for its tick in flight: the store is closed next
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.rate_limits is not None:
            await self.rate_limits.close()
        self.authority.close()


async def start_server(
    config: ServeConfig,
    *,
    authority: Authority | None = None,
    reuse_port: bool = False,
    monotonic: Callable[[], float] = time.monotonic,
    metrics_dir: Path | None = None,
) -> RunningServer:
    """Build and start the TokenService; returns once it is SERVING. ``monotonic`` paces the
    rate-limited refusal log (tests inject a fake). ``metrics_dir`` is the process group's shared
    metrics directory (a worker of ``--workers N``: :func:`run`)."""
    authority = authority or open_authority(config)
    authority.keys.ensure_signing_key()
    keyring = Keyring(authority.keys, config.lifecycle_policy(), tick_interval=config.key_tick_interval)
    keyring.load()
    revocations = RevocationFeed(authority.store, authority.clock, tick_interval=config.key_tick_interval)
    revocations.load()
    clients = CachedClientLookup(authority.store, ttl=config.client_cache_ttl)
    endpoint = client_credentials_endpoint(
        issuer=config.issuer,
        clients=clients,
        hasher=authority.deployment.hasher(),
        signer=lambda: keyring.signer,
        clock=authority.clock,
        random=authority.random,
    )
    _register_private_key_jwt(endpoint, config, authority)
    if config.mtls:  # a client certificate can reach the endpoint only on a mutual-TLS listener
        endpoint.register_auth_method(TlsClientAuth())
    refusal_log = LogRateLimiter(
        rate=config.refusal_log_rate, burst=max(1, round(2 * config.refusal_log_rate)), clock=monotonic
    )
    metrics = ServerMetrics(multiprocess_dir=metrics_dir) if config.metrics_listen is not None else None
    if metrics is not None:  # keys by state and the revocation list, read at each scrape
        metrics.watch_keys(keyring, lambda: revocations.set)
    rate_limits = _rate_limits(config, metrics)
    issuer = TokenIssuer(
        endpoint,
        clients,
        refusal_log=refusal_log,
        metrics=None if metrics is None else metrics.tokens(),
        limits=rate_limits,
    )
    server = serving.new_server(
        limits=config.limits,
        max_message_bytes=config.max_message_bytes,
        max_metadata_bytes=config.max_metadata_bytes,
        # first: calls the interceptors after it refuse are counted with their codes
        interceptors=[] if metrics is None else [metrics.interceptor],
        reuse_port=reuse_port,
    )
    watch_slots = StreamSlots(per_peer=config.watch_streams_per_peer, total=config.watch_streams_total)
    token_pb2_grpc.add_TokenServiceServicer_to_server(
        TokenServicer(
            issuer,
            keyring,
            jwks_max_age=config.jwks_max_age,
            watch_slots=watch_slots,
            refusal_log=refusal_log,
            revocations=revocations,
            client_certificates=config.mtls,
        ),
        server,
    )
    health = serving.add_health_and_reflection(server, [TOKEN_SERVICE])
    try:
        port = serving.bind(server, config.listen, tls_cert=config.tls_cert, tls_key=config.tls_key)
        mtls_port = None
        if config.mtls_listen is not None:
            # RFC 8705: the same services, on a port whose every caller presents a certificate
            # issued by the client CA; IssueToken binds the tokens it issues there to it
            mtls_port = serving.bind(
                server,
                config.mtls_listen,
                tls_cert=config.tls_cert,
                tls_key=config.tls_key,
                client_ca=config.client_ca,
            )
        await server.start()
    except BaseException:
        await server.stop(None)  # else its loop-bound parts complain at interpreter exit
        raise
    http = mtls_http = None
    if config.http_listen is not None or config.mtls_http_listen is not None:
        try:
            http, mtls_http = await _start_http(
                config, issuer, keyring, authority, revocations, reuse_port=reuse_port, metrics=metrics
            )
        except BaseException:
            await server.stop(0)
            raise
    web_listeners = [h for h in (http, mtls_http) if h is not None]
    readiness = _readiness(keyring)
    management = None
    if metrics is not None and config.metrics_listen is not None:
        try:
            management = await serving.start_management(
                config.metrics_listen,
                metrics.exposed,
                readiness,
                grace=config.grace_period,
                reuse_port=reuse_port,
            )
        except OSError as exc:
            await asyncio.gather(server.stop(0), *[h.stop() for h in web_listeners])
            raise ConfigurationError(
                f"cannot listen on {config.metrics_listen}: {exc.strerror or exc}; choose another "
                "--metrics-listen"
            ) from None
        except BaseException:
            await asyncio.gather(server.stop(0), *[h.stop() for h in web_listeners])
            raise
    keyring_task = asyncio.get_running_loop().create_task(keyring.run(), name="authsvc-keyring")
    revocations_task = asyncio.get_running_loop().create_task(revocations.run(), name="authsvc-revocations")
    health_task = asyncio.get_running_loop().create_task(
        serving.track_health(health, [TOKEN_SERVICE], readiness), name="authsvc-health"
    )
    metrics_note = (
        ""
        if management is None
        else f", metrics on {_http_address(config.metrics_listen or '', management.port)}"
    )
    if keyring.healthy:  # else the health task reports NOT_SERVING until it is
        await serving.serving(health, [TOKEN_SERVICE])
    mtls_note = (
        "" if mtls_port is None else f", mutual TLS on {_http_address(config.mtls_listen or '', mtls_port)}"
    )
    if mtls_http is not None:
        mtls_note += f", HTTP mutual TLS on {_http_address(config.mtls_http_listen or '', mtls_http.port)}"
    log.info(
        "TokenService listening on %s (%s)%s%s%s, issuer %s, signing key kid=%s",
        serving.describe(config.listen, port),
        "TLS" if config.tls else "plaintext",
        "" if http is None else f", HTTP on {_http_address(config.http_listen or '', http.port)}",
        mtls_note,
        metrics_note,
        config.issuer,
        keyring.signer.key.kid,
    )
    log.info("%s", rate_limits.describe())
    return RunningServer(
        server,
        port,
        health,
        authority,
        keyring,
        keyring_task,
        watch_slots,
        http,
        revocations,
        revocations_task,
        metrics,
        management,
        health_task,
        rate_limits,
        mtls_port=mtls_port,
        mtls_http=mtls_http,
    )


def _rate_limits(config: ServeConfig, metrics: ServerMetrics | None) -> RateLimits:
    """The configured limits, on Redis buckets with --redis-url (local ones during an outage)."""
    shared = None
    if config.redis_url is not None:
        shared = RedisBuckets(config.redis_url, prefix=config.redis_key_prefix)
    return RateLimits(
        client=config.client_rate_limit,
        peer=config.peer_rate_limit,
        failed_auth=config.failed_auth_limit,
        shared=shared,
        metrics=None if metrics is None else metrics.rate_limits(),
    )


def _register_private_key_jwt(endpoint: TokenEndpoint, config: ServeConfig, authority: Authority) -> None:
    """private_key_jwt (RFC 7523): the clients' keys from their records or their jwks_uri, the
    assertions' jti in the store shared by every replica."""
    endpoint.register_auth_method(
        PrivateKeyJwt(
            keys=ClientKeys(
                allow_internal=config.client_jwks_allow_internal, ca_file=config.client_jwks_ca_file
            ),
            replay=authority.store,
            policy=AssertionPolicy(
                issuer=config.issuer,
                token_endpoint=config.token_endpoint,
                accept_token_endpoint_audience=config.accept_token_endpoint_audience,
                max_lifetime=config.client_assertion_max_lifetime,
            ),
            clock=authority.clock,
        )
    )


def _readiness(keyring: Keyring) -> serving.Readiness:
    """Ready while a signing key is loaded and the store answered the last key tick."""

    def reason() -> str | None:
        return None if keyring.healthy else "no signing key loaded, or the key store did not answer"

    return reason


def _http_address(listen: str, port: int) -> str:
    return listen if listen.startswith("unix:") else serving.describe(listen, port)


async def _start_http(
    config: ServeConfig,
    issuer: TokenIssuer,
    keyring: Keyring,
    authority: Authority,
    revocations: RevocationFeed,
    *,
    reuse_port: bool,
    metrics: ServerMetrics | None = None,
) -> tuple[serving.HttpListener | None, serving.HttpListener | None]:
    """The OAuth endpoints over HTTP on the same loop and application layer (authsvc.http): on
    ``--http-listen``, and over mutual TLS on ``--mtls-http-listen`` (RFC 8705: the same
    endpoints, for clients that present a certificate; the metadata names them in
    ``mtls_endpoint_aliases``)."""
    from aiohttp import web  # noqa: PLC0415 - aiohttp only when HTTP is served

    from authsvc.http.oauth import OAuthHttp  # noqa: PLC0415

    introspection = TokenVerifier(
        issuer=config.issuer,
        audience=ANY_AUDIENCE,
        # the keyring's memory, re-read every second: a revoked key stops introspecting as active
        jwks=JwksCache(keyring, max_age=1.0, cooldown=1.0),
        leeway=0,
    )
    oauth = OAuthHttp(
        issuer_url=config.issuer,
        issuer=issuer,
        keyring=keyring,
        introspection=introspection,
        jwks_max_age=config.jwks_max_age,
        revocations=authority.revocations,
        revocation_feed=revocations,
        certificate_bound=config.mtls,
    )

    def app() -> web.Application:
        built = oauth.app()
        if metrics is not None:
            metrics.instrument_http(built)
        return built

    http = mtls_http = None
    if config.http_listen is not None:
        http = await serving.start_http(
            app(),
            config.http_listen,
            tls_cert=config.tls_cert,
            tls_key=config.tls_key,
            grace=config.grace_period,
            reuse_port=reuse_port,
        )
    if config.mtls_http_listen is not None:
        try:
            mtls_http = await serving.start_http(
                app(),
                config.mtls_http_listen,
                tls_cert=config.tls_cert,
                tls_key=config.tls_key,
                grace=config.grace_period,
                reuse_port=reuse_port,
                client_ca=config.client_ca,
            )
        except BaseException:
            if http is not None:
                await http.stop()
            raise
        oauth.mtls_base_url = config.mtls_base_url or _default_mtls_base_url(config.issuer, mtls_http.port)
    return http, mtls_http


def _default_mtls_base_url(issuer: str, port: int) -> str:
    """Where the mutual-TLS HTTP listener is reached when ``--mtls-base-url`` does not say: the
    issuer's host on that listener's port, over https."""
    host = urlsplit(issuer).hostname or "localhost"
    return f"https://{f'[{host}]' if ':' in host else host}:{port}"


async def serve(config: ServeConfig, *, reuse_port: bool = False, metrics_dir: Path | None = None) -> None:
    """Serve until SIGTERM or SIGINT, then shut down gracefully."""
    stopping = stop_signal()  # before start-up: a SIGTERM during it stops gracefully after it
    running = await start_server(config, reuse_port=reuse_port, metrics_dir=metrics_dir)
    await stopping.wait()
    log.info("shutting down (grace %.1fs)", config.grace_period)
    await running.stop(config.grace_period)
    log.info("stopped")


def _worker(
    config: ServeConfig, log_level: int, log_format: str = "text", metrics_dir: Path | None = None
) -> None:
    # a spawned process starts with no logging: set it up as the command did in the parent
    from authsvc.logsetup import configure  # noqa: PLC0415

    log_setup = configure(level=log_level, log_format=log_format, tag="[worker]")
    try:
        asyncio.run(serve(config, reuse_port=True, metrics_dir=metrics_dir))
    finally:
        log_setup.stop()


def database_location(config: ServeConfig) -> str:
    """Where the clients and keys are kept, for the start-up log: the SQLite file, or the
    PostgreSQL URL with every secret in it redacted (authsvc.core.dburl)."""
    if config.database_url:
        return f"PostgreSQL at {redact_database_url(config.database_url)}"
    return f"SQLite at {config.data_dir / DB_FILE}"


@contextlib.contextmanager
def _group_metrics(config: ServeConfig) -> Iterator[Path | None]:
    """With ``--metrics-listen``, the process group's private metrics directory (mode 0700, in
    ``TMPDIR`` or the system's temporary directory), removed when the group is done; None without
    metrics.

    prometheus_client's multiprocess mode: each worker writes its counters and histograms to files
    there, and the worker that answers a scrape reads them all (:class:`ServerMetrics`). The mode is
    chosen when prometheus_client is imported, from ``PROMETHEUS_MULTIPROC_DIR``: the workers are
    spawned, so they import it afresh with the variable this sets while they start (see
    :func:`_worker_environment`)."""
    if config.metrics_listen is None:
        yield None
        return
    # TMPDIR as given: tempfile would fall back to /tmp, elsewhere than the operator asked for
    parent = os.environ.get("TMPDIR") or None
    try:
        path = Path(tempfile.mkdtemp(prefix="authsvc-metrics-", dir=parent))  # 0700, ours alone
    except OSError as exc:
        raise ConfigurationError(
            f"cannot create the workers' metrics directory in {parent or 'the temporary directory'}: "
            f"{exc.strerror or exc}; set TMPDIR to a writable directory"
        ) from None
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def _worker_environment(metrics_dir: Path | None) -> Iterator[None]:
    """``PROMETHEUS_MULTIPROC_DIR`` for the workers started within (they inherit the environment
    at spawn), restored afterwards. This process imported prometheus_client long before and keeps
    its own mode; it serves no metrics itself."""
    if metrics_dir is None:
        yield
        return
    previous = os.environ.get(MULTIPROC_ENV)
    os.environ[MULTIPROC_ENV] = str(metrics_dir)
    try:
        yield
    finally:
        if previous is None:
            del os.environ[MULTIPROC_ENV]
        else:
            os.environ[MULTIPROC_ENV] = previous


def run(config: ServeConfig, *, log_format: str = "text") -> int:
    """Run the TokenService in this process, or in ``config.worker_count`` worker processes."""
    # once, before the workers: an operator reading the log knows which database this is
    log.info("clients and keys in %s", database_location(config))
    workers = config.worker_count
    if config.worker_note is not None:
        log.info("%s", config.worker_note)
    if workers == 1:
        asyncio.run(serve(config))
        return 0
    # Bootstrap once (migrations, pepper, first key) before the workers race for it.
    authority = open_authority(config)
    authority.keys.ensure_signing_key()
    authority.close()
    check_ports_free(config)
    log.info("starting %d workers (%s)", workers, "--workers" if config.workers else "one per usable CPU")
    with _group_metrics(config) as metrics_dir:
        return _run_workers(config, log_format, metrics_dir)


def check_ports_free(config: ServeConfig) -> None:
    """Refuse to start workers on a port something already listens on.

    The workers bind with SO_REUSEPORT, which the kernel grants beside any other SO_REUSEPORT
    socket of the same user: another ``authsvc serve`` on the same port would silently share its
    connections with this one. A plain bind (SO_REUSEADDR only, as a single server binds: sockets
    in TIME_WAIT do not count) fails while anything holds the port, so it is tried first, for each
    TCP listener, and released before the workers bind."""
    for flag, address in config.listeners:
        if is_unix(address):
            continue
        host, port = split_host_port(address)
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        except OSError as exc:
            raise ConfigurationError(
                f"cannot listen on {address}: {exc.strerror or exc}; check {flag}"
            ) from None
        for family, kind, proto, _, sockaddr in infos[:1]:
            with socket.socket(family, kind, proto) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    probe.bind(sockaddr)
                except OSError as exc:
                    raise ConfigurationError(
                        f"cannot listen on {address}: {exc.strerror or exc}; stop what holds it or choose "
                        f"another {flag}"
                    ) from None


def _run_workers(config: ServeConfig, log_format: str, metrics_dir: Path | None) -> int:
    ctx = multiprocessing.get_context("spawn")
    procs = [
        ctx.Process(
            target=_worker, args=(config, logging.getLogger().level, log_format, metrics_dir), daemon=False
        )
        for _ in range(config.worker_count)
    ]
    with _worker_environment(metrics_dir):
        for p in procs:
            p.start()
    stopping = False

    def forward(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        for p in procs:
            if p.is_alive() and p.pid is not None:
                p.terminate()

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    rc = 0
    alive = {p.sentinel: p for p in procs}
    while alive:
        for sentinel in multiprocessing.connection.wait(list(alive)):
            proc = alive.pop(sentinel)  # type: ignore[arg-type]
            proc.join()
            if metrics_dir is not None and proc.pid is not None:
                # its live gauges go (it has none today); its counts stay in the sums
                mark_process_dead(proc.pid, str(metrics_dir))  # type: ignore[no-untyped-call]
            if proc.exitcode != 0 and not stopping:
                log.error("worker %s exited with %s; stopping the others", proc.pid, proc.exitcode)
                forward(signal.SIGTERM, None)
                rc = 1
    return rc
