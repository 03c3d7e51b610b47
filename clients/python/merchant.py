"""A merchant backend on the authsvc Python SDK: pays, reads the payment back, refunds part of it.

The SDK fetches the access token, caches it, refreshes it before it expires and attaches it to
every call; this program never touches a token. Configuration comes from flags or the
environment, the secret from the environment or a file, never from the command line or code.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import uuid
from collections.abc import Sequence
from pathlib import Path

import grpc

from authsvc.client import (
    ClientCredentials,
    TokenFetchError,
    authorized_channel,
    insecure_loopback_channel,
    read_secret,
)
from authsvc.client.transport import is_local_target
from payments_svc.v1 import payments_pb2 as pb
from payments_svc.v1 import payments_pb2_grpc

SCOPES = ("payments:read", "payments:write", "payments:refund")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    env = os.environ
    p = argparse.ArgumentParser(
        prog="merchant.py",
        description="Pay, read back and partly refund a payment through the PaymentService. The secret "
        "comes from AUTHSVC_CLIENT_SECRET or the file named by AUTHSVC_CLIENT_SECRET_FILE.",
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


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        secret = read_secret(env=os.environ)
    except (ValueError, OSError) as exc:
        print(f"merchant: {exc}", file=sys.stderr)
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
    # the SDK dials the TokenService itself: TLS to any host but loopback and unix:, so the
    # client secret never crosses a network in plaintext
    creds = ClientCredentials.for_target(
        args.token_service,
        client_id=args.client_id,
        client_secret=secret,
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
