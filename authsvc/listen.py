"""Listen addresses, the rule that plaintext stays on loopback, and the connection limits, shared by
every server command (the TokenService and services built on authsvc.verify)."""

from __future__ import annotations

import argparse
import asyncio
import errno
import ipaddress
import os
import re
import signal
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

from authsvc.core.errors import ConfigurationError

__all__ = [
    "CommandParser",
    "ConnectionLimits",
    "add_connection_limit_flags",
    "check_client_ca",
    "check_data_dir",
    "check_listen",
    "check_plaintext",
    "check_readable_file",
    "connection_limits_from",
    "is_loopback",
    "is_unix",
    "positive",
    "split_host_port",
    "startup_failure",
    "stop_signal",
    "wait_for_stop_signal",
]

_MAX_MS = 2**31 - 1  # grpc's channel args are C ints


@dataclass(frozen=True)
class ConnectionLimits:
    """What any caller, before authenticating, can make a gRPC server hold; validated, frozen.

    - ``handshake_timeout`` (s): a connection that has not finished its TLS and HTTP/2 handshake
      (the client's SETTINGS frame) by then is closed (``grpc.server_handshake_timeout_ms``;
      grpc's own default is 120 s).
    - ``max_connections``: connections open at once per process; one more is closed as soon as it
      is accepted (``grpc.max_allowed_incoming_connections``). Keep it below the process's file
      descriptor limit, so that a flood of connections cannot starve the store of descriptors.
    - ``max_streams_per_connection``: HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS
      (``grpc.max_concurrent_streams``). A client queues calls beyond it once it has the server's
      SETTINGS, but a burst on a new connection that exceeds it gets some calls refused
      (UNAVAILABLE): keep it at least as large as the bursts real clients send on one channel.
    - ``max_concurrent_rpcs``: RPCs in progress at once in the process; one more is answered
      RESOURCE_EXHAUSTED by grpc itself (``maximum_concurrent_rpcs`` of ``grpc.aio.server``).
    - ``max_connection_idle`` (s): a connection with no RPC for that long is closed with GOAWAY
      (``grpc.max_connection_idle_ms``); clients reconnect transparently.
    """

    handshake_timeout: float = 10.0
    max_connections: int = 1000
    max_streams_per_connection: int = 1000
    max_concurrent_rpcs: int = 1000
    max_connection_idle: float = 300.0

    def __post_init__(self) -> None:
        if not 0 < self.handshake_timeout <= 300:
            raise ConfigurationError("--handshake-timeout must be between 0 and 300 seconds")
        if not 0 < self.max_connection_idle <= _MAX_MS / 1000:
            raise ConfigurationError("--max-connection-idle must be a positive number of seconds")
        for flag, value in (
            ("--max-connections", self.max_connections),
            ("--max-streams-per-connection", self.max_streams_per_connection),
            ("--max-concurrent-rpcs", self.max_concurrent_rpcs),
        ):
            if not 1 <= value <= _MAX_MS:
                raise ConfigurationError(f"{flag} must be a positive whole number")

    def grpc_options(self) -> list[tuple[str, int]]:
        """The channel arguments for ``grpc.aio.server(options=...)``."""
        return [
            ("grpc.server_handshake_timeout_ms", max(1, round(self.handshake_timeout * 1000))),
            ("grpc.max_allowed_incoming_connections", self.max_connections),
            ("grpc.max_concurrent_streams", self.max_streams_per_connection),
            ("grpc.max_connection_idle_ms", max(1, round(self.max_connection_idle * 1000))),
        ]


def positive(kind: Callable[[str], float | int]) -> Callable[[str], float | int]:
    """An argparse ``type`` that accepts only a positive ``kind`` (``int`` or ``float``)."""

    def parse(text: str) -> float | int:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"{text!r} is not positive")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


