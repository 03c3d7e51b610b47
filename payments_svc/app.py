"""Process wiring of the PaymentService: configuration, server, graceful shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import grpc
from grpc_health.v1._async import HealthServicer

from authsvc import serving
from authsvc.core.errors import ConfigurationError
from authsvc.core.ports import SystemClock, SystemRandom
from authsvc.listen import (
    ConnectionLimits,
    check_listen,
    check_plaintext,
    is_loopback,
    split_host_port,
    stop_signal,
)
from authsvc.metrics import ServerMetrics
from authsvc.verify import (
    AioAuthInterceptor,
    GrpcJwksSource,
    GrpcRevocationSource,
    HttpJwksSource,
    HttpRevocationSource,
    JwksCache,
    RevocationCache,
    TokenVerifier,
)
from payments_svc.service import PaymentOperations, PaymentServicer
from payments_svc.store import PaymentStore, SqlPaymentStore
from payments_svc.v1 import payments_pb2, payments_pb2_grpc

__all__ = [
    "PAYMENT_SERVICE",
    "PaymentsConfig",
    "RunningPayments",
    "open_store",
    "read_client_secret",
    "serve",
    "start_server",
]

log = logging.getLogger("payments_svc.server")

PAYMENT_SERVICE = payments_pb2.DESCRIPTOR.services_by_name["PaymentService"].full_name
DB_FILE = "payments.db"
REVOCATIONS_WAIT = 5.0  # the longest start-up waits for the first revocation snapshot


def read_client_secret(path: Path) -> str:
    """The secret in ``path`` (``--client-secret-file``), read once at start-up and stripped of
    surrounding whitespace. ConfigurationError if it cannot be read or is empty; the error names
    the file, never its content."""
    try:
        secret = path.read_bytes().decode("utf-8").strip()
    except OSError as exc:
        raise ConfigurationError(
            f"cannot read the client secret file {path}: {exc.strerror or exc}"
        ) from None
    except UnicodeDecodeError:
        raise ConfigurationError(f"the client secret file {path} is not UTF-8 text") from None
    if not secret:
        raise ConfigurationError(f"the client secret file {path} is empty")
    return secret


@dataclass(frozen=True)
class PaymentsConfig:
    """Settings of ``payments-svc serve``."""

    data_dir: Path
    listen: str = "127.0.0.1:50052"
    # the HTTP/JSON API beside gRPC (payments_svc.http), same process, loop and TLS files
    http_listen: str | None = None
    # /metrics, /livez, /readyz on a plaintext management port (authsvc.serving.start_management)
    metrics_listen: str | None = None
    token_service: str = "127.0.0.1:50051"  # noqa: S105 - an address, not a secret
    issuer: str = "https://authsvc.local"
    audience: str = "payments"
    tls_cert: Path | None = None
    tls_key: Path | None = None
    # RFC 8705: ask callers for a certificate issued by this CA, so that certificate-bound tokens
    # can be checked (gRPC: required, grpcio cannot ask without requiring; HTTP: optional)
    client_ca: Path | None = None
    insecure: bool = False
    jwks_url: str | None = None  # keys from a jwks_uri instead of the TokenService's GetJwks/WatchJwks
    token_service_ca: Path | None = None
    insecure_token_service: bool = False
    leeway: float = 30.0
    jwks_max_age: float = 60.0
    jwks_cooldown: float = 5.0
    # not ready once the keys were last known current longer ago than this (None: twice
    # jwks_max_age; 0: never, ready whenever a key set is held); see jwks_staleness_bound
    jwks_max_staleness: float | None = None
    grace_period: float = 5.0
    # this resource server's own registration, used only to read the revocation list
    # (WatchRevocations on token_service); without it tokens are verified without the list
    client_id: str | None = None
    client_secret: str | None = field(default=None, repr=False)
    revocations_max_staleness: float = 60.0
    revocations_fail_closed: bool = False
    # the list over HTTP (GET /oauth2/revocations) instead of WatchRevocations: given, or by
    # default with jwks_url, at the jwks_uri's origin (see revocations_url())
    revocations_url: str | None = None
    revocations_poll_interval: float = 5.0
    max_message_bytes: int = 64 * 1024
    max_metadata_bytes: int = 16 * 1024
    # PostgreSQL (shared by several replicas) instead of SQLite in data_dir; may hold a password
    database_url: str | None = field(default=None, repr=False)
    database_timeout: float = 3.0  # the longest wait for a database connection before UNAVAILABLE
    # what an unauthenticated caller can hold: connections, handshakes, streams, RPCs
    limits: ConnectionLimits = field(default_factory=ConnectionLimits)

    def _check_url(self, url: str, refusal: str) -> None:
        """An https:// URL, or http:// to loopback (anywhere with --insecure-token-service)."""
        parts = urlsplit(url)
        plain_ok = self.insecure_token_service or is_loopback((parts.hostname or "").strip("[]"))
        if (
            parts.scheme not in ("https", "http")
            or not parts.hostname
            or (parts.scheme == "http" and not plain_ok)
        ):
            raise ConfigurationError(
                f"{refusal} {url}: give an https:// URL "
                "(http only to loopback, or with --insecure-token-service inside a trusted mesh)"
            )

    @property
    def jwks_staleness_bound(self) -> float | None:
        """Seconds after which keys not known to be current make the service not ready; None:
        never. By default twice ``jwks_max_age`` (120 s), which is also the TokenService's default
        ``--key-publish-delay``: keys older than that may lack a key that signs by now, while a
        poll or two that fail on the way (an issuer restarting) do not take the service out."""
        if self.jwks_max_staleness is None:
            return 2 * self.jwks_max_age
        return self.jwks_max_staleness or None

    def __post_init__(self) -> None:
        check_listen(self.listen, "--listen")
        if self.http_listen is not None:
            check_listen(self.http_listen, "--http-listen")
        if self.metrics_listen is not None:
            # plaintext on any address: probes and Prometheus scrape in plaintext
            check_listen(self.metrics_listen, "--metrics-listen")
        if self.database_url is not None and not self.database_url.strip():
            raise ConfigurationError(
                "--database-url is empty: give a postgresql:// URL, or leave it out for SQLite in the "
                "data dir"
            )
        if self.database_url and not self.database_url.startswith(("postgresql://", "postgres://")):
            raise ConfigurationError("--database-url must be a postgresql:// URL")
        if self.database_timeout <= 0:
            raise ConfigurationError("the database timeout must be positive")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigurationError("--tls-cert and --tls-key go together")
        check_plaintext(self.listen, tls=self.tls_cert is not None, insecure=self.insecure)
        if self.http_listen is not None:
            check_plaintext(self.http_listen, tls=self.tls_cert is not None, insecure=self.insecure)
        if self.client_ca is not None and self.tls_cert is None:
            raise ConfigurationError(
                "--client-ca needs --tls-cert and --tls-key: client certificates are asked for in the "
                "TLS handshake"
            )
        if self.jwks_url is not None:
            self._check_url(self.jwks_url, "refusing to fetch signing keys from")
        host, _ = split_host_port(self.token_service)
        if (
            self.jwks_url is None
            and self.token_service_ca is None
            and not self.insecure_token_service
            and not is_loopback(host)
        ):
            raise ConfigurationError(
                f"refusing to fetch signing keys from {self.token_service} in plaintext: "
                "give --token-service-ca, "
                "or --insecure-token-service inside a trusted mesh"
            )
        if (self.client_id is None) != (self.client_secret is None) or self.client_id == "":
            raise ConfigurationError("--client-id and --client-secret-file go together")
        if self.revocations_url is not None and self.client_id is None:
            raise ConfigurationError("--revocations-url needs the list's reader: give --client-id")
        if (
            not math.isfinite(self.revocations_poll_interval)
            or not 0 < self.revocations_poll_interval <= 3600
        ):
            raise ConfigurationError("--revocations-poll-interval must be between 0 and 3600 seconds")
        list_url = revocations_url(self)
        if list_url is not None:
            self._check_url(list_url, "refusing to send the client secret to")
        plaintext = self.token_service_ca is None and not self.insecure_token_service
        if self.client_id is not None and list_url is None and plaintext and not is_loopback(host):
            raise ConfigurationError(
                f"refusing to send the client secret to {self.token_service} in plaintext: "
                "give --token-service-ca, or --insecure-token-service inside a trusted mesh"
            )
        if self.revocations_fail_closed and self.client_id is None:
            raise ConfigurationError("--revocations-fail-closed needs the list: give --client-id")
        if not math.isfinite(self.revocations_max_staleness) or self.revocations_max_staleness <= 0:
            raise ConfigurationError("--revocations-max-staleness must be a positive number of seconds")
        if not math.isfinite(self.jwks_max_age) or self.jwks_max_age <= 0:
            raise ConfigurationError("--jwks-max-age must be a positive number of seconds")
        staleness = self.jwks_max_staleness
        if staleness is not None and (
            not math.isfinite(staleness) or staleness < 0 or 0 < staleness <= self.jwks_max_age
        ):
            raise ConfigurationError(
                f"--jwks-max-staleness must be more than --jwks-max-age ({self.jwks_max_age:g}s), "
                "or 0 to stay ready with keys of any age"
            )
        if not 0 <= self.leeway <= 300:
            raise ConfigurationError("--leeway must be between 0 and 300 seconds")
        if not self.issuer or not self.audience:
            raise ConfigurationError("--issuer and --audience are required")


