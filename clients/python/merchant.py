"""A merchant backend on the authsvc Python SDK: pays, reads the payment back, refunds part of it.

The SDK fetches the access token, caches it, refreshes it before it expires and attaches it to
every call; this program never touches a token. Configuration comes from flags or the
environment, the secret from the environment or a file, never from the command line or code. A
client registered with ``--auth-method private_key_jwt`` gives its private key's file instead
(``--private-key``): the SDK signs a fresh assertion for every token request, and no secret exists.

Before its first call it waits (``--wait``, 30 s by default) until the TokenService and the
PaymentService both report SERVING on the standard gRPC health service, so that it can be started
together with them: a PaymentService that has just started is not ready until it holds its
issuer's keys.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from authsvc.client import (
    ClientCredentials,
    PrivateKeyJwtCredentials,
    TokenFetchError,
    authorized_channel,
    insecure_loopback_channel,
    read_secret,
)
from authsvc.client.transport import is_local_target
from authsvc.v1 import token_pb2
from payments_svc.v1 import payments_pb2 as pb
from payments_svc.v1 import payments_pb2_grpc

SCOPES = ("payments:read", "payments:write", "payments:refund")
# the names each service reports its health under (grpc.health.v1)
TOKEN_SERVICE = token_pb2.DESCRIPTOR.services_by_name["TokenService"].full_name
PAYMENT_SERVICE = pb.DESCRIPTOR.services_by_name["PaymentService"].full_name


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    env = os.environ
    p = argparse.ArgumentParser(
        prog="merchant.py",
        description="Pay, read back and partly refund a payment through the PaymentService. The secret "
        "comes from AUTHSVC_CLIENT_SECRET or the file named by AUTHSVC_CLIENT_SECRET_FILE; a "
        "private_key_jwt client gives --private-key instead, and has no secret.",
    )
    p.add_argument(
        "--token-service",
        default=env.get("AUTHSVC_TARGET", "127.0.0.1:50051"),
        help="TokenService HOST:PORT [env AUTHSVC_TARGET; default 127.0.0.1:50051]",
    )
    p.add_argument(
        "--payments",
        default=env.get("PAYMENTS_TARGET", "127.0.0.1:50052"),
        help="PaymentService HOST:PORT [env PAYMENTS_TARGET; default 127.0.0.1:50052]",
    )
    p.add_argument(
        "--client-id",
        default=env.get("AUTHSVC_CLIENT_ID"),
        required=not env.get("AUTHSVC_CLIENT_ID"),
        help="the OAuth client id [env AUTHSVC_CLIENT_ID]",
    )
    p.add_argument(
        "--ca",
        default=env.get("AUTHSVC_CA"),
        help="PEM CA bundle for TLS to both services [env AUTHSVC_CA]. Any host but loopback or "
        "unix: always gets TLS (the system's roots without --ca); plaintext only to loopback and "
        "unix:, and only without --ca",
    )
    p.add_argument(
        "--cert",
        default=env.get("AUTHSVC_CLIENT_CERT"),
        help="PEM client certificate (chain) for mutual TLS to both services [env AUTHSVC_CLIENT_CERT]. "
        "With --token-service on an 'authsvc serve --mtls-listen' port, the tokens are bound to it "
        "(RFC 8705): the PaymentService then accepts them only over a connection with this certificate",
    )
    p.add_argument(
        "--key",
        default=env.get("AUTHSVC_CLIENT_KEY"),
        help="PEM private key of --cert [env AUTHSVC_CLIENT_KEY]",
    )
    p.add_argument(
        "--private-key",
        default=env.get("AUTHSVC_PRIVATE_KEY_FILE"),
        metavar="PEM",
        help="private_key_jwt (RFC 7523): the client's private key, a PEM file (RSA of 2048 bits or more, "
        "or EC P-256, unencrypted), whose public half the client was registered with; the SDK signs a "
        "fresh assertion per token request with it, and no secret is read "
        "[env AUTHSVC_PRIVATE_KEY_FILE]",
    )
    p.add_argument(
        "--key-id",
        default=env.get("AUTHSVC_KEY_ID"),
        metavar="KID",
        help="private_key_jwt: the kid of that key in the registered JWK Set (needed when it holds "
        "several) [env AUTHSVC_KEY_ID]",
    )
    p.add_argument(
        "--signing-alg",
        default=env.get("AUTHSVC_SIGNING_ALG"),
        choices=["RS256", "PS256", "ES256"],
        help="private_key_jwt: one the client was registered with (--signing-alg) "
        "[env AUTHSVC_SIGNING_ALG; default RS256 for an RSA key, ES256 for an EC key]",
    )
    p.add_argument(
        "--issuer",
        default=env.get("AUTHSVC_ISSUER", "https://authsvc.local"),
        help="private_key_jwt: the TokenService's issuer identifier (authsvc serve --issuer), the "
        "assertions' audience [env AUTHSVC_ISSUER; default https://authsvc.local, serve's default]",
    )
    p.add_argument(
        "--wait",
        type=float,
        default=env.get("MERCHANT_WAIT") or "30",  # a string: argparse checks it as it checks a flag
        metavar="SECONDS",
        help="wait at most this long for both services to report SERVING (gRPC health) before the "
        "first call; 0: do not wait [env MERCHANT_WAIT; default 30]",
    )
    p.add_argument("--amount", default="42.00", help="amount to pay (default 42.00)")
    p.add_argument("--currency", default="USD", help="ISO 4217 currency (default USD)")
    p.add_argument("--refund", default="10.00", help="amount to refund (default 10.00)")
    return p.parse_args(argv)


class ClientTls:
    """The client certificate for mutual TLS (``--cert``/``--key``), as PEM bytes."""

    __slots__ = ("certificate_chain", "private_key")

    def __init__(self, certificate_chain: bytes, private_key: bytes) -> None:
        self.certificate_chain = certificate_chain
        self.private_key = private_key

    def __repr__(self) -> str:  # never the private key
        return "ClientTls(certificate_chain=..., private_key=<redacted>)"


def uses_tls(target: str, ca: bytes | None, client_tls: ClientTls | None = None) -> bool:
    """TLS with a CA bundle or a client certificate, and to any host but loopback and unix:
    whatever the flags."""
    return ca is not None or client_tls is not None or not is_local_target(target)


def payments_channel(
    target: str, creds: ClientCredentials, ca: bytes | None, client_tls: ClientTls | None = None
) -> grpc.Channel:
    """The PaymentService channel: TLS (``ca``, else the system's roots; mutual TLS with the
    client certificate) unless the target is loopback or unix: and neither was given."""
    if uses_tls(target, ca, client_tls):
        return authorized_channel(
            target,
            creds,
            root_certificates=ca,
            private_key=None if client_tls is None else client_tls.private_key,
            certificate_chain=None if client_tls is None else client_tls.certificate_chain,
        )
    return insecure_loopback_channel(target, creds)


def read_client_tls(cert: str | None, key: str | None) -> ClientTls | None:
    """The ``--cert``/``--key`` files, read once; ValueError unless both or neither are given."""
    if cert is None and key is None:
        return None
    if cert is None or key is None:
        raise ValueError("--cert and --key go together (AUTHSVC_CLIENT_CERT, AUTHSVC_CLIENT_KEY)")
    return ClientTls(Path(cert).read_bytes(), Path(key).read_bytes())


def client_authentication(
    args: argparse.Namespace, env: Mapping[str, str]
) -> tuple[str | None, PrivateKeyJwtCredentials | None]:
    """The client's secret, or its private_key_jwt signer (``--private-key``): exactly one.
    ValueError (or OSError for a file) saying what is wrong, never what a file holds."""
    has_secret = bool(env.get("AUTHSVC_CLIENT_SECRET") or env.get("AUTHSVC_CLIENT_SECRET_FILE"))
    if args.private_key is None:
        if args.key_id is not None or args.signing_alg is not None:
            raise ValueError("--key-id and --signing-alg go with --private-key (AUTHSVC_PRIVATE_KEY_FILE)")
        if not has_secret:
            raise ValueError(
                "no client secret: set AUTHSVC_CLIENT_SECRET or AUTHSVC_CLIENT_SECRET_FILE, or give a "
                "private_key_jwt client's key with --private-key (AUTHSVC_PRIVATE_KEY_FILE)"
            )
        return read_secret(env=env), None
    if has_secret:
        raise ValueError(
            "a client authenticates one way: --private-key (private_key_jwt) or a secret "
            "(AUTHSVC_CLIENT_SECRET, AUTHSVC_CLIENT_SECRET_FILE), not both"
        )
    signer = PrivateKeyJwtCredentials.from_pem_file(
        args.private_key, issuer=args.issuer, kid=args.key_id, alg=args.signing_alg
    )
    return None, signer


def health_channel(target: str, ca: bytes | None, client_tls: ClientTls | None = None) -> grpc.Channel:
    """A channel without credentials for the health checks (public methods), with the same TLS
    rule as the calls (and the client certificate: a mutual-TLS port refuses the handshake
    without it); it retries a refused connection at most every second."""
    options = [("grpc.initial_reconnect_backoff_ms", 200), ("grpc.max_reconnect_backoff_ms", 1000)]
    if uses_tls(target, ca, client_tls):
        credentials = grpc.ssl_channel_credentials(
            root_certificates=ca,
            private_key=None if client_tls is None else client_tls.private_key,
            certificate_chain=None if client_tls is None else client_tls.certificate_chain,
        )
        return grpc.secure_channel(target, credentials, options=options)
    return grpc.insecure_channel(target, options=options)


def wait_until_serving(
    target: str, service: str, ca: bytes | None, deadline: float, client_tls: ClientTls | None = None
) -> str | None:
    """None once ``target``'s health service says ``service`` is SERVING (or it has no health
    service, so there is nothing to wait for); else, at the monotonic ``deadline``, what it said
    last."""
    last = "no answer"
    said_so = False
    with health_channel(target, ca, client_tls) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return last
            try:
                # wait_for_ready: a server not listening yet is waited for, not a failure
                answer = health.Check(
                    health_pb2.HealthCheckRequest(service=service),
                    timeout=min(remaining, 1.0),
                    wait_for_ready=True,
                )
                if answer.status == health_pb2.HealthCheckResponse.SERVING:
                    return None
                last = health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status)
            except grpc.RpcError as err:
                if err.code() == grpc.StatusCode.UNIMPLEMENTED:
                    return None
                last = err.code().name
            if not said_so:
                print(f"waiting for {service} at {target} ({last})", file=sys.stderr)
                said_so = True
            time.sleep(min(0.25, max(0.0, deadline - time.monotonic())))


def wait_for_services(
    args: argparse.Namespace, ca: bytes | None, client_tls: ClientTls | None = None
) -> str | None:
    """Wait, at most ``args.wait`` seconds in all, for the TokenService and then the
    PaymentService; None when both serve, else a line saying which one does not."""
    if args.wait <= 0:
        return None
    deadline = time.monotonic() + args.wait
    for target, service in ((args.token_service, TOKEN_SERVICE), (args.payments, PAYMENT_SERVICE)):
        last = wait_until_serving(target, service, ca, deadline, client_tls)
        if last is not None:
            return f"{service} at {target} is not serving after {args.wait:g}s (last: {last}); see --wait"
    return None


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        secret, signer = client_authentication(args, os.environ)
    except ValueError as exc:
        print(f"merchant: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"merchant: cannot read {exc.filename}: {exc.strerror}", file=sys.stderr)
        return 2
    try:
        ca = Path(args.ca).read_bytes() if args.ca else None
    except OSError as exc:
        print(f"merchant: cannot read the CA bundle {args.ca}: {exc.strerror}", file=sys.stderr)
        return 2
    try:
        client_tls = read_client_tls(args.cert, args.key)
    except ValueError as exc:
        print(f"merchant: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"merchant: cannot read {exc.filename}: {exc.strerror}", file=sys.stderr)
        return 2
    not_ready = wait_for_services(args, ca, client_tls)
    if not_ready is not None:
        print(f"merchant: {not_ready}", file=sys.stderr)
        return 1
    # the SDK dials the TokenService itself: TLS to any host but loopback and unix:, so the
    # client secret (or an assertion) never crosses a network in plaintext
    creds = ClientCredentials.for_target(
        args.token_service,
        client_id=args.client_id,
        client_secret=secret,
        private_key_jwt=signer,
        scopes=SCOPES,
        audience=["payments"],
        root_certificates=ca,
        private_key=None if client_tls is None else client_tls.private_key,
        certificate_chain=None if client_tls is None else client_tls.certificate_chain,
    )
    channel = payments_channel(args.payments, creds, ca, client_tls)
    payments = payments_pb2_grpc.PaymentServiceStub(channel)
    key = f"order-{uuid.uuid4()}"
    try:
        request = pb.CreatePaymentRequest(
            amount=args.amount,
            currency=args.currency,
            payment_method="pm_card_visa",
            description="merchant.py order",
            idempotency_key=key,
        )
        paid = payments.CreatePayment(request, timeout=10).payment
        print(f"paid      {paid.transaction_id}  {paid.amount} {paid.currency}", file=sys.stderr)
        again = payments.CreatePayment(request, timeout=10).payment
        print(f"replayed  {again.transaction_id}  (same payment: {again == paid})", file=sys.stderr)
        got = payments.GetPayment(
            pb.GetPaymentRequest(transaction_id=paid.transaction_id), timeout=10
        ).payment
        print(f"read back {got.transaction_id}  status={pb.PaymentStatus.Name(got.status)}", file=sys.stderr)
        refunded = payments.RefundPayment(
            pb.RefundPaymentRequest(
                transaction_id=paid.transaction_id, amount=args.refund, idempotency_key=f"{key}-refund"
            ),
            timeout=10,
        ).payment
        print(
            f"refunded  {refunded.refunded_amount} of {refunded.amount} {refunded.currency}", file=sys.stderr
        )
    except TokenFetchError as exc:
        print(f"merchant: could not get a token: {exc}", file=sys.stderr)
        return 1
    except grpc.RpcError as exc:
        print(f"merchant: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1
    finally:
        channel.close()
        creds.close()
    print(
        json.dumps(
            {
                "ok": True,
                "transaction_id": paid.transaction_id,
                "replayed_same": again == paid,
                "refunded_amount": refunded.refunded_amount,
                "token_fetches": creds.fetches,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