def add_connection_limit_flags(parser: argparse.ArgumentParser, env: Mapping[str, str], prefix: str) -> None:
    """Add the :class:`ConnectionLimits` flags to a ``serve`` parser, each with a ``{prefix}*``
    environment variable (``AUTHSVC_``, ``PAYMENTS_``). A malformed value, from either, is a
    usage error naming the flag."""
    d = ConnectionLimits()
    for flag, var, default, kind, text in (
        ("--handshake-timeout", "HANDSHAKE_TIMEOUT", d.handshake_timeout, float,
         "seconds a new connection has to finish its TLS and HTTP/2 handshake"),
        ("--max-connections", "MAX_CONNECTIONS", d.max_connections, int,
         "connections open at once (per process); more are closed at once"),
        ("--max-streams-per-connection", "MAX_STREAMS_PER_CONNECTION", d.max_streams_per_connection, int,
         "concurrent HTTP/2 streams one connection may open"),
        ("--max-concurrent-rpcs", "MAX_CONCURRENT_RPCS", d.max_concurrent_rpcs, int,
         "RPCs in progress at once (per process); more get RESOURCE_EXHAUSTED"),
        ("--max-connection-idle", "MAX_CONNECTION_IDLE", d.max_connection_idle, float,
         "seconds a connection with no RPC stays open"),
    ):  # fmt: skip
        shown = f"{default:g}" if isinstance(default, float) else str(default)
        parser.add_argument(
            flag,
            type=positive(kind),
            default=env.get(prefix + var) or shown,
            help=f"{text} [env {prefix}{var}; default {shown}]",
        )


def connection_limits_from(args: argparse.Namespace) -> ConnectionLimits:
    """The :class:`ConnectionLimits` of parsed :func:`add_connection_limit_flags` flags."""
    return ConnectionLimits(
        handshake_timeout=float(args.handshake_timeout),
        max_connections=int(args.max_connections),
        max_streams_per_connection=int(args.max_streams_per_connection),
        max_concurrent_rpcs=int(args.max_concurrent_rpcs),
        max_connection_idle=float(args.max_connection_idle),
    )