@dataclass
class RunningPayments:
    server: grpc.aio.Server
    port: int
    health: HealthServicer
    store: SqlPaymentStore
    verifier: TokenVerifier
    http: serving.HttpListener | None = None
    metrics: ServerMetrics | None = None  # what /metrics shows (--metrics-listen)
    management: serving.HttpListener | None = None  # /metrics, /livez, /readyz
    health_task: asyncio.Task[None] | None = None  # keeps gRPC health in step with /readyz

    @property
    def http_port(self) -> int:
        if self.http is None:
            raise LookupError("no HTTP listener: give --http-listen")
        return self.http.port

    @property
    def metrics_port(self) -> int:
        if self.management is None:
            raise LookupError("no management listener: give --metrics-listen")
        return self.management.port

    async def stop(self, grace: float | None) -> None:
        """NOT_SERVING, then both listeners drain at once (HTTP within the grace period given at
        start-up), then the verifier and the store close."""
        await self.health.enter_graceful_shutdown()
        if self.health_task is not None:
            self.health_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.health_task
        listeners = [h.stop() for h in (self.http, self.management) if h is not None]
        await asyncio.gather(self.server.stop(grace), *listeners)
        self.verifier.close()
        self.store.close()


def key_source(config: PaymentsConfig) -> str:
    """Where the signing keys come from, for log lines."""
    return config.jwks_url or config.token_service


