"""A real PaymentService with its HTTP/JSON API on free ports, behind a real TokenService, and a raw
HTTP/1.1 client (http.client) that sends exactly the bytes and headers a test gives it."""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from authsvc.v1 import token_pb2, token_pb2_grpc
from payments_svc.app import PaymentsConfig, RunningPayments, start_server
from tests.conftest import ISSUER, TokenServer
from tests.helpers import ServerThread

ALL = ("payments:read", "payments:write", "payments:refund")
SEED_BODY = (
    b'{"amount": 100.00, "currency": "USD", "payment_method": "credit_card", "description": "Order #12345"}'
)
"""The seed's request body, byte for byte."""


@dataclass
class Answer:
    status: int
    headers: http.client.HTTPMessage
    raw: bytes

    @property
    def json(self) -> dict[str, object]:
        value = json.loads(self.raw)
        assert isinstance(value, dict), self.raw
        return value

    @property
    def reason(self) -> object:
        """The ErrorInfo reason of a refusal (domain errors); RFC 6750 refusals carry ``error``."""
        return self.json.get("reason")

    @property
    def error(self) -> object:
        return self.json.get("error")

    @property
    def challenge(self) -> str:
        return str(self.headers.get("WWW-Authenticate", ""))


@dataclass
class HttpGateway:
    token_server: TokenServer
    running: RunningPayments
    _secrets: dict[str, str] = field(default_factory=dict)

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.running.port}"

    def token(self, client_id: str, scopes: Sequence[str] = ALL) -> str:
        """A fresh access token of ``client_id`` (registered on first use with ``scopes``)."""
        secret = self._secrets.get(client_id)
        if secret is None:
            _, secret = self.token_server.authority.clients.create_client(
                client_id=client_id, scopes=list(scopes), audiences=["payments"]
            )
            self._secrets[client_id] = secret
        with grpc.insecure_channel(self.token_server.target) as ch:
            resp = token_pb2_grpc.TokenServiceStub(ch).IssueToken(
                token_pb2.IssueTokenRequest(
                    grant_type="client_credentials", client_id=client_id, client_secret=secret
                ),
                timeout=10,
            )
        return str(resp.access_token)

    def call(
        self,
        method: str,
        path: str,
        *,
        token: str | None = None,
        body: bytes | dict[str, object] | None = None,
        content_type: str | None = "application/json",
        key: str | None = None,
        headers: Sequence[tuple[str, str]] = (),
        chunked: bool = False,
    ) -> Answer:
        """One request on a new connection; ``path`` is sent as it is (no normalisation)."""
        data = json.dumps(body).encode() if isinstance(body, dict) else body
        conn = http.client.HTTPConnection("127.0.0.1", self.running.http_port, timeout=15)
        try:
            conn.putrequest(method, path, skip_accept_encoding=True)
            if token is not None:
                conn.putheader("Authorization", f"Bearer {token}")
            if key is not None:
                conn.putheader("Idempotency-Key", key)
            if data is not None and content_type is not None:
                conn.putheader("Content-Type", content_type)
            for name, value in headers:
                conn.putheader(name, value)
            if data is not None and chunked:
                conn.putheader("Transfer-Encoding", "chunked")
                conn.endheaders()
                for i in range(0, len(data), 8192):
                    piece = data[i : i + 8192]
                    conn.send(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
                conn.send(b"0\r\n\r\n")
            else:
                if data is not None:
                    conn.putheader("Content-Length", str(len(data)))
                conn.endheaders(data)
            resp = conn.getresponse()
            return Answer(resp.status, resp.headers, resp.read())
        finally:
            conn.close()

    def pay(self, token: str, key: str, amount: object = "10.00", currency: str = "USD") -> Answer:
        body: dict[str, object] = {
            "amount": amount,
            "currency": currency,
            "payment_method": "credit_card",
            "description": f"order {key}",
        }
        return self.call("POST", "/api/v1/payments", token=token, key=key, body=body)


def start_http_payments(data_dir: Path, token_target: str) -> ServerThread[RunningPayments]:
    config = PaymentsConfig(
        data_dir=data_dir,
        listen="127.0.0.1:0",
        http_listen="127.0.0.1:0",
        token_service=token_target,
        issuer=ISSUER,
    )
    thread: ServerThread[RunningPayments] = ServerThread(lambda: start_server(config))
    thread.start()
    return thread


@contextmanager
def running_http_gateway(token_server: TokenServer, data_dir: Path) -> Iterator[HttpGateway]:
    """For a test module's fixture: ``with running_http_gateway(token_server, tmp_path) as gw``."""
    thread = start_http_payments(data_dir, token_server.target)
    try:
        yield HttpGateway(token_server, thread.running)
    finally:
        thread.stop(0)
