"""Listen addresses and the rule that plaintext stays on loopback, shared by every server command
(the TokenService and services built on authsvc.verify)."""

from __future__ import annotations

import asyncio
import ipaddress
import signal

from authsvc.core.errors import ConfigurationError

__all__ = ["check_plaintext", "is_loopback", "split_host_port", "wait_for_stop_signal"]


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


def check_plaintext(listen: str, *, tls: bool, insecure: bool) -> None:
    """Refuse plaintext on a non-loopback address unless ``insecure`` says a TLS-terminating proxy
    is in front."""
    host, _ = split_host_port(listen)
    if not tls and not insecure and not is_loopback(host):
        raise ConfigurationError(
            f"refusing to listen on {listen} without TLS: give --tls-cert and --tls-key, "
            "or pass --insecure if something in front of this process terminates TLS"
        )


async def wait_for_stop_signal() -> None:
    """Return when the process receives SIGTERM or SIGINT (graceful shutdown follows)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
