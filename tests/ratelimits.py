"""Shared machinery of the rate-limit tests: a TokenService with limits, token requests over gRPC
and HTTP (from a chosen source address), and what a refusal carries."""

from __future__ import annotations

import base64
import http.client
import json
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from authsvc.core.ratelimit import RateLimit
from authsvc.server.app import RunningServer, open_authority, start_server
from authsvc.v1 import token_pb2, token_pb2_grpc
from tests.conftest import TokenServer, serve_config
from tests.helpers import ServerThread

TWO_AN_HOUR = RateLimit(rate=1 / 3600, burst=2)
"""Two at once, then one an hour: a test never waits for a refill, whatever the machine's speed."""


@contextmanager
def limited_server(data_dir: Path, **config: Any) -> Iterator[TokenServer]:
    """A TokenService on free ports with ServeConfig overrides (the limits)."""
    cfg = serve_config(data_dir, **config)
    thread: ServerThread[RunningServer] = ServerThread(
        lambda: start_server(cfg, authority=open_authority(cfg))
    )
    running = thread.start()
    try:
        yield TokenServer(running, cfg, thread)
    finally:
        thread.stop(grace=0)


@dataclass(frozen=True)
class Refusal:
    """A refused gRPC call as the caller sees it."""

    code: grpc.StatusCode
    reason: str
    domain: str
    retry_delay: float | None  # google.rpc.RetryInfo
    pushback_ms: str | None  # the grpc-retry-pushback-ms trailer


def refusal_of(err: grpc.RpcError) -> Refusal:
    status = rpc_status.from_call(err)
    assert status is not None
    reason = domain = ""
    delay = None
    for detail in status.details:
        info = error_details_pb2.ErrorInfo()
        retry = error_details_pb2.RetryInfo()
        if detail.Unpack(info):
            reason, domain = info.reason, info.domain
        elif detail.Unpack(retry):
            delay = retry.retry_delay.seconds + retry.retry_delay.nanos / 1e9
    pushback = None
    for item in err.trailing_metadata() or ():
        key, value = item.key, item.value
        if key == "grpc-retry-pushback-ms":
            pushback = value if isinstance(value, str) else value.decode()
    return Refusal(err.code(), reason, domain, delay, pushback)


def grpc_token(stub: token_pb2_grpc.TokenServiceStub, client_id: str, secret: str) -> Refusal | None:
    """IssueToken with client_secret_post; None when a token was issued, else the refusal."""
    try:
        stub.IssueToken(
            token_pb2.IssueTokenRequest(
                grant_type="client_credentials", client_id=client_id, client_secret=secret
            ),
            timeout=10,
        )
    except grpc.RpcError as err:
        return refusal_of(err)
    return None


def http_post(
    url: str,
    path: str,
    form: dict[str, str],
    *,
    basic: tuple[str, str] | None = None,
    source: str = "127.0.0.1",
) -> tuple[int, dict[str, str], dict[str, Any]]:
    """POST a form from the ``source`` address (any 127.x.y.z is this machine); the status, the
    headers and the JSON body ({} for none)."""
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(
        parts.hostname or "", parts.port, timeout=10, source_address=(source, 0)
    )
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    if basic is not None:
        pair = f"{urllib.parse.quote(basic[0], safe='')}:{urllib.parse.quote(basic[1], safe='')}"
        headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
    try:
        conn.request("POST", path, body=urllib.parse.urlencode(form), headers=headers)
        answer = conn.getresponse()
        raw = answer.read()
        return answer.status, {k.lower(): v for k, v in answer.getheaders()}, json.loads(raw) if raw else {}
    finally:
        conn.close()


def http_token(
    url: str, client_id: str, secret: str, *, source: str = "127.0.0.1"
) -> tuple[int, dict[str, str], dict[str, Any]]:
    """POST /oauth2/token with client_secret_basic from ``source``."""
    return http_post(
        url, "/oauth2/token", {"grant_type": "client_credentials"}, basic=(client_id, secret), source=source
    )
