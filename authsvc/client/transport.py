"""Which channels may carry a client secret, and the channels the SDK builds to the TokenService.

A client secret sent over plaintext to another host is a leaked secret: anyone on the path (a
proxy, a mirrored port, a compromised router) can replay it and mint tokens (RFC 6749 §2.3.1:
"the authorization server MUST require the use of TLS ... when sending requests using password
authentication"). The SDK therefore sends the secret in plaintext only to a ``unix:`` socket or a
loopback host, and only when it can see the target itself.

``grpc.Channel`` has no public API that tells a channel's target or whether it is encrypted, so
the SDK prefers to build the TokenService channel itself (:func:`token_service_channel`, used by
``ClientCredentials.for_target``). For a channel the caller built, it reads the target through
grpc's internals at best: if that fails, it refuses (fail closed) unless the caller vouches with
``secure=True``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, TypeAlias

import grpc

from authsvc.core.errors import ConfigurationError
from authsvc.listen import is_loopback, split_host_port

__all__ = [
    "PemSource",
    "aio_token_service_channel",
    "channel_target",
    "check_secret_transport",
    "is_local_target",
    "load_pem",
    "loopback_hosts",
    "tls_credentials",
    "token_service_channel",
]

PemSource: TypeAlias = "bytes | str | os.PathLike[str]"
"""PEM material: the bytes themselves, or the path of a file holding them (a ``str`` is a path)."""

# A plaintext channel to loopback must not be routed through an HTTP CONNECT proxy named by
# http_proxy/grpc_proxy in the environment: the proxy would see the secret.
_NO_PROXY = ("grpc.enable_http_proxy", 0)


def loopback_hosts(target: str) -> list[str]:
    """The hosts a gRPC target names (empty for a Unix socket). ``ValueError`` when the target is
    not ``HOST:PORT``, ``dns:///HOST:PORT``, ``ipv4:``/``ipv6:`` addresses, or ``unix:PATH``."""
    if target.startswith(("unix:", "unix-abstract:")):
        return []
    if target.startswith(("ipv4:", "ipv6:")):
        addresses = target.partition(":")[2].split(",")
    else:
        # dns://AUTHORITY/... names a DNS server that could answer anything for "localhost": only
        # the empty authority is understood
        addresses = [target.removeprefix("dns:///")]
    hosts = []
    for address in addresses:
        try:
            host, _ = split_host_port(address)
        except ConfigurationError as exc:
            raise ValueError(f"{target!r} is not HOST:PORT or unix:PATH") from exc
        hosts.append(host)
    return hosts


def is_local_target(target: str) -> bool:
    """True for a ``unix:`` socket or a target whose every address is loopback (``localhost``,
    127.0.0.0/8, ``::1``). Anything else, including what this cannot parse, is not local."""
    try:
        hosts = loopback_hosts(target)
    except ValueError:
        return False
    return all(is_loopback(host) for host in hosts)


def channel_target(channel: object) -> str | None:
    """The target grpc resolved for ``channel`` (e.g. ``dns:///127.0.0.1:50051``), or None.

    Best effort through grpc's private attributes (``Channel._channel.target()``, also through
    ``grpc.intercept_channel`` wrappers; ``grpc.aio``'s ``Channel._channel.target``): None whenever
    they are not there, which callers treat as "unknown, so not local".
    """
    inner: object = channel
    for _ in range(4):
        inner = getattr(inner, "_channel", None)
        if inner is None:
            return None
        value = getattr(inner, "target", None)
        if callable(value):  # grpc.Channel's core channel: a method; grpc.aio's: an attribute
            try:
                value = value()
            except Exception:
                return None
        if isinstance(value, bytes):
            return value.decode("utf-8", "replace")
        if isinstance(value, str):
            return value
    return None


