"""The peer of ``bench_http_token.py``: an Authlib token endpoint on Flask, served by gunicorn.

``POST /oauth2/token`` is Authlib's :class:`~authlib.integrations.flask_oauth2.AuthorizationServer`
with the RFC 6749 §4.4 :class:`~authlib.oauth2.rfc6749.grants.ClientCredentialsGrant`
(``client_secret_basic``, its default) and Authlib's RFC 9068
:class:`~authlib.oauth2.rfc9068.JWTBearerTokenGenerator`, which signs RS256 ``at+jwt`` access tokens
with joserfc (on cryptography). It is written to do per request what ``authsvc serve`` does, no
more and no less:

- one client, in memory (authsvc serves a cached client from memory too), its secret kept as
  ``HMAC-SHA256(pepper, secret)`` and checked with :func:`hmac.compare_digest`, as authsvc does;
- the requested scope checked against the client's allowed scopes;
- claims ``iss``, ``sub``, ``aud``, ``exp``, ``iat``, ``jti``, ``client_id``, ``scope`` (Authlib's
  generator adds no ``nbf``; authsvc does), header ``alg``, ``typ``, ``kid`` (the RFC 7638
  thumbprint); one RSA-2048 signature with a key parsed once at start-up;
- the RFC 6749 §5.1 JSON answer with ``Cache-Control: no-store``; ``save_token`` stores nothing
  (authsvc does not store issued tokens either), and gunicorn keeps no access log.

Configured by the environment (gunicorn imports ``tests.bench.peer_authlib:app``):
``PEER_KEY_FILE`` (a PKCS#8 PEM RSA private key), ``PEER_CLIENT_ID``, ``PEER_CLIENT_SECRET``,
``PEER_SCOPE``, ``PEER_AUDIENCE``, ``PEER_ISSUER``, ``PEER_TOKEN_TTL``. ``GET /healthz`` answers
``ok`` for the readiness check.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path
from typing import Any

from authlib.integrations.flask_oauth2 import AuthorizationServer
from authlib.oauth2.rfc6749 import ClientMixin
from authlib.oauth2.rfc6749.grants import ClientCredentialsGrant
from authlib.oauth2.rfc9068 import JWTBearerTokenGenerator
from flask import Flask, Response
from joserfc.jwk import KeySet, RSAKey

__all__ = ["app", "create_app"]

TOKEN_PATH = "/oauth2/token"


class MemoryClient(ClientMixin):  # type: ignore[misc]
    """A confidential client that may use the client credentials grant with ``client_secret_basic``."""

    def __init__(self, client_id: str, secret: str, scopes: frozenset[str], audience: str) -> None:
        self.client_id = client_id
        self.audience = audience
        self._scopes = scopes
        self._pepper = secrets.token_bytes(32)
        self._secret_hash = self._digest(secret)

    def _digest(self, secret: str) -> bytes:
        return hmac.new(self._pepper, secret.encode(), hashlib.sha256).digest()

    def get_client_id(self) -> str:
        return self.client_id

    def get_default_redirect_uri(self) -> str | None:
        return None

    def get_allowed_scope(self, scope: str | None) -> str:
        """RFC 6749 §3.3: the requested scopes the client may have (all of them when none is asked)."""
        if not scope:
            return " ".join(sorted(self._scopes))
        return " ".join(s for s in scope.split() if s in self._scopes)

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        return False

    def check_client_secret(self, client_secret: str) -> bool:
        return hmac.compare_digest(self._digest(client_secret), self._secret_hash)

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        return endpoint == "token" and method == "client_secret_basic"

    def check_response_type(self, response_type: str) -> bool:
        return False

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type == "client_credentials"


class JwtTokens(JWTBearerTokenGenerator):  # type: ignore[misc]
    """RFC 9068 access tokens signed with one RSA key, for the client's one audience."""

    def __init__(self, issuer: str, keys: KeySet, ttl: int) -> None:
        super().__init__(issuer=issuer, alg="RS256", expires_generator=ttl)
        self._keys = keys

    def get_jwks(self) -> KeySet:
        return self._keys

    def get_audiences(self, client: MemoryClient, user: object, scope: str) -> str:
        return client.audience


def create_app(environ: dict[str, str] | None = None) -> Flask:
    env = os.environ if environ is None else environ
    key = RSAKey.import_key(Path(env["PEER_KEY_FILE"]).read_bytes())
    key.ensure_kid()  # the RFC 7638 thumbprint, as authsvc's kid
    client = MemoryClient(
        env["PEER_CLIENT_ID"],
        env["PEER_CLIENT_SECRET"],
        frozenset(env["PEER_SCOPE"].split()),
        env["PEER_AUDIENCE"],
    )

    def query_client(client_id: str) -> MemoryClient | None:
        return client if hmac.compare_digest(client_id.encode(), client.client_id.encode()) else None

    def save_token(token: dict[str, Any], request: object) -> None:
        return None

    flask_app = Flask("peer_authlib")
    server = AuthorizationServer(flask_app, query_client=query_client, save_token=save_token)
    server.register_grant(ClientCredentialsGrant)
    server.register_token_generator(
        "default", JwtTokens(env["PEER_ISSUER"], KeySet([key]), int(env.get("PEER_TOKEN_TTL", "300")))
    )

    @flask_app.post(TOKEN_PATH)
    def issue_token() -> Response:
        return server.create_token_response()  # type: ignore[no-any-return]

    @flask_app.get("/healthz")
    def healthz() -> str:
        return "ok"

    return flask_app


app = create_app() if "PEER_KEY_FILE" in os.environ else None