def revocations_url(config: PaymentsConfig) -> str | None:
    """Where the revocation list is polled over HTTP: ``revocations_url`` if given; else, with a
    client registration and keys from a ``jwks_url``, beside it: the jwks_uri's
    ``/.well-known/jwks.json`` replaced by ``/oauth2/revocations`` (so an issuer with a path keeps
    it), or the origin + ``/oauth2/revocations`` for another jwks path; None when the list comes
    from WatchRevocations on ``token_service`` (or not at all)."""
    if config.client_id is None:
        return None
    if config.revocations_url is not None:
        return config.revocations_url
    if config.jwks_url is None:
        return None
    url = urlsplit(config.jwks_url)
    prefix = (
        url.path.removesuffix("/.well-known/jwks.json") if url.path.endswith("/.well-known/jwks.json") else ""
    )
    return f"{url.scheme}://{url.netloc}{prefix}/oauth2/revocations"


def build_verifier(config: PaymentsConfig) -> TokenVerifier:
    """Keys from the jwks_uri or the TokenService; the revocation list, when the config has the
    resource server's own client registration, polled over HTTP beside a jwks_uri (or at
    ``revocations_url``), else from the TokenService's WatchRevocations."""

    def credentials() -> grpc.ChannelCredentials | None:
        if config.token_service_ca is None:
            return None
        return grpc.ssl_channel_credentials(root_certificates=config.token_service_ca.read_bytes())

    if config.jwks_url is not None:
        http = HttpJwksSource(
            config.jwks_url, ca_file=config.token_service_ca, allow_plaintext=config.insecure_token_service
        )
        cache = JwksCache(http, max_age=config.jwks_max_age, cooldown=config.jwks_cooldown)
    else:
        source = GrpcJwksSource(
            config.token_service, credentials=credentials(), allow_plaintext=config.insecure_token_service
        )
        cache = JwksCache(source, max_age=config.jwks_max_age, cooldown=config.jwks_cooldown)
    revocations = None
    list_url = revocations_url(config)
    if list_url is not None and config.client_id is not None and config.client_secret is not None:
        revocations = RevocationCache(
            HttpRevocationSource(
                list_url,
                client_id=config.client_id,
                client_secret=config.client_secret,
                poll_interval=config.revocations_poll_interval,
                ca_file=config.token_service_ca if list_url.startswith("https:") else None,
                allow_plaintext=config.insecure_token_service,
            ),
            max_staleness=config.revocations_max_staleness,
            fail_closed=config.revocations_fail_closed,
        )
    elif config.client_id is not None and config.client_secret is not None:
        revocations = RevocationCache(
            GrpcRevocationSource(
                config.token_service,
                client_id=config.client_id,
                client_secret=config.client_secret,
                credentials=credentials(),
                allow_plaintext=config.insecure_token_service,
            ),
            max_staleness=config.revocations_max_staleness,
            fail_closed=config.revocations_fail_closed,
        )
    return TokenVerifier(
        issuer=config.issuer,
        audience=config.audience,
        jwks=cache,
        leeway=config.leeway,
        revocations=revocations,
    )


