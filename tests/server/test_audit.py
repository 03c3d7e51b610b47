"""The audit log of a real ``authsvc serve --log-format json``: every line parses, an issued
token's event carries its jti and neither the secret nor the token, and a refusal says why
(unknown client or wrong secret) in the log while the caller gets the same INVALID_CLIENT."""

from __future__ import annotations

import base64
import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from authsvc.v1 import token_pb2, token_pb2_grpc
from tests.conftest import KEK
from tests.helpers import Command, create_client


def _reason(err: grpc.RpcError) -> tuple[grpc.StatusCode, str]:
    status = rpc_status.from_call(err)
    assert status is not None
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    return err.code(), info.reason


def _refused(
    stub: token_pb2_grpc.TokenServiceStub, client_id: str, secret: str
) -> tuple[grpc.StatusCode, str]:
    try:
        stub.IssueToken(
            token_pb2.IssueTokenRequest(
                grant_type="client_credentials", client_id=client_id, client_secret=secret
            ),
            timeout=10,
        )
    except grpc.RpcError as err:
        return _reason(err)
    raise AssertionError("the token was issued")


def _http_token(base: str, client_id: str, secret: str) -> tuple[int, dict[str, Any]]:
    body = urllib.parse.urlencode({"grant_type": "client_credentials"}).encode()
    basic = base64.b64encode(f"{client_id}:{secret}".encode()).decode()
    req = urllib.request.Request(  # noqa: S310 - a loopback test server
        f"{base}/oauth2/token", data=body, headers={"Authorization": f"Basic {basic}"}
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310 - a loopback test server
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_json_audit_log_of_a_real_server(tmp_path: Path) -> None:
    env = {**os.environ, "AUTHSVC_DATA_DIR": str(tmp_path / "auth"), "AUTHSVC_KEK": KEK}
    secret = create_client(env, "shop", "payments:read")
    pasted = "a-secret-pasted-into-the-id-field-0123456789"
    auth = Command(
        [
            sys.executable,
            "-m",
            "authsvc.cli",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
        ],
        {**env, "AUTHSVC_LOG_FORMAT": "JSON", "AUTHSVC_LOG_LEVEL": "debug"},
    )
    try:
        with grpc.insecure_channel(auth.target) as channel:
            stub = token_pb2_grpc.TokenServiceStub(channel)
            issued = stub.IssueToken(
                token_pb2.IssueTokenRequest(
                    grant_type="client_credentials", client_id="shop", client_secret=secret
                ),
                timeout=10,
            )
            unknown = _refused(stub, pasted, secret)
            wrong = _refused(stub, "shop", "not-" + secret)
        http_status, http_body = _http_token(auth.http_url, "shop", "wrong\nsecret")
    finally:
        assert auth.terminate() == 0
    # the wire answer cannot tell an unknown client from a wrong secret
    assert unknown == wrong == (grpc.StatusCode.UNAUTHENTICATED, "INVALID_CLIENT")
    assert http_status == 401 and http_body["error"] == "invalid_client"

    output = auth.output()
    lines = [json.loads(line) for line in output.splitlines()]  # every line is one JSON object
    assert lines and all({"time", "level", "logger", "message"} <= line.keys() for line in lines)
    assert all(line["time"].endswith("Z") for line in lines)
    assert any(line["message"].startswith("shutting down") for line in lines)  # flushed at exit
    events = [line for line in lines if line["logger"] == "authsvc.audit"]

    jti = json.loads(base64.urlsafe_b64decode(issued.access_token.split(".")[1] + "=="))["jti"]
    (issue_event,) = [e for e in events if e["event"] == "token.issued"]
    assert issue_event["jti"] == jti
    assert issue_event["client_id"] == "shop" and issue_event["outcome"] == "issued"
    assert issue_event["grant_type"] == "client_credentials"
    assert issue_event["auth_method"] == "client_secret_post"
    assert issue_event["scope"] == "payments:read" and issue_event["kid"]
    assert "127.0.0.1" in issue_event["peer"]

    refusals = [e for e in events if e["event"] == "token.refused"]
    assert [e["reason"] for e in refusals] == ["unknown_client", "wrong_secret", "wrong_secret"]
    assert all(e["error"] == "invalid_client" and e["outcome"] == "refused" for e in refusals)
    assert pasted not in refusals[0]["client_id"]  # redacted: a prefix and a hash
    assert refusals[1]["client_id"] == "shop" and "127.0.0.1" in refusals[2]["peer"]

    # never a secret or the token, in any line
    for value in (secret, "not-" + secret, pasted, issued.access_token, issued.access_token.split(".")[2]):
        assert value not in output
