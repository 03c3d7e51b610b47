"""Mutual-TLS test machinery: a real TokenService with ``--mtls-listen`` (and its HTTP twin), and
helpers to get tokens over it with one of the session's test certificates (tests/pki.py).

The ``mtls_token_server`` fixture (tests/conftest.py) starts one per test.
"""

from __future__ import annotations

import base64
import json
import ssl
import urllib.request
from pathlib import Path
from typing import Any

import grpc

from authsvc.server.app import RunningServer, open_authority, start_server
from authsvc.v1 import token_pb2, token_pb2_grpc
from tests.conftest import RegisteredClient, TokenServer, serve_config
from tests.helpers import ServerThread
from tests.pki import Issued, Pki

TIMEOUT = 10.0


def channel_credentials(pki: Pki, cert: Issued | None = None) -> grpc.ChannelCredentials:
    """TLS trusting the test CA, presenting ``cert`` (mutual TLS) when given."""
    if cert is None:
        return grpc.ssl_channel_credentials(pki.ca.cert_pem)
    return grpc.ssl_channel_credentials(pki.ca.cert_pem, cert.key_pem, cert.cert_pem)


def secure_channel(port: int, pki: Pki, cert: Issued | None = None) -> grpc.Channel:
    """A channel to ``localhost:port`` (the server certificate's name)."""
    return grpc.secure_channel(f"localhost:{port}", channel_credentials(pki, cert))


def issue(
    port: int, pki: Pki, client: RegisteredClient, cert: Issued | None = None, *, audience: str = "payments"
) -> str:
    """An access token from IssueToken on ``port``, the secret in the request body."""
    with secure_channel(port, pki, cert) as channel:
        response = token_pb2_grpc.TokenServiceStub(channel).IssueToken(
            token_pb2.IssueTokenRequest(
                grant_type="client_credentials",
                client_id=client.client_id,
                client_secret=client.secret,
                audience=[audience],
            ),
            timeout=TIMEOUT,
        )
    return str(response.access_token)


def claims(token: str) -> dict[str, Any]:
    """The claims of a JWS, unverified (for assertions only)."""
    payload = token.split(".")[1]
    return dict(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))))


def https_context(pki: Pki, cert: Issued | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki.ca.cert_path))
    if cert is not None:
        context.load_cert_chain(cert.cert_path, cert.key_path)
    return context


def post_form(url: str, form: str, pki: Pki, cert: Issued | None = None) -> tuple[int, dict[str, Any]]:
    """POST an ``application/x-www-form-urlencoded`` body over https; status and JSON answer."""
    request = urllib.request.Request(  # noqa: S310 - tests build https:// URLs only
        url, data=form.encode(), headers={"Content-Type": "application/x-www-form-urlencoded"}
    )
    try:
        with urllib.request.urlopen(  # noqa: S310 - an https:// URL to a test server
            request, context=https_context(pki, cert), timeout=TIMEOUT
        ) as answer:
            return answer.status, dict(json.load(answer))
    except urllib.error.HTTPError as exc:
        return exc.code, dict(json.load(exc))


def mtls_config_overrides(pki: Pki) -> dict[str, object]:
    return {
        "tls_cert": pki.server.cert_path,
        "tls_key": pki.server.key_path,
        "client_ca": pki.ca.cert_path,
        "mtls_listen": "127.0.0.1:0",
        "http_listen": "127.0.0.1:0",
        "mtls_http_listen": "127.0.0.1:0",
    }


def start_mtls_token_server(data_dir: Path, pki: Pki, **overrides: object) -> TokenServer:
    config = serve_config(data_dir, **{**mtls_config_overrides(pki), **overrides})
    thread: ServerThread[RunningServer] = ServerThread(
        lambda: start_server(config, authority=open_authority(config))
    )
    return TokenServer(thread.start(), config, thread)
