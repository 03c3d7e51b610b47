"""`make demo`: the whole scenario on the embedded default (SQLite), end to end.

Starts the TokenService with ``authsvc serve`` in a temporary data directory, registers a demo
client with ``authsvc clients create``, obtains a token over gRPC, prints its decoded header and
claims and the JWKS, shows a refusal, and shuts everything down.
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
from pathlib import Path

import grpc
import jwt
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from authsvc.v1 import token_pb2, token_pb2_grpc

ISSUER = "https://authsvc.demo"


def step(text: str) -> None:
    print(f"\n\033[1m== {text}\033[0m", flush=True)


def run_cli(*args: str, env: dict[str, str]) -> str:
    print("$ authsvc " + " ".join(args), flush=True)
    return subprocess.run(
        [sys.executable, "-m", "authsvc.cli", *args],
        env=env,
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout


def start_token_service(env: dict[str, str]) -> tuple[subprocess.Popen[str], int, list[str]]:
    print("$ authsvc serve --listen 127.0.0.1:0 --issuer " + ISSUER, flush=True)
    proc = subprocess.Popen(
        [sys.executable, "-m", "authsvc.cli", "serve", "--listen", "127.0.0.1:0", "--issuer", ISSUER],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    log: list[str] = []
    for line in proc.stderr:
        log.append(line)
        if m := re.search(r"listening on 127\.0\.0\.1:(\d+)", line):
            port = int(m.group(1))
            break
    else:
        raise SystemExit("the TokenService did not start:\n" + "".join(log))
    stderr = proc.stderr
    threading.Thread(target=lambda: log.extend(stderr), daemon=True).start()
    return proc, port, log


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="authsvc-demo-") as tmp:
        data_dir = Path(tmp) / "data"
        env = {**os.environ, "AUTHSVC_DATA_DIR": str(data_dir), "AUTHSVC_KEK": os.urandom(32).hex()}
        step("Register a merchant backend as an OAuth client (the secret is shown once)")
        client = json.loads(
            run_cli(
                "clients",
                "create",
                "--client-id",
                "merchant-shop",
                "--scope",
                "payments:read payments:write",
                "--audience",
                "payments",
                "--output",
                "json",
                env=env,
            )
        )
        print(f"client_id={client['client_id']}  client_secret={client['client_secret'][:15]}…")

        step("Start the TokenService")
        proc, port, log = start_token_service(env)
        try:
            with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = token_pb2_grpc.TokenServiceStub(channel)
                step("IssueToken: client credentials grant, client_secret_basic")
                basic = base64.b64encode(f"{client['client_id']}:{client['client_secret']}".encode()).decode()
                response = stub.IssueToken(
                    token_pb2.IssueTokenRequest(
                        grant_type="client_credentials", scope="payments:write", audience=["payments"]
                    ),
                    metadata=(("authorization", f"Basic {basic}"),),
                    timeout=10,
                )
                token = response.access_token
                print(
                    f"token_type={response.token_type} expires_in={response.expires_in} "
                    f"scope={response.scope!r}"
                )
                print(f"access_token={token[:24]}…{token[-8:]} ({len(token)} bytes)")

                step("The token, decoded: RFC 9068 header and claims")
                print(json.dumps(jwt.get_unverified_header(token), indent=2))
                print(json.dumps(jwt.decode(token, options={"verify_signature": False}), indent=2))

                step("GetJwks: the public keys any resource server verifies with, offline")
                jwks_json = stub.GetJwks(token_pb2.GetJwksRequest(), timeout=10).jwks_json
                print(json.dumps(json.loads(jwks_json), indent=2))
                keys = jwt.PyJWKSet.from_json(jwks_json)
                kid = jwt.get_unverified_header(token)["kid"]
                claims = jwt.decode(
                    token,
                    next(k for k in keys.keys if k.key_id == kid).key,
                    algorithms=["RS256"],
                    audience="payments",
                    issuer=ISSUER,
                )
                print(f"signature verified with PyJWT against the JWKS: sub={claims['sub']}")

                step("A refusal: the wrong secret")
                try:
                    stub.IssueToken(
                        token_pb2.IssueTokenRequest(
                            grant_type="client_credentials",
                            client_id=client["client_id"],
                            client_secret="authsvc_cs_not-the-secret",  # noqa: S106 - deliberately wrong
                        ),
                        timeout=10,
                    )
                    raise SystemExit("the wrong secret was accepted")
                except grpc.RpcError as err:
                    status = rpc_status.from_call(err)
                    info = error_details_pb2.ErrorInfo()
                    if status is not None:
                        status.details[0].Unpack(info)
                    print(
                        f"{err.code().name}: {err.details()}  (ErrorInfo reason={info.reason}, "
                        f"domain={info.domain})"
                    )

            step("Signing keys")
            print(run_cli("keys", "list", env=env), end="")
        finally:
            step("Shut down (SIGTERM, graceful)")
            proc.send_signal(signal.SIGTERM)
            rc = proc.wait(timeout=20)
            print("".join(line for line in log if "authsvc.server" in line), end="")
            print(f"TokenService exited with {rc}")
    return 0 if rc == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