def open_store(config: PaymentsConfig) -> SqlPaymentStore:
    """The PostgreSQL store at ``config.database_url`` if one is given, else the data directory's
    SQLite store (the directory is created, mode 0700, if needed). Migrates the schema."""
    if config.database_url:
        # psycopg only when asked for
        from payments_svc.store_postgres import PostgresPaymentStore, redact_url  # noqa: PLC0415

        store: SqlPaymentStore = PostgresPaymentStore(config.database_url, timeout=config.database_timeout)
        log.info("payments in PostgreSQL at %s", redact_url(config.database_url))
        return store
    config.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    log.info("payments in SQLite at %s", config.data_dir / DB_FILE)
    return PaymentStore(config.data_dir / DB_FILE)


async def start_server(config: PaymentsConfig, *, verifier: TokenVerifier | None = None) -> RunningPayments:
    store = await asyncio.to_thread(open_store, config)
    try:
        return await _start(config, store, verifier)
    except BaseException:
        store.close()
        raise


async def _start(
    config: PaymentsConfig, store: SqlPaymentStore, verifier: TokenVerifier | None
) -> RunningPayments:
    verifier = verifier or build_verifier(config)
    keys_ok, _ = await asyncio.gather(asyncio.to_thread(verifier.keys.refresh), _first_revocations(verifier))
    if keys_ok:
        log.info("fetched %d signing keys from %s", len(verifier.keys.kids), key_source(config))
    else:
        log.warning(
            "could not fetch signing keys from %s yet; requests fail with UNAVAILABLE until it answers",
            key_source(config),
        )
    metrics = ServerMetrics() if config.metrics_listen is not None else None
    if metrics is not None:  # verifications, key set and revocation list on /metrics
        metrics.watch_verifier(verifier)
    server = serving.new_server(
        limits=config.limits,
        max_message_bytes=config.max_message_bytes,
        max_metadata_bytes=config.max_metadata_bytes,
        # metrics first: the calls authentication refuses are counted with their codes
        interceptors=[*([] if metrics is None else [metrics.interceptor]), AioAuthInterceptor(verifier)],
    )
    operations = PaymentOperations(store, clock=SystemClock(), random=SystemRandom())
    payments_pb2_grpc.add_PaymentServiceServicer_to_server(PaymentServicer(operations), server)
    health = serving.add_health_and_reflection(server, [PAYMENT_SERVICE])
    try:
        port = serving.bind(
            server,
            config.listen,
            tls_cert=config.tls_cert,
            tls_key=config.tls_key,
            client_ca=config.client_ca,
        )
        await server.start()
    except BaseException:
        await server.stop(None)  # else its loop-bound parts complain at interpreter exit
        raise
    http = None
    if config.http_listen is not None:
        try:
            http = await _start_http(config, operations, verifier, metrics)
        except BaseException:
            await server.stop(0)
            raise
    readiness = _readiness(verifier, config.jwks_staleness_bound)
    management = None
    if metrics is not None and config.metrics_listen is not None:
        try:
            management = await serving.start_management(
                config.metrics_listen, metrics.registry, readiness, grace=config.grace_period
            )
        except BaseException as exc:
            await asyncio.gather(server.stop(0), *([http.stop()] if http is not None else []))
            if isinstance(exc, OSError):
                raise ConfigurationError(
                    f"cannot listen on {config.metrics_listen}: {exc.strerror or exc}; choose another "
                    "--metrics-listen"
                ) from None
            raise
    if readiness() is None:  # else NOT_SERVING until the health task sees a key set
        await serving.serving(health, [PAYMENT_SERVICE])
    health_task = asyncio.get_running_loop().create_task(
        serving.track_health(
            health,
            [PAYMENT_SERVICE],
            readiness,
            while_not_ready=_refetch(verifier, config.jwks_cooldown),
            while_ready=verifier.keys.refresh_if_due,
        ),
        name="payments-health",
    )
    log.info(
        "PaymentService listening on %s (%s), issuer %s, audience %s%s",
        serving.describe(config.listen, port),
        _transport(config, required=True),
        config.issuer,
        config.audience,
        ""
        if management is None
        else f", metrics on {_address(config.metrics_listen or '', management.port)}",
    )
    if http is not None and config.http_listen is not None:
        log.info(
            "PaymentService HTTP/JSON API on %s (%s)",
            config.http_listen
            if config.http_listen.startswith("unix:")
            else serving.describe(config.http_listen, http.port),
            _transport(config, required=False),
        )
    return RunningPayments(server, port, health, store, verifier, http, metrics, management, health_task)


