"""The TokenService's configuration: a validated, frozen value built once at start-up.

The command line (:mod:`authsvc.cli`) builds it from flags and ``AUTHSVC_*`` environment
variables; nothing below it reads the environment.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from authsvc.authority.ratelimit import DEFAULT_FAILED_AUTH_LIMIT, DEFAULT_REDIS_PREFIX, check_redis_url
from authsvc.core.client_assertion import DEFAULT_ASSERTION_MAX_LIFETIME
from authsvc.core.clients import MAX_TOKEN_TTL
from authsvc.core.errors import ConfigurationError
from authsvc.core.lifecycle import DEFAULT_JWKS_MAX_AGE, DEFAULT_KEY_PUBLISH_DELAY, LifecyclePolicy
from authsvc.core.ratelimit import RateLimit
from authsvc.listen import ConnectionLimits, check_listen, check_plaintext, is_unix, split_host_port
from authsvc.server.cpus import usable_cpus

__all__ = [
    "DEFAULT_ISSUER",
    "DEFAULT_JWKS_MAX_AGE",
    "DEFAULT_KEY_PUBLISH_DELAY",
    "DEFAULT_LISTEN",
    "ServeConfig",
]

DEFAULT_LISTEN = "127.0.0.1:50051"
DEFAULT_ISSUER = "https://authsvc.local"


@dataclass(frozen=True)
class ServeConfig:
    """Settings of ``authsvc serve``. ``kek`` is secret and never shown by ``repr``."""

    data_dir: Path
    listen: str = DEFAULT_LISTEN
    http_listen: str | None = None  # the OAuth endpoints over HTTP, beside gRPC (authsvc.http)
    # /metrics, /livez, /readyz on a plaintext management port (authsvc.serving.start_management)
    metrics_listen: str | None = None
    issuer: str = DEFAULT_ISSUER
    tls_cert: Path | None = None
    tls_key: Path | None = None
    insecure: bool = False
    # RFC 8705 mutual TLS: listeners that require a client certificate issued by client_ca (grpc
    # asks for one only when it requires it, so each is its own port); tokens issued there are
    # bound to the certificate
    mtls_listen: str | None = None
    mtls_http_listen: str | None = None
    client_ca: Path | None = None
    mtls_base_url: str | None = None  # the public origin of mtls_http_listen (mtls_endpoint_aliases)
    kek: str | None = field(default=None, repr=False)  # one KEK, or several comma-separated
    kek_file: Path | tuple[Path, ...] | None = None  # one KEK file, or several: the first encrypts
    # processes sharing the ports; None: one per usable CPU (see worker_count), an int: exactly that
    workers: int | None = None
    cpus: int = field(default_factory=usable_cpus)  # what None means: the CPUs this process may use
    database_url: str | None = field(default=None, repr=False)
    client_cache_ttl: float = 2.0
    grace_period: float = 5.0
    max_message_bytes: int = 64 * 1024
    max_metadata_bytes: int = 16 * 1024
    key_publish_delay: int = DEFAULT_KEY_PUBLISH_DELAY
    key_rotation_period: int | None = None
    jwks_max_age: int = DEFAULT_JWKS_MAX_AGE
    key_tick_interval: float = 1.0
    # resource limits: what an unauthenticated caller can hold (README "Limits")
    limits: ConnectionLimits = field(default_factory=ConnectionLimits)
    watch_streams_per_peer: int = 8
    watch_streams_total: int = 256
    refusal_log_rate: float = 10.0  # "token refused" lines per second, bursts of twice that
    # private_key_jwt (RFC 7523): how far ahead an assertion's exp may be; whether its aud may be the
    # token endpoint URL rather than the issuer; where the keys of jwks_uri clients may be fetched
    client_assertion_max_lifetime: int = DEFAULT_ASSERTION_MAX_LIFETIME
    accept_token_endpoint_audience: bool = False
    client_jwks_allow_internal: bool = False
    client_jwks_ca_file: Path | None = None
    # rate limits (README "Rate limits"); None is off
    client_rate_limit: RateLimit | None = None
    peer_rate_limit: RateLimit | None = None
    failed_auth_limit: RateLimit | None = DEFAULT_FAILED_AUTH_LIMIT
    redis_url: str | None = field(default=None, repr=False)  # may hold a password
    redis_key_prefix: str = DEFAULT_REDIS_PREFIX

    def __post_init__(self) -> None:
        check_listen(self.listen, "--listen")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigurationError("--tls-cert and --tls-key go together")
        check_plaintext(self.listen, tls=self.tls_cert is not None, insecure=self.insecure)
        if self.http_listen is not None:
            check_listen(self.http_listen, "--http-listen")
            check_plaintext(self.http_listen, tls=self.tls_cert is not None, insecure=self.insecure)
        self._check_mtls()
        if self.metrics_listen is not None:
            # plaintext on any address: probes and Prometheus scrape in plaintext, and it serves
            # no secret
            check_listen(self.metrics_listen, "--metrics-listen")
        if self.database_url is not None and not self.database_url.strip():
            raise ConfigurationError(
                "--database-url is empty: give a postgresql:// URL, or leave it out for SQLite in the "
                "data dir"
            )
        if not self.issuer or any(c.isspace() for c in self.issuer):
            raise ConfigurationError("the issuer must be a URL without spaces")
        issuer = urlsplit(self.issuer)
        if issuer.scheme not in ("https", "http") or not issuer.netloc or issuer.query or issuer.fragment:
            # RFC 8414 §2: an https URL without query or fragment; http only for local development
            raise ConfigurationError("the issuer must be an https:// URL without query or fragment")
        if self.workers is not None and self.workers < 1:
            raise ConfigurationError("--workers must be at least 1")
        if self.cpus < 1:
            raise ConfigurationError("the usable CPU count must be at least 1")
        if self.workers is not None and self.workers > 1:
            # several processes share each port (SO_REUSEPORT): each must be a fixed TCP port
            for flag, address in self.listeners:
                if is_unix(address):
                    raise ConfigurationError(
                        f"several workers share each port: give {flag} a fixed HOST:PORT, not unix:"
                    )
                if split_host_port(address)[1] == 0:
                    raise ConfigurationError(
                        f"several workers share each port: give {flag} a fixed HOST:PORT, not port 0"
                    )
        if self.jwks_max_age <= 0:
            raise ConfigurationError("the JWKS max age must be positive")
        if self.key_publish_delay < self.jwks_max_age:
            raise ConfigurationError(
                f"--key-publish-delay ({self.key_publish_delay}s) must be at least the JWKS max age "
                f"({self.jwks_max_age}s): polling verifiers would meet tokens signed by unseen keys"
            )
        if self.key_rotation_period is not None and self.key_rotation_period <= self.key_publish_delay:
            raise ConfigurationError("--key-rotation-period must be longer than --key-publish-delay")
        if not 0 < self.client_cache_ttl <= 5:
            raise ConfigurationError("the client cache lifetime must be between 0 and 5 seconds")
        if not 1 <= self.watch_streams_per_peer <= self.watch_streams_total:
            raise ConfigurationError("--watch-streams-per-peer must be between 1 and --watch-streams-total")
        if self.watch_streams_total >= self.limits.max_concurrent_rpcs:
            raise ConfigurationError(
                "--watch-streams-total must be below --max-concurrent-rpcs, or key watches could take "
                "every RPC slot from token requests"
            )
        if not 0 < self.refusal_log_rate <= 10_000:
            raise ConfigurationError("--refusal-log-rate must be between 0 and 10000 lines per second")
        if not 10 <= self.client_assertion_max_lifetime <= 3600:
            raise ConfigurationError("--client-assertion-max-lifetime must be between 10 and 3600 seconds")
        if self.redis_url is not None:
            check_redis_url(self.redis_url)
        if not re.fullmatch(r"[!-~]{1,64}", self.redis_key_prefix):
            raise ConfigurationError(
                "--redis-key-prefix must be 1 to 64 printable ASCII characters, no space"
            )

    def _check_mtls(self) -> None:
        listeners = [
            (flag, address)
            for flag, address in (
                ("--mtls-listen", self.mtls_listen),
                ("--mtls-http-listen", self.mtls_http_listen),
            )
            if address is not None
        ]
        if self.client_ca is not None and not listeners:
            raise ConfigurationError(
                "--client-ca is used by --mtls-listen (or --mtls-http-listen) only: give one of them, or "
                "leave --client-ca out"
            )
        if self.mtls_base_url is not None and self.mtls_http_listen is None:
            raise ConfigurationError("--mtls-base-url names where --mtls-http-listen is reached: give both")
        taken = {self.listen: "--listen", **({self.http_listen: "--http-listen"} if self.http_listen else {})}
        for flag, address in listeners:
            check_listen(address, flag)
            if self.client_ca is None:
                raise ConfigurationError(
                    f"{flag} needs --client-ca FILE: the CA whose client certificates it accepts"
                )
            if self.tls_cert is None:
                raise ConfigurationError(
                    f"{flag} needs --tls-cert and --tls-key: mutual TLS is TLS with a certificate on "
                    "both sides"
                )
            if address in taken and _port(address) != 0:
                raise ConfigurationError(f"{flag} {address} is also {taken[address]}: give each its own port")
            taken[address] = flag
        if self.mtls_base_url is not None:
            url = urlsplit(self.mtls_base_url)
            if (
                url.scheme != "https"
                or not url.netloc
                or url.path not in ("", "/")
                or url.query
                or url.fragment
            ):
                raise ConfigurationError(
                    "--mtls-base-url must be an https:// origin without path, query or fragment, e.g. "
                    "https://mtls.auth.example:8443 (the issuer's path is added to it)"
                )

    @property
    def listeners(self) -> list[tuple[str, str]]:
        """Each configured listener as (its flag, its address)."""
        return [
            (flag, address)
            for flag, address in (
                ("--listen", self.listen),
                ("--http-listen", self.http_listen),
                ("--mtls-listen", self.mtls_listen),
                ("--mtls-http-listen", self.mtls_http_listen),
                ("--metrics-listen", self.metrics_listen),
            )
            if address is not None
        ]

    @property
    def unshareable_listener(self) -> str | None:
        """The flag of a listener that several processes cannot share (port 0: each would get its
        own port; unix:PATH), or None."""
        for flag, address in self.listeners:
            if is_unix(address) or split_host_port(address)[1] == 0:
                return flag
        return None

    @property
    def worker_count(self) -> int:
        """How many processes serve: ``workers`` when given; by default one per usable CPU
        (:func:`~authsvc.server.cpus.usable_cpus`), or one when a listener cannot be shared
        (:attr:`worker_note` says why)."""
        if self.workers is not None:
            return self.workers
        return 1 if self.unshareable_listener is not None else self.cpus

    @property
    def worker_note(self) -> str | None:
        """Why the default gave fewer workers than CPUs, for the start-up log; None otherwise."""
        flag = self.unshareable_listener
        if self.workers is not None or self.cpus == 1 or flag is None:
            return None
        return (
            f"one worker, not {self.cpus}: {flag} is port 0 or unix:, which several processes cannot "
            "share; give it a fixed HOST:PORT to use every CPU (or --workers 1 to say so)"
        )

    def lifecycle_policy(self) -> LifecyclePolicy:
        # every server publishes what it read at its last key tick: a key stored now is in every
        # replica's JWKS within one tick, so it signs one tick later to be published the full delay
        return LifecyclePolicy(
            publish_delay=self.key_publish_delay + math.ceil(self.key_tick_interval),
            max_token_lifetime=MAX_TOKEN_TTL,
            rotation_period=self.key_rotation_period,
        )

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None

    @property
    def mtls(self) -> bool:
        """Some listener accepts client certificates: tokens issued there are certificate-bound."""
        return self.mtls_listen is not None or self.mtls_http_listen is not None

    @property
    def token_endpoint(self) -> str:
        """The token endpoint's URL as the HTTP edge serves it and the metadata names it
        (``authsvc.http.oauth``): the issuer's URL and ``/oauth2/token``."""
        return self.issuer.rstrip("/") + "/oauth2/token"


def _port(address: str) -> int | None:
    """The port of ``HOST:PORT``; None for ``unix:PATH``."""
    return None if is_unix(address) else split_host_port(address)[1]
