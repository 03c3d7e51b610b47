"""`make demo`: the whole payment scenario on the embedded default (SQLite), end to end.

Starts the TokenService (``authsvc serve``) and the PaymentService (``payments-svc serve``) in a
temporary directory, registers two merchants with ``authsvc clients create``, and walks through a
merchant's day: get a token, pay, replay the payment with the same idempotency key, read it back,
refund part of it, and meet the refusals (no token, a read-only token on a write, another
merchant's payment). Then everything shuts down.
"""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import jwt
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from authsvc.v1 import token_pb2, token_pb2_grpc
from payments_svc.v1 import payments_pb2 as pb
from payments_svc.v1 import payments_pb2_grpc

ISSUER = "https://authsvc.demo"
PUBLISH_DELAY = 3
BOLD, DIM, RESET = ("\033[1m", "\033[2m", "\033[0m") if sys.stdout.isatty() else ("", "", "")


def step(text: str) -> None:
    print(f"\n{BOLD}== {text}{RESET}", flush=True)


def run_cli(*args: str, env: dict[str, str]) -> str:
    print(f"$ authsvc {' '.join(args)}", flush=True)
    return subprocess.run(
        [sys.executable, "-m", "authsvc.cli", *args],
        env=env,
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout


class Service:
    """A server command in a subprocess; its port is read from its first log lines."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str]) -> None:
        print(f"$ {name} {' '.join(argv[3:])}", flush=True)
        self.proc = subprocess.Popen(argv, env=env, stderr=subprocess.PIPE, text=True)
        assert self.proc.stderr is not None
        self.log: list[str] = []
        self.port = self.http_port = 0
        for line in self.proc.stderr:
            self.log.append(line)
            if m := re.search(r"listening on 127\.0\.0\.1:(\d+)", line):
                self.port = int(m.group(1))
            if m := re.search(r"HTTP(?:/JSON API)? on 127\.0\.0\.1:(\d+)", line):
                self.http_port = int(m.group(1))
            if self.port and self.http_port:
                break
        else:
            raise SystemExit(f"{name} did not start:\n" + "".join(self.log))
        stderr = self.proc.stderr
        threading.Thread(target=lambda: self.log.extend(stderr), daemon=True).start()

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=20)


def refusal(call: Callable[[], Any]) -> None:
    try:
        call()
    except grpc.RpcError as err:
        info = error_details_pb2.ErrorInfo()
        status = rpc_status.from_call(err)
        if status is not None and status.details:
            status.details[0].Unpack(info)
        print(f"  refused: {err.code().name} {info.reason}: {err.details()}")
        return
    raise SystemExit("the call was expected to be refused but succeeded")


def show(p: pb.Payment) -> str:
    status = pb.PaymentStatus.Name(p.status).removeprefix("PAYMENT_STATUS_").lower()
    return (
        f"{p.transaction_id}  {p.amount} {p.currency}  refunded {p.refunded_amount}  {status}  "
        f"client={p.client_id}"
    )


def get_token(stub: token_pb2_grpc.TokenServiceStub, client: dict[str, str], scope: str) -> str:
    basic = base64.b64encode(f"{client['client_id']}:{client['client_secret']}".encode()).decode()
    response = stub.IssueToken(
        token_pb2.IssueTokenRequest(grant_type="client_credentials", scope=scope, audience=["payments"]),
        metadata=(("authorization", f"Basic {basic}"),),
        timeout=10,
    )
    return str(response.access_token)


def http(method: str, url: str, body: bytes | None = None, **headers: str) -> tuple[int, dict[str, str], Any]:
    """One HTTP request (urllib, as any client would); the status, headers and JSON body."""
    request = urllib.request.Request(url, data=body, method=method, headers=headers)  # noqa: S310 - http://127.0.0.1 only
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:  # noqa: S310
            return answer.status, dict(answer.headers), json.loads(answer.read() or b"null")
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), json.loads(err.read() or b"null")


def http_demo(auth_port: int, pay_port: int, shop: dict[str, str]) -> None:
    """The seed's scenario over HTTP: a form token request, a jwks_uri check, a JSON payment."""
    auth, pay = f"http://127.0.0.1:{auth_port}", f"http://127.0.0.1:{pay_port}"
    basic = base64.b64encode(f"{shop['client_id']}:{shop['client_secret']}".encode()).decode()
    print(f"$ curl -u {shop['client_id']}:… -d grant_type=client_credentials {auth}/oauth2/token")
    status, _, answer = http(
        "POST",
        auth + "/oauth2/token",
        b"grant_type=client_credentials&scope=payments:read+payments:write",
        Authorization=f"Basic {basic}",
        **{"Content-Type": "application/x-www-form-urlencoded"},
    )
    token = str(answer["access_token"])
    print(f"  {status}: token_type={answer['token_type']} expires_in={answer['expires_in']}", end="")
    print(f" scope={answer['scope']!r}")
    key = jwt.PyJWKClient(auth + "/.well-known/jwks.json").get_signing_key_from_jwt(token)
    jwt.decode(token, key.key, algorithms=["RS256"], audience="payments", issuer=ISSUER)
    print(f"  verified by PyJWT against {auth}/.well-known/jwks.json (kid {str(key.key_id)[:12]}…)")
    seed = (
        b'{"amount": 100.00, "currency": "USD", "payment_method": "credit_card", '
        b'"description": "Order #12345"}'
    )
    print(
        f"$ curl -X POST {pay}/api/v1/payments -H 'Authorization: Bearer …' -H 'Idempotency-Key: order-12345'"
    )
    print(f"       -d '{seed.decode()}'")
    headers = {
        "Authorization": f"Bearer {token}",
        "Content-Type": "application/json",
        "Idempotency-Key": "order-12345",
    }
    status, _, paid = http("POST", pay + "/api/v1/payments", seed, **headers)
    print(f"  {status}: {json.dumps(paid)}")
    status, _, again = http("POST", pay + "/api/v1/payments", seed, **headers)
    same = "same payment, charged once" if again["transaction_id"] == paid["transaction_id"] else "DIFFERENT!"
    print(f"  replayed: {status} {again['transaction_id']} ({same})")
    status, answer_headers, _ = http("GET", pay + "/api/v1/payments")
    print(f"  without a token: {status} WWW-Authenticate: {answer_headers.get('WWW-Authenticate')}")


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="authsvc-demo-") as tmp:
        env = {
            **os.environ,
            "AUTHSVC_DATA_DIR": str(Path(tmp) / "auth"),
            "AUTHSVC_KEK": os.urandom(32).hex(),
            "PAYMENTS_DATA_DIR": str(Path(tmp) / "payments"),
            "AUTHSVC_ISSUER": ISSUER,
            "PAYMENTS_ISSUER": ISSUER,
        }
        step("Register two merchant backends as OAuth clients (each secret is shown once)")
        scopes = "payments:read payments:write payments:refund"
        shop = json.loads(
            run_cli(
                "clients",
                "create",
                "--client-id",
                "merchant-shop",
                "--scope",
                scopes,
                "--audience",
                "payments",
                "--output",
                "json",
                env=env,
            )
        )
        other = json.loads(
            run_cli(
                "clients",
                "create",
                "--client-id",
                "merchant-other",
                "--scope",
                scopes,
                "--audience",
                "payments",
                "--output",
                "json",
                env=env,
            )
        )
        print(f"client_id={shop['client_id']}  client_secret={shop['client_secret'][:15]}…")

        step("Start the TokenService and the PaymentService")
        # short key-lifecycle settings so that the rotation below takes seconds, not minutes
        auth = Service(
            "authsvc",
            [
                sys.executable,
                "-m",
                "authsvc.cli",
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--http-listen",
                "127.0.0.1:0",
                "--key-publish-delay",
                str(PUBLISH_DELAY),
                "--jwks-max-age",
                str(PUBLISH_DELAY),
            ],
            env,
        )
        services = [auth]
        rc = 1
        try:
            env["PAYMENTS_TOKEN_SERVICE"] = f"127.0.0.1:{auth.port}"
            gateway = Service(
                "payments-svc",
                [
                    sys.executable,
                    "-m",
                    "payments_svc.cli",
                    "serve",
                    "--listen",
                    "127.0.0.1:0",
                    "--http-listen",
                    "127.0.0.1:0",
                ],
                env,
            )
            services.append(gateway)
            with (
                grpc.insecure_channel(f"127.0.0.1:{auth.port}") as auth_ch,
                grpc.insecure_channel(f"127.0.0.1:{gateway.port}") as pay_ch,
            ):
                tokens = token_pb2_grpc.TokenServiceStub(auth_ch)
                payments = payments_pb2_grpc.PaymentServiceStub(pay_ch)

                step("The merchant asks for a token (client credentials, client_secret_basic)")
                token = get_token(tokens, shop, scopes)
                print(f"access_token={token[:20]}…{token[-6:]} ({len(token)} bytes)")
                print("header:", json.dumps(jwt.get_unverified_header(token)))
                print("claims:", json.dumps(jwt.decode(token, options={"verify_signature": False})))
                keys = json.loads(tokens.GetJwks(token_pb2.GetJwksRequest(), timeout=10).jwks_json)["keys"]
                print(f"JWKS: {len(keys)} key(s), kid={keys[0]['kid']} — the PaymentService verifies offline")
                auth_md = (("authorization", f"Bearer {token}"),)

                step("CreatePayment (payments:write), then again with the same idempotency key")
                request = pb.CreatePaymentRequest(
                    amount="149.99",
                    currency="USD",
                    payment_method="pm_card_visa",
                    description="order #1001",
                    idempotency_key="order-1001",
                )
                paid = payments.CreatePayment(request, metadata=auth_md, timeout=10).payment
                print("  created: ", show(paid))
                again = payments.CreatePayment(request, metadata=auth_md, timeout=10).payment
                print(
                    "  replayed:",
                    show(again),
                    "(same payment, charged once)" if again == paid else "(DIFFERENT!)",
                )

                step("GetPayment and ListPayments (payments:read)")
                got = payments.GetPayment(
                    pb.GetPaymentRequest(transaction_id=paid.transaction_id), metadata=auth_md, timeout=10
                ).payment
                print("  got:     ", show(got))
                listed = payments.ListPayments(
                    pb.ListPaymentsRequest(), metadata=auth_md, timeout=10
                ).payments
                print(f"  listed:   {len(listed)} payment(s)")

                step("RefundPayment (payments:refund): 50.00 of 149.99")
                refunded = payments.RefundPayment(
                    pb.RefundPaymentRequest(
                        transaction_id=paid.transaction_id, amount="50.00", idempotency_key="refund-1001-a"
                    ),
                    metadata=auth_md,
                    timeout=10,
                ).payment
                print("  refunded:", show(refunded))

                step("Refusals")
                print("- no token:")
                refusal(lambda: payments.ListPayments(pb.ListPaymentsRequest(), timeout=10))
                print("- a read-only token on a write:")
                read_md = (("authorization", f"Bearer {get_token(tokens, shop, 'payments:read')}"),)
                refusal(lambda: payments.CreatePayment(request, metadata=read_md, timeout=10))
                print("- another merchant asks for merchant-shop's payment:")
                other_md = (("authorization", f"Bearer {get_token(tokens, other, 'payments:read')}"),)
                refusal(
                    lambda: payments.GetPayment(
                        pb.GetPaymentRequest(transaction_id=paid.transaction_id),
                        metadata=other_md,
                        timeout=10,
                    )
                )
                print("- refund more than is left:")
                refusal(
                    lambda: payments.RefundPayment(
                        pb.RefundPaymentRequest(
                            transaction_id=paid.transaction_id,
                            amount="100.00",
                            idempotency_key="refund-1001-b",
                        ),
                        metadata=auth_md,
                        timeout=10,
                    )
                )
                print("- an amount with more decimals than USD has:")
                refusal(
                    lambda: payments.CreatePayment(
                        pb.CreatePaymentRequest(
                            amount="10.005",
                            currency="USD",
                            payment_method="pm_card_visa",
                            idempotency_key="x",
                        ),
                        metadata=auth_md,
                        timeout=10,
                    )
                )
                print("- the wrong client secret at the TokenService:")
                refusal(
                    lambda: get_token(tokens, {**shop, "client_secret": "authsvc_cs_wrong"}, "payments:read")
                )

                step("The same over HTTP: any OAuth client, any jwks_uri verifier, the seed's JSON request")
                http_demo(auth.http_port, gateway.http_port, shop)

                step(f"Key rotation: a new key is published, then signs {PUBLISH_DELAY} s later")
                print(run_cli("keys", "list", env=env), end="")
                new_kid = json.loads(run_cli("keys", "rotate", "--output", "json", env=env))["kid"]
                print(f"next key {new_kid}: published within a second, pushed to verifiers by WatchJwks")
                deadline = time.monotonic() + PUBLISH_DELAY + 10
                while jwt.get_unverified_header(token := get_token(tokens, shop, scopes))["kid"] != new_kid:
                    if time.monotonic() > deadline:
                        raise SystemExit("the new key never started signing")
                    time.sleep(0.25)
                print(run_cli("keys", "list", env=env), end="")
                rotated_md = (("authorization", f"Bearer {token}"),)
                listed = payments.ListPayments(
                    pb.ListPaymentsRequest(), metadata=rotated_md, timeout=10
                ).payments
                print(f"a token signed by {new_kid[:12]}… works at once: {len(listed)} payment(s) listed")
                again = payments.GetPayment(
                    pb.GetPaymentRequest(transaction_id=paid.transaction_id), metadata=auth_md, timeout=10
                ).payment
                print(f"and the token signed by the old key still works: {again.transaction_id}")
            rc = 0
        finally:
            step("Shut down (SIGTERM, graceful)")
            for service in reversed(services):
                code = service.stop()
                print(
                    f"{DIM}"
                    + "".join(line for line in service.log if "listening" in line or "stopped" in line)
                    + f"{RESET}",
                    end="",
                )
                print(f"exited with {code}")
                rc = rc or code
    return rc


if __name__ == "__main__":
    sys.exit(main())