def check_secret_transport(channel: object, *, secure: bool) -> None:
    """Refuse, before anything is sent, to put a client secret on ``channel`` unless the caller
    says it is encrypted (``secure=True``) or it goes to a loopback or ``unix:`` target.

    ``secure=True`` is the caller's word that the channel uses TLS (``grpc.secure_channel`` with
    ``grpc.ssl_channel_credentials``): the SDK cannot check it, so never pass it for a channel
    made with ``grpc.insecure_channel``.
    """
    if secure:
        return
    target = channel_target(channel)
    if target is not None and is_local_target(target):
        return
    where = f"to {target}" if target is not None else "over a channel whose target the SDK cannot see"
    raise ValueError(
        f"refusing to send the client secret {where}: it may be plaintext. Use "
        "ClientCredentials.for_target(target, root_certificates=...), which uses TLS for any host "
        "but loopback and unix:, or pass secure=True for a TLS channel you built yourself"
    )


def load_pem(source: PemSource | None) -> bytes | None:
    """The PEM bytes of ``source``: itself when bytes, else the file it names, read now."""
    if source is None or isinstance(source, bytes):
        return source
    with open(source, "rb") as file:
        return file.read()


def tls_credentials(
    root_certificates: PemSource | None, private_key: PemSource | None, certificate_chain: PemSource | None
) -> grpc.ChannelCredentials:
    """``grpc.ssl_channel_credentials`` from bytes or files. A client certificate (mutual TLS,
    RFC 8705) needs both its ``certificate_chain`` and its ``private_key``: one without the other
    is refused with ``ValueError`` here, rather than as a failed handshake later."""
    if (private_key is None) != (certificate_chain is None):
        raise ValueError("a client certificate needs both certificate_chain and private_key (mutual TLS)")
    return grpc.ssl_channel_credentials(
        load_pem(root_certificates), load_pem(private_key), load_pem(certificate_chain)
    )


def _channel_credentials(
    target: str,
    *,
    root_certificates: PemSource | None,
    private_key: PemSource | None,
    certificate_chain: PemSource | None,
    channel_credentials: grpc.ChannelCredentials | None,
) -> grpc.ChannelCredentials | None:
    """TLS credentials for the target, or None for plaintext (loopback or unix: only)."""
    tls_material = root_certificates is not None or private_key is not None or certificate_chain is not None
    if channel_credentials is not None:
        if tls_material:
            raise ValueError(
                "pass either channel_credentials or root_certificates/private_key/certificate_chain"
            )
        return channel_credentials
    if tls_material or not is_local_target(target):
        # without root_certificates, gRPC uses the system's trust store
        return tls_credentials(root_certificates, private_key, certificate_chain)
    return None


def token_service_channel(
    target: str,
    *,
    root_certificates: PemSource | None = None,
    private_key: PemSource | None = None,
    certificate_chain: PemSource | None = None,
    channel_credentials: grpc.ChannelCredentials | None = None,
    options: Sequence[tuple[str, Any]] = (),
) -> tuple[grpc.Channel, bool]:
    """A channel to the TokenService and whether it is encrypted: TLS for every host but a
    loopback or ``unix:`` target (system roots unless ``root_certificates``), plaintext there
    unless TLS material or ``channel_credentials`` are given. ``private_key`` and
    ``certificate_chain`` (PEM bytes or files) are the client's certificate, for a mutual-TLS
    port (``authsvc serve --mtls-listen``): the tokens it issues are bound to it."""
    creds = _channel_credentials(
        target,
        root_certificates=root_certificates,
        private_key=private_key,
        certificate_chain=certificate_chain,
        channel_credentials=channel_credentials,
    )
    if creds is None:
        return grpc.insecure_channel(target, options=[*options, _NO_PROXY]), False
    return grpc.secure_channel(target, creds, options=list(options)), True


def aio_token_service_channel(
    target: str,
    *,
    root_certificates: PemSource | None = None,
    private_key: PemSource | None = None,
    certificate_chain: PemSource | None = None,
    channel_credentials: grpc.ChannelCredentials | None = None,
    options: Sequence[tuple[str, Any]] = (),
) -> tuple[grpc.aio.Channel, bool]:
    """The ``grpc.aio`` twin of :func:`token_service_channel`."""
    creds = _channel_credentials(
        target,
        root_certificates=root_certificates,
        private_key=private_key,
        certificate_chain=certificate_chain,
        channel_credentials=channel_credentials,
    )
    if creds is None:
        return grpc.aio.insecure_channel(target, options=[*options, _NO_PROXY]), False
    return grpc.aio.secure_channel(target, creds, options=list(options)), True