class CommandParser(argparse.ArgumentParser):
    """The parser of every command and subcommand: no abbreviated flags (``--client-ca`` must not
    quietly mean ``--client-cache-ttl``), a mistake answered on one line, and a word that begins
    with ``-`` but is no flag of the command (a key id can, ``keys revoke -abc``) taken as a
    positional. Subparsers made with ``add_subparsers`` are of this class too."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")

    if sys.version_info >= (3, 12):

        def _parse_optional(
            self, arg_string: str
        ) -> list[tuple[argparse.Action | None, str, str | None, str | None]] | None:
            found = super()._parse_optional(arg_string)
            return None if found is not None and all(t[0] is None for t in found) else found

    else:

        def _parse_optional(self, arg_string: str) -> tuple[argparse.Action | None, str, str | None] | None:
            found = super()._parse_optional(arg_string)
            return None if found is not None and found[0] is None else found


def is_unix(address: str) -> bool:
    """``unix:PATH``: a Unix domain socket (grpc and the HTTP edge take it as is)."""
    return address.startswith("unix:")


def check_listen(address: str, flag: str) -> None:
    """``HOST:PORT``, ``[IPv6]:PORT`` or ``unix:PATH``, else a ConfigurationError naming ``flag``."""
    if is_unix(address):
        if not address.removeprefix("unix:").strip():
            raise ConfigurationError(f"{flag} {address!r} names no socket path: give unix:PATH")
        return
    try:
        split_host_port(address)
    except ConfigurationError:
        raise ConfigurationError(
            f"{flag} {address!r} is not HOST:PORT (or unix:PATH), e.g. 127.0.0.1:50051"
        ) from None


def check_readable_file(path: Path, flag: str) -> None:
    """ConfigurationError naming ``flag`` unless ``path`` is a file this process can read."""
    try:
        with path.open("rb"):
            pass
    except IsADirectoryError:
        raise ConfigurationError(f"{flag} {path} is a directory: give the file itself") from None
    except OSError as exc:
        raise ConfigurationError(
            f"cannot read {flag} {path}: {exc.strerror or exc}; give a file this user can read"
        ) from None


def check_client_ca(path: Path, flag: str = "--client-ca") -> bytes:
    """The PEM bytes of a client-CA file (mutual TLS), after checking that this process can read
    it and that it holds at least one CA certificate, none of them unparsable; else a
    ConfigurationError naming ``flag``, on one line. grpc itself would only fail later, at the
    first handshake or with an opaque error at start-up."""
    check_readable_file(path, flag)
    data = path.read_bytes()
    from cryptography import x509  # noqa: PLC0415 - only the commands that serve need it

    try:
        certificates = x509.load_pem_x509_certificates(data)
    except ValueError:
        certificates = []
    if not certificates:
        raise ConfigurationError(
            f"{flag} {path} holds no PEM certificate: give the CA certificate(s) that issue client "
            "certificates, -----BEGIN CERTIFICATE----- blocks"
        )
    for cert in certificates:
        try:
            ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        except x509.ExtensionNotFound:
            ca = False
        if not ca:
            raise ConfigurationError(
                f"{flag} {path} holds a certificate that is not a CA ({cert.subject.rfc4514_string()}): "
                "give the CA that issues client certificates, not a client certificate"
            )
    return data


def check_data_dir(path: Path, flag: str) -> None:
    """ConfigurationError naming ``flag`` unless ``path`` is a writable directory or can be made
    one (its nearest existing ancestor is a writable directory). Creates nothing."""
    if path.exists() and not path.is_dir():
        raise ConfigurationError(f"{flag} {path} is a file, not a directory: give a directory")
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigurationError(f"cannot create {flag} {path}: {existing} is a file; give another directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        what = f"{flag} {path}" if existing == path else f"{existing}, where {flag} {path} would be created,"
        raise ConfigurationError(f"{what} is not writable by this user: give a directory it can write")


_GRPC_BIND = re.compile(r"Failed to bind to address (\S+?);")


def startup_failure(exc: BaseException, *, grpc_flag: str, http_flag: str) -> str | None:
    """One line saying what to do for a listener that could not start, or an OS error at start-up;
    None for anything else. grpc reports a failed bind as a RuntimeError naming the address."""
    if isinstance(exc, RuntimeError) and (m := _GRPC_BIND.search(str(exc))):
        return (
            f"cannot listen on {m.group(1)}: the address is in use or not available here; stop what "
            f"holds it or choose another {grpc_flag}"
        )
    if not isinstance(exc, OSError):
        return None
    if exc.errno in (errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.EACCES) and exc.filename is None:
        # aiohttp: "error while attempting to bind on address ('127.0.0.1', 8080): address already in use"
        return f"cannot listen for HTTP: {exc.strerror or exc}; choose another {http_flag}"
    if exc.filename is not None:
        return f"cannot use {exc.filename}: {exc.strerror or exc}"
    return f"{exc.strerror or exc}"


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
    is in front. A Unix domain socket (``unix:PATH``) never leaves the machine."""
    if is_unix(listen):
        return
    host, _ = split_host_port(listen)
    if not tls and not insecure and not is_loopback(host):
        raise ConfigurationError(
            f"refusing to listen on {listen} without TLS: give --tls-cert and --tls-key, "
            "or pass --insecure if something in front of this process terminates TLS"
        )


def stop_signal() -> asyncio.Event:
    """An event set when the process receives SIGTERM or SIGINT, the handlers installed now, on
    the running loop. Call it before start-up: a signal that arrives while the server starts (once
    it has logged where it listens, a supervisor may send one) then means a graceful shutdown
    right after, instead of the default action, which kills the process mid-start."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop


async def wait_for_stop_signal() -> None:
    """Return when the process receives SIGTERM or SIGINT (graceful shutdown follows)."""
    await stop_signal().wait()
