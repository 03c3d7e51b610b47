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
        help="PEM CA bundle: use TLS to both services (without it: plaintext, loopback only) "
        "[env AUTHSVC_CA]",
    )
    p.add_argument("--amount", default="42.00", help="amount to pay (default 42.00)")
    p.add_argument("--currency", default="USD", help="ISO 4217 currency (default USD)")
    p.add_argument("--refund", default="10.00", help="amount to refund (default 10.00)")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        secret = read_secret(env=os.environ)
    except (ValueError, OSError) as exc:
        print(f"merchant: {exc}", file=sys.stderr)
        return 2
    ca = Path(args.ca).read_bytes() if args.ca else None
    auth_channel = (
        grpc.secure_channel(args.token_service, grpc.ssl_channel_credentials(ca))
        if ca
        else grpc.insecure_channel(args.token_service)
    )
    creds = ClientCredentials.for_channel(
        auth_channel, client_id=args.client_id, client_secret=secret, scopes=SCOPES, audience=["payments"]
    )
    channel = (
        authorized_channel(args.payments, creds, root_certificates=ca)
        if ca
        else insecure_loopback_channel(args.payments, creds)
    )
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
        auth_channel.close()
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
