"""``tls_client_auth`` in the core: which requests present it, and what its handler accepts."""

from __future__ import annotations

from dataclasses import replace

from authsvc.core.auth_methods import TlsClientAuth
from authsvc.core.certs import ClientCertificate
from authsvc.core.client_auth import PresentedCredentials, presented_credentials
from authsvc.core.clients import AuthRegistration, Client, ClientAuthMethod, new_client
from tests.pki import Pki

TLS = ClientAuthMethod.TLS_CLIENT_AUTH


def make_client() -> Client:
    return new_client(
        client_id="shop",
        secret_hash="",
        scopes=["payments:write"],
        audiences=["payments"],
        now=1_700_000_000,
        auth=AuthRegistration(method=TLS, tls_san_dns="placeholder.example"),
    )


def _cert(pki: Pki) -> ClientCertificate:
    return ClientCertificate.from_der(pki.client.der)  # SAN shop.example


def test_a_client_id_alone_on_a_mutual_tls_connection_presents_tls_client_auth(pki: Pki) -> None:
    presented = presented_credentials([], client_id="shop", client_certificate=_cert(pki))
    assert (presented.method, presented.client_id) == (TLS, "shop")
    assert presented.client_certificate == _cert(pki)


def test_a_secret_on_a_mutual_tls_connection_stays_the_secret_method_and_keeps_the_certificate(
    pki: Pki,
) -> None:
    presented = presented_credentials(
        [], client_id="shop", client_secret="s3cret", client_certificate=_cert(pki)
    )
    assert presented.method is ClientAuthMethod.CLIENT_SECRET_POST
    assert presented.client_certificate == _cert(pki)


def test_without_a_certificate_nothing_presents_tls_client_auth() -> None:
    assert presented_credentials([], client_id="shop").method is ClientAuthMethod.CLIENT_SECRET_POST


def test_the_handler_matches_the_registered_dns_name_exactly(pki: Pki) -> None:
    handler = TlsClientAuth()
    presented = PresentedCredentials(TLS, "shop", client_certificate=_cert(pki))
    client = make_client()
    assert handler.check(presented, replace(client, tls_san_dns="shop.example"), registered=True) is None
    assert handler.check(presented, replace(client, tls_san_dns="SHOP.example"), registered=True) is None
    for other in ("example", "x.shop.example", "*.example", "shop.example.evil"):
        assert (
            handler.check(presented, replace(client, tls_san_dns=other), registered=True)
            == "certificate_mismatch"
        )


def test_the_handler_matches_the_registered_subject_exactly(pki: Pki) -> None:
    handler = TlsClientAuth()
    presented = PresentedCredentials(TLS, "shop", client_certificate=_cert(pki))
    subject = _cert(pki).subject_dn
    client = make_client()
    assert handler.check(presented, replace(client, tls_subject_dn=subject), registered=True) is None
    assert (
        handler.check(presented, replace(client, tls_subject_dn=subject + ",O=x"), registered=True)
        is not None
    )


def test_the_decoy_never_matches(pki: Pki) -> None:
    # an unknown id is checked against the decoy: whatever it carries, no match
    presented = PresentedCredentials(TLS, "shop", client_certificate=_cert(pki))
    decoy = replace(make_client(), tls_san_dns="shop.example")
    assert TlsClientAuth().check(presented, decoy, registered=False) == "certificate_mismatch"
