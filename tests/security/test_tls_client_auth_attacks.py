"""``tls_client_auth`` (RFC 8705 §2.1): a client that authenticates with its certificate alone,
against a real TokenService with mutual-TLS listeners. Each way around it is refused by name."""

from __future__ import annotations

import logging

import grpc
import pytest

from authsvc.authority.clients import ClientRegistry
from authsvc.core.certs import ClientCertificate
from authsvc.core.clients import AuthRegistration, ClientAuthMethod
from authsvc.v1 import token_pb2, token_pb2_grpc
from tests.conftest import TokenServer
from tests.mtls import TIMEOUT, claims, post_form, secure_channel
from tests.pki import Issued, Pki

TLS = ClientAuthMethod.TLS_CLIENT_AUTH


def _register(server: TokenServer, client_id: str = "cert-shop", **data: str) -> None:
    registry: ClientRegistry = server.authority.clients
    registry.register(
        client_id=client_id,
        scopes=["payments:write"],
        audiences=["payments"],
        auth=AuthRegistration(method=TLS, **data),  # type: ignore[arg-type]
    )


def _issue(port: int, pki: Pki, cert: Issued | None, client_id: str = "cert-shop", secret: str = "") -> str:
    with secure_channel(port, pki, cert) as channel:
        answer = token_pb2_grpc.TokenServiceStub(channel).IssueToken(
            token_pb2.IssueTokenRequest(
                grant_type="client_credentials",
                client_id=client_id,
                client_secret=secret,
                audience=["payments"],
            ),
            timeout=TIMEOUT,
        )
    return str(answer.access_token)


def _refused(port: int, pki: Pki, cert: Issued | None, client_id: str = "cert-shop") -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        _issue(port, pki, cert, client_id)
    return info.value


def _mtls(server: TokenServer) -> int:
    return server.running.mtls_port or 0


def test_tls_client_auth_gets_a_bound_token_with_its_certificate_alone(
    mtls_token_server: TokenServer, pki: Pki
) -> None:
    _register(mtls_token_server, tls_san_dns="shop.example")
    token = _issue(_mtls(mtls_token_server), pki, pki.client)
    assert claims(token)["sub"] == "cert-shop"
    assert claims(token)["cnf"] == {"x5t#S256": pki.client.thumbprint}


def test_tls_client_auth_by_subject_dn(mtls_token_server: TokenServer, pki: Pki) -> None:
    subject = ClientCertificate.from_der(pki.client.der).subject_dn
    _register(mtls_token_server, tls_subject_dn=subject)
    assert claims(_issue(_mtls(mtls_token_server), pki, pki.client))["sub"] == "cert-shop"


def test_tls_client_auth_over_the_http_mtls_listener(mtls_token_server: TokenServer, pki: Pki) -> None:
    _register(mtls_token_server, tls_san_dns="shop.example")
    url = f"https://localhost:{mtls_token_server.running.mtls_http_port}/oauth2/token"
    status, body = post_form(url, "grant_type=client_credentials&client_id=cert-shop", pki, pki.client)
    assert status == 200
    assert claims(body["access_token"])["cnf"] == {"x5t#S256": pki.client.thumbprint}


def test_the_metadata_offers_tls_client_auth(mtls_token_server: TokenServer, pki: Pki) -> None:
    url = f"https://localhost:{mtls_token_server.running.mtls_http_port}/oauth2/token"
    status, body = post_form(url, "grant_type=client_credentials&client_id=nobody", pki, pki.client)
    assert status == 401 and body["error"] == "invalid_client"
    from tests.server.test_mtls import _metadata  # the same reader as the mTLS metadata tests

    document = _metadata(mtls_token_server.running.http_port, pki)
    assert TLS.value in document["token_endpoint_auth_methods_supported"]


def test_a_certificate_of_the_same_ca_with_another_name_is_refused(
    mtls_token_server: TokenServer, pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    _register(mtls_token_server, tls_san_dns="shop.example")
    with caplog.at_level(logging.INFO, logger="authsvc.audit"):
        error = _refused(_mtls(mtls_token_server), pki, pki.other_client)  # SAN intruder.example
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    reasons = [
        getattr(r, "reason", None) for r in caplog.records if getattr(r, "event", "") == "token.refused"
    ]
    assert reasons == ["certificate_mismatch"]


def test_a_subject_dn_registration_is_not_matched_by_another_subject(
    mtls_token_server: TokenServer, pki: Pki
) -> None:
    _register(mtls_token_server, tls_subject_dn=ClientCertificate.from_der(pki.client.der).subject_dn)
    assert _refused(_mtls(mtls_token_server), pki, pki.other_client).code() == grpc.StatusCode.UNAUTHENTICATED


def test_tls_client_auth_without_a_certificate_on_the_plain_port_is_refused(
    mtls_token_server: TokenServer, pki: Pki
) -> None:
    _register(mtls_token_server, tls_san_dns="shop.example")
    error = _refused(mtls_token_server.running.port, pki, None)
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED


def test_a_foreign_ca_certificate_with_the_registered_name_never_gets_a_session(
    mtls_token_server: TokenServer, pki: Pki
) -> None:
    _register(mtls_token_server, tls_san_dns="shop.example")  # foreign_client also says shop.example
    assert _refused(_mtls(mtls_token_server), pki, pki.foreign_client).code() == grpc.StatusCode.UNAVAILABLE


def test_a_secret_client_cannot_authenticate_with_a_certificate_alone(
    mtls_token_server: TokenServer, pki: Pki
) -> None:
    client = mtls_token_server.register(client_id="secret-shop")
    error = _refused(_mtls(mtls_token_server), pki, pki.client, client_id=client.client_id)
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    # and with its secret on the same connection it still works (the certificate binds the token)
    token = _issue(_mtls(mtls_token_server), pki, pki.client, client.client_id, client.secret)
    assert claims(token)["cnf"] == {"x5t#S256": pki.client.thumbprint}


def test_a_certificate_client_cannot_authenticate_with_a_guessed_secret(
    mtls_token_server: TokenServer, pki: Pki
) -> None:
    _register(mtls_token_server, tls_san_dns="shop.example")
    with pytest.raises(grpc.RpcError) as info:
        _issue(_mtls(mtls_token_server), pki, pki.client, secret="authsvc_cs_" + "A" * 43)
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_tls_client_auth_is_not_offered_without_a_mutual_tls_listener(token_server: TokenServer) -> None:
    # registered, but no port asks for certificates: nothing can present one
    _register(token_server, tls_san_dns="shop.example")
    with grpc.insecure_channel(token_server.target) as channel, pytest.raises(grpc.RpcError) as info:
        token_pb2_grpc.TokenServiceStub(channel).IssueToken(
            token_pb2.IssueTokenRequest(
                grant_type="client_credentials", client_id="cert-shop", audience=["payments"]
            ),
            timeout=TIMEOUT,
        )
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
