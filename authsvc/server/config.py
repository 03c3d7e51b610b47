"""The TokenService's configuration: a validated, frozen value built once at start-up.

The command line (:mod:`authsvc.cli`) builds it from flags and ``AUTHSVC_*`` environment
variables; nothing below it reads the environment.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path

from authsvc.core.errors import ConfigurationError

__all__ = ["DEFAULT_ISSUER", "DEFAULT_LISTEN", "ServeConfig", "is_loopback", "split_host_port"]

DEFAULT_LISTEN = "127.0.0.1:50051"
DEFAULT_ISSUER = "https://authsvc.local"


def split_host_port(address: str) -> tuple[str, int]:
    """Split ``HOST:PORT`` or ``[IPv6]:PORT``."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigurationError(f"listen address {address!r} is not HOST:PORT")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class ServeConfig:
    """Settings of ``authsvc serve``. ``kek`` is secret and never shown by ``repr``."""

    data_dir: Path
    listen: str = DEFAULT_LISTEN
    issuer: str = DEFAULT_ISSUER
    tls_cert: Path | None = None
    tls_key: Path | None = None
    insecure: bool = False
    kek: str | None = field(default=None, repr=False)
    kek_file: Path | None = None
    workers: int = 1
    client_cache_ttl: float = 2.0
    grace_period: float = 5.0
    max_message_bytes: int = 64 * 1024
    max_metadata_bytes: int = 16 * 1024

    def __post_init__(self) -> None:
        host, port = split_host_port(self.listen)
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigurationError("--tls-cert and --tls-key go together")
        if self.tls_cert is None and not self.insecure and not is_loopback(host):
            raise ConfigurationError(
                f"refusing to listen on {self.listen} without TLS: give --tls-cert and --tls-key, "
                "or pass --insecure if something in front of this process terminates TLS"
            )
        if not self.issuer or any(c.isspace() for c in self.issuer):
            raise ConfigurationError("the issuer must be a URL without spaces")
        if self.workers < 1:
            raise ConfigurationError("--workers must be at least 1")
        if self.workers > 1 and port == 0:
            raise ConfigurationError("several workers need a fixed port, not port 0")
        if not 0 < self.client_cache_ttl <= 5:
            raise ConfigurationError("the client cache lifetime must be between 0 and 5 seconds")

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None