def _transport(config: PaymentsConfig, *, required: bool) -> str:
    """How a listener is secured, for the start-up log line."""
    if config.tls_cert is None:
        return "plaintext"
    if config.client_ca is None:
        return "TLS"
    return "mutual TLS, client certificate " + ("required" if required else "requested")


def _readiness(verifier: TokenVerifier, max_staleness: float | None) -> serving.Readiness:
    """Ready while the verifier holds a key set (without one every call could only be refused)
    that was known to be the issuer's current one at most ``max_staleness`` seconds ago (older,
    it may lack a key that signs by now: traffic is better sent to a replica that can reach the
    issuer). Stale keys still verify: readiness steers traffic, it refuses nothing."""
    stale = False

    def reason() -> str | None:
        nonlocal stale
        age = verifier.keys.age()
        if age is None:
            return "no signing keys fetched from the issuer yet"
        now_stale = max_staleness is not None and age > max_staleness
        if now_stale != stale:
            stale = now_stale
            if stale:
                log.warning(
                    "signing keys not refreshed for over %gs: not ready (still verifying with the "
                    "%d cached keys) until the issuer answers",
                    max_staleness,
                    len(verifier.keys.kids),
                )
            else:
                log.info("signing keys refreshed from the issuer: ready again")
        if now_stale:
            return f"signing keys not refreshed from the issuer for {age:.0f}s (bound {max_staleness:g}s)"
        return None

    return reason


def _address(listen: str, port: int) -> str:
    return listen if listen.startswith("unix:") else serving.describe(listen, port)


def _refetch(verifier: TokenVerifier, cooldown: float) -> Callable[[], None]:
    """While no key set is held, or it is stale, try a fetch again at most once per ``cooldown``
    (no request may come to trigger one: a not-ready instance gets no traffic)."""
    last = time.monotonic()

    def again() -> None:
        nonlocal last
        now = time.monotonic()
        if now - last >= cooldown:
            last = now
            threading.Thread(target=verifier.keys.refresh, name="payments-jwks-retry", daemon=True).start()

    return again


async def _first_revocations(verifier: TokenVerifier) -> None:
    """Wait (bounded) for the first snapshot of the revocation list, and say how verification
    stands: without a list, with it, or waiting for it."""
    revocations = verifier.revocations
    if revocations is None:
        log.warning(
            "no --client-id/--client-secret-file: verifying tokens WITHOUT the revocation list; "
            "a revoked token or a disabled client's token is accepted until it expires"
        )
        return
    if await asyncio.to_thread(revocations.wait_for, 0, REVOCATIONS_WAIT):
        log.info(
            "revocation list: %d entries (sequence %d); %s after %gs without a working stream",
            len(revocations.revocations),
            revocations.sequence,
            "fail closed" if revocations.fail_closed else "fail open",
            revocations.max_staleness,
        )
    else:
        log.warning(
            "could not read the revocation list yet; %s until it arrives",
            "requests fail with UNAVAILABLE" if revocations.fail_closed else "verifying without it",
        )


async def _start_http(
    config: PaymentsConfig,
    operations: PaymentOperations,
    verifier: TokenVerifier,
    metrics: ServerMetrics | None = None,
) -> serving.HttpListener:
    assert config.http_listen is not None
    from payments_svc.http import build_http_app  # noqa: PLC0415 - aiohttp only when HTTP is served

    app = build_http_app(
        payments_pb2.DESCRIPTOR.services_by_name["PaymentService"],
        operations,
        verifier,
        max_body_bytes=config.max_message_bytes,
    )
    if metrics is not None:
        metrics.instrument_http(app)
    return await serving.start_http(
        app,
        config.http_listen,
        tls_cert=config.tls_cert,
        tls_key=config.tls_key,
        grace=config.grace_period,
        # aiohttp can ask without requiring: callers without a certificate keep unbound tokens
        client_ca=config.client_ca,
        require_client_cert=False,
    )


async def serve(config: PaymentsConfig) -> None:
    stopping = stop_signal()  # before start-up: a SIGTERM during it stops gracefully after it
    running = await start_server(config)
    await stopping.wait()
    log.info("shutting down (grace %.1fs)", config.grace_period)
    await running.stop(config.grace_period)
    log.info("stopped")
