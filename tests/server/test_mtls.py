"""``authsvc serve --mtls-listen/--mtls-http-listen --client-ca`` (RFC 8705): listeners that
require a client certificate and bind the tokens they issue to it, against a real server."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import grpc
import pytest

from authsvc.core.errors import ConfigurationError
from authsvc.server.config import ServeConfig
from tests.conftest import KEK, RegisteredClient, TokenServer
from tests.helpers import Command
from tests.mtls import (
    TIMEOUT,
    claims,
    https_context,
    issue,
    post_form,
    start_mtls_token_server,
)
from tests.pki import Pki
from tests.server.test_failing_well import refused

# -- gRPC ---------------------------------------------------------------------------------------


def test_token_issued_on_the_mtls_port_is_bound_to_the_certificate(
    mtls_token_server: TokenServer, pki: Pki
) -> None:
    client = mtls_token_server.register()
    token = issue(mtls_token_server.running.mtls_port or 0, pki, client, pki.client)
    assert claims(token)["cnf"] == {"x5t#S256": pki.client.thumbprint}


def test_each_certificate_binds_its_own_tokens(mtls_token_server: TokenServer, pki: Pki) -> None:
    client = mtls_token_server.register()
    port = mtls_token_server.running.mtls_port or 0
    first, second = issue(port, pki, client, pki.client), issue(port, pki, client, pki.other_client)
    assert claims(first)["cnf"]["x5t#S256"] == pki.client.thumbprint
    assert claims(second)["cnf"]["x5t#S256"] == pki.other_client.thumbprint != pki.client.thumbprint


def test_token_issued_on_the_plain_tls_port_is_unbound(mtls_token_server: TokenServer, pki: Pki) -> None:
    client = mtls_token_server.register()
    assert "cnf" not in claims(issue(mtls_token_server.running.port, pki, client))


def test_plain_tls_port_never_asks_for_a_certificate(mtls_token_server: TokenServer, pki: Pki) -> None:
    # a client ready to present one is not asked for it: the token stays unbound
    client = mtls_token_server.register()
    assert "cnf" not in claims(issue(mtls_token_server.running.port, pki, client, pki.client))


@pytest.mark.parametrize("cert", ["none", "foreign"])
def test_mtls_port_refuses_the_handshake_without_a_trusted_certificate(
    mtls_token_server: TokenServer, pki: Pki, cert: str
) -> None:
    client = mtls_token_server.register()
    presented = None if cert == "none" else pki.foreign_client
    with pytest.raises(grpc.RpcError) as info:
        issue(mtls_token_server.running.mtls_port or 0, pki, client, presented)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE  # no TLS session: no RPC at all


def test_a_certificate_does_not_stand_in_for_a_wrong_secret(mtls_token_server: TokenServer, pki: Pki) -> None:
    client = mtls_token_server.register()
    client.secret = "authsvc_cs_not-the-secret"
    with pytest.raises(grpc.RpcError) as info:
        issue(mtls_token_server.running.mtls_port or 0, pki, client, pki.client)
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_the_audit_event_names_the_bound_certificate(
    mtls_token_server: TokenServer, pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    client = mtls_token_server.register()
    with caplog.at_level(logging.INFO, logger="authsvc.audit"):
        token = issue(mtls_token_server.running.mtls_port or 0, pki, client, pki.client)
        plain = issue(mtls_token_server.running.port, pki, client)
    issued = {getattr(r, "jti", None): r for r in caplog.records if getattr(r, "event", "") == "token.issued"}
    assert getattr(issued[claims(token)["jti"]], "x5t#S256") == pki.client.thumbprint
    assert not hasattr(issued[claims(plain)["jti"]], "x5t#S256")


# -- HTTP -------------------------------------------------------------------------------------


def _token_form(client: RegisteredClient) -> str:
    return f"grant_type=client_credentials&client_id={client.client_id}&client_secret={client.secret}"


def test_http_token_over_mutual_tls_is_bound(mtls_token_server: TokenServer, pki: Pki) -> None:
    client = mtls_token_server.register()
    url = f"https://localhost:{mtls_token_server.running.mtls_http_port}/oauth2/token"
    status, body = post_form(url, _token_form(client), pki, pki.client)
    assert status == 200
    assert claims(body["access_token"])["cnf"] == {"x5t#S256": pki.client.thumbprint}


def test_http_token_over_plain_tls_is_unbound(mtls_token_server: TokenServer, pki: Pki) -> None:
    client = mtls_token_server.register()
    url = f"https://localhost:{mtls_token_server.running.http_port}/oauth2/token"
    status, body = post_form(url, _token_form(client), pki, pki.client)
    assert status == 200 and "cnf" not in claims(body["access_token"])


@pytest.mark.parametrize("cert", ["none", "foreign"])
def test_http_mtls_listener_refuses_the_handshake_without_a_trusted_certificate(
    mtls_token_server: TokenServer, pki: Pki, cert: str
) -> None:
    client = mtls_token_server.register()
    url = f"https://localhost:{mtls_token_server.running.mtls_http_port}/oauth2/token"
    with pytest.raises((urllib.error.URLError, ConnectionError, OSError)):
        post_form(url, _token_form(client), pki, None if cert == "none" else pki.foreign_client)


def _metadata(port: int, pki: Pki) -> dict[str, Any]:
    url = f"https://localhost:{port}/.well-known/oauth-authorization-server"
    with urllib.request.urlopen(url, context=https_context(pki), timeout=TIMEOUT) as answer:
        return dict(json.load(answer))


def test_metadata_names_the_mtls_endpoints(mtls_token_server: TokenServer, pki: Pki) -> None:
    document = _metadata(mtls_token_server.running.http_port, pki)
    port = mtls_token_server.running.mtls_http_port
    assert document["tls_client_certificate_bound_access_tokens"] is True
    assert document["mtls_endpoint_aliases"] == {
        "token_endpoint": f"https://auth.test:{port}/oauth2/token",
        "introspection_endpoint": f"https://auth.test:{port}/oauth2/introspect",
        "revocation_endpoint": f"https://auth.test:{port}/oauth2/revoke",
    }


def test_metadata_uses_the_configured_mtls_base_url(tmp_path: Path, pki: Pki) -> None:
    server = start_mtls_token_server(
        tmp_path / "d", pki, issuer="https://auth.test/tenant", mtls_base_url="https://mtls.auth.test"
    )
    try:
        url = f"https://localhost:{server.running.http_port}/tenant/.well-known/oauth-authorization-server"
        with urllib.request.urlopen(url, context=https_context(pki), timeout=TIMEOUT) as answer:
            aliases = json.load(answer)["mtls_endpoint_aliases"]
        assert aliases["token_endpoint"] == "https://mtls.auth.test/tenant/oauth2/token"
        # and the alias is where the listener really serves it (under the issuer's path)
        status, _ = post_form(
            f"https://localhost:{server.running.mtls_http_port}/tenant/oauth2/token",
            _token_form(server.register()),
            pki,
            pki.client,
        )
        assert status == 200
    finally:
        server.stop()


def test_metadata_with_only_the_grpc_mtls_port(tmp_path: Path, pki: Pki) -> None:
    server = start_mtls_token_server(tmp_path / "d", pki, mtls_http_listen=None)
    try:
        document = _metadata(server.running.http_port, pki)
        assert document["tls_client_certificate_bound_access_tokens"] is True
        assert "mtls_endpoint_aliases" not in document  # no HTTP endpoint does mutual TLS
    finally:
        server.stop()


def test_metadata_without_mtls_says_nothing_of_it(tmp_path: Path, pki: Pki) -> None:
    server = start_mtls_token_server(
        tmp_path / "d", pki, mtls_listen=None, mtls_http_listen=None, client_ca=None
    )
    try:
        document = _metadata(server.running.http_port, pki)
        assert "tls_client_certificate_bound_access_tokens" not in document
        assert "mtls_endpoint_aliases" not in document
    finally:
        server.stop()


def test_introspection_reports_the_binding(mtls_token_server: TokenServer, pki: Pki) -> None:
    client = mtls_token_server.register()
    bound = issue(mtls_token_server.running.mtls_port or 0, pki, client, pki.client)
    unbound = issue(mtls_token_server.running.port, pki, client)
    url = f"https://localhost:{mtls_token_server.running.http_port}/oauth2/introspect"
    credentials = f"client_id={client.client_id}&client_secret={client.secret}"
    # introspected over plain TLS, without the certificate: the caller asks about the token
    status, body = post_form(url, f"token={bound}&{credentials}", pki)
    assert status == 200 and body["active"] is True
    assert body["cnf"] == {"x5t#S256": pki.client.thumbprint}
    status, body = post_form(url, f"token={unbound}&{credentials}", pki)
    assert status == 200 and body["active"] is True and "cnf" not in body


# -- configuration ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"client_ca": None}, "--mtls-listen needs --client-ca"),
        ({"tls_cert": None, "tls_key": None}, "--mtls-listen needs --tls-cert"),
        ({"mtls_listen": None, "mtls_http_listen": None}, "--client-ca is used by --mtls-listen"),
        ({"mtls_http_listen": None, "mtls_base_url": "https://m.test"}, "--mtls-base-url"),
        ({"mtls_http_listen": "127.0.0.1:0", "mtls_base_url": "http://m.test"}, "https:// origin"),
        ({"mtls_http_listen": "127.0.0.1:0", "mtls_base_url": "https://m.test/p"}, "https:// origin"),
        ({"mtls_listen": "127.0.0.1:8443", "listen": "127.0.0.1:8443"}, "give each its own port"),
        ({"mtls_listen": "nonsense"}, "--mtls-listen 'nonsense' is not HOST:PORT"),
        ({"workers": 2, "listen": "127.0.0.1:9000"}, "give --mtls-listen a fixed HOST:PORT"),
    ],
    ids=[
        "no-ca",
        "no-server-cert",
        "ca-without-listener",
        "base-url-without-http",
        "base-url-http",
        "base-url-path",
        "same-port",
        "malformed",
        "workers-port-0",
    ],
)
def test_mtls_configuration_mistakes(
    tmp_path: Path, pki: Pki, overrides: dict[str, object], expected: str
) -> None:
    settings: dict[str, Any] = {
        "data_dir": tmp_path,
        "tls_cert": pki.server.cert_path,
        "tls_key": pki.server.key_path,
        "client_ca": pki.ca.cert_path,
        "mtls_listen": "127.0.0.1:0",
        **overrides,
    }
    with pytest.raises(ConfigurationError) as info:
        ServeConfig(**settings)
    assert expected in str(info.value)


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("AUTHSVC_")}
    return {**base, "HOME": str(tmp_path), "XDG_DATA_HOME": str(tmp_path / "xdg"), "AUTHSVC_KEK": KEK}


def _serve(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "authsvc.cli", "serve", "--listen", "127.0.0.1:0", *args],
        check=False,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_cli_refuses_a_client_ca_that_is_not_pem(env: dict[str, str], tmp_path: Path, pki: Pki) -> None:
    bad = tmp_path / "ca.pem"
    bad.write_text("not a certificate\n")
    tls = ["--tls-cert", str(pki.server.cert_path), "--tls-key", str(pki.server.key_path)]
    refused(
        _serve(env, *tls, "--mtls-listen", "127.0.0.1:0", "--client-ca", str(bad)),
        "--client-ca",
        "holds no PEM certificate",
    )


def test_cli_refuses_a_client_certificate_given_as_the_ca(env: dict[str, str], pki: Pki) -> None:
    tls = ["--tls-cert", str(pki.server.cert_path), "--tls-key", str(pki.server.key_path)]
    refused(
        _serve(env, *tls, "--mtls-listen", "127.0.0.1:0", "--client-ca", str(pki.client.cert_path)),
        "--client-ca",
        "not a CA",
    )


def test_cli_refuses_a_missing_client_ca(env: dict[str, str], tmp_path: Path, pki: Pki) -> None:
    tls = ["--tls-cert", str(pki.server.cert_path), "--tls-key", str(pki.server.key_path)]
    refused(
        _serve(env, *tls, "--mtls-listen", "127.0.0.1:0", "--client-ca", str(tmp_path / "absent.pem")),
        "cannot read --client-ca",
    )


def test_cli_refuses_mtls_without_the_server_certificate(env: dict[str, str], pki: Pki) -> None:
    refused(
        _serve(env, "--mtls-listen", "127.0.0.1:0", "--client-ca", str(pki.ca.cert_path)),
        "--mtls-listen needs --tls-cert",
    )


def test_cli_serves_mtls_from_the_environment(env: dict[str, str], pki: Pki) -> None:
    """AUTHSVC_MTLS_LISTEN and AUTHSVC_CLIENT_CA, as a deployment sets them; the start-up line
    says where mutual TLS listens, and a token from there is bound."""
    env = {
        **env,
        "AUTHSVC_TLS_CERT": str(pki.server.cert_path),
        "AUTHSVC_TLS_KEY": str(pki.server.key_path),
        "AUTHSVC_MTLS_LISTEN": "127.0.0.1:0",
        "AUTHSVC_CLIENT_CA": str(pki.ca.cert_path),
    }
    created = subprocess.run(
        [sys.executable, "-m", "authsvc.cli", "clients", "create", "--client-id", "shop",
         "--scope", "payments:read", "--audience", "payments", "-o", "json"],
        env=env, capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    secret = json.loads(created.stdout)["client_secret"]
    command = Command([sys.executable, "-m", "authsvc.cli", "serve", "--listen", "127.0.0.1:0"], env)
    try:
        line = next(line for line in command.log if "listening on" in line)
        assert "mutual TLS on 127.0.0.1:" in line
        mtls_port = int(line.split("mutual TLS on 127.0.0.1:")[1].split(",")[0].split()[0])
        token = issue(mtls_port, pki, RegisteredClient("shop", secret), pki.client)
        assert claims(token)["cnf"] == {"x5t#S256": pki.client.thumbprint}
    finally:
        assert command.terminate() == 0
