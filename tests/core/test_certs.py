"""The client certificate as the core sees it (RFC 8705): thumbprint, subject, names; and the
cnf claim of a token issued over mutual TLS."""

from __future__ import annotations

import base64
import hashlib

import pytest

from authsvc.core.certs import ClientCertificate, certificate_thumbprint, pem_to_der
from authsvc.core.errors import InvalidClient
from tests.pki import Pki


def test_thumbprint_is_base64url_sha256_of_the_der_without_padding(pki: Pki) -> None:
    expected = base64.urlsafe_b64encode(hashlib.sha256(pki.client.der).digest()).rstrip(b"=").decode()
    assert certificate_thumbprint(pki.client.der) == expected
    assert len(expected) == 43 and "=" not in expected


def test_parsed_from_pem_and_der_alike(pki: Pki) -> None:
    from_pem = ClientCertificate.from_pem(pki.client.cert_pem)
    assert from_pem == ClientCertificate.from_der(pki.client.der)
    assert from_pem.der == pki.client.der
    assert from_pem.thumbprint == pki.client.thumbprint
    assert from_pem.subject_dn == "CN=shop,O=authsvc tests"
    assert from_pem.san_dns == ("shop.example",)
    assert from_pem.san_uri == () and from_pem.san_email == ()


def test_server_certificate_ip_san_in_text_form(pki: Pki) -> None:
    cert = ClientCertificate.from_der(pki.server.der)
    assert cert.san_ip == ("127.0.0.1",)
    assert "localhost" in cert.san_dns


def test_repr_shows_no_der(pki: Pki) -> None:
    text = repr(ClientCertificate.from_der(pki.client.der))
    assert pki.client.thumbprint in text
    assert "der=" not in text


@pytest.mark.parametrize(
    "data",
    [b"", b"not a certificate", b"\x30\x03\x02\x01\x00", b"\x30" * 20_000],
    ids=["empty", "text", "short-der", "oversized"],
)
def test_garbage_is_invalid_client(data: bytes) -> None:
    with pytest.raises(InvalidClient):
        ClientCertificate.from_der(data)


@pytest.mark.parametrize(
    "pem",
    [
        b"",
        b"-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
        b"-----BEGIN CERTIFICATE-----\nAAAA",
    ],
    ids=["empty", "bad-base64", "no-end"],
)
def test_malformed_pem_is_invalid_client(pem: bytes) -> None:
    with pytest.raises(InvalidClient):
        pem_to_der(pem)
