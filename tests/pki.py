"""Test certificates for mutual TLS, generated once per test session (EC P-256: milliseconds).

``pki`` (a session fixture) holds a CA; a server certificate for ``localhost`` and 127.0.0.1;
two client certificates from that CA (``client`` and ``other_client``, the second an attacker's
own valid certificate); and a second CA with a client certificate of its own (``foreign_client``),
which servers trusting only the first CA must refuse. Each has PEM bytes, DER bytes and files.
"""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from authsvc.core.certs import certificate_thumbprint


@dataclass(frozen=True)
class Issued:
    """One certificate and its key, as bytes and as files."""

    cert_pem: bytes
    key_pem: bytes
    der: bytes
    cert_path: Path
    key_path: Path
    key: ec.EllipticCurvePrivateKey
    name: x509.Name

    @property
    def thumbprint(self) -> str:
        """RFC 8705 §3.1 x5t#S256."""
        return certificate_thumbprint(self.der)


@dataclass(frozen=True)
class Pki:
    ca: Issued
    server: Issued
    client: Issued
    other_client: Issued
    foreign_ca: Issued
    foreign_client: Issued
    directory: Path

    def issue(
        self,
        name: str,
        *,
        ca: Issued | None = None,
        san_dns: Sequence[str] = (),
        server: bool = False,
    ) -> Issued:
        """Another certificate from ``ca`` (default: the main CA)."""
        return _issue(self.directory, name, ca or self.ca, san_dns=san_dns, server=server)


_SERVER, _CLIENT = ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH
_NOW = datetime.datetime.now(datetime.UTC)


def _write(directory: Path, stem: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> Issued:
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    cert_path, key_path = directory / f"{stem}.crt", directory / f"{stem}.key"
    cert_path.write_bytes(cert_pem)
    key_path.write_bytes(key_pem)
    key_path.chmod(0o600)
    der = cert.public_bytes(serialization.Encoding.DER)
    return Issued(cert_pem, key_pem, der, cert_path, key_path, key, cert.subject)


_CA_KEY_USAGE = x509.KeyUsage(
    digital_signature=True,
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=True,
    crl_sign=True,
    encipher_only=False,
    decipher_only=False,
)


def _ca(directory: Path, stem: str, common_name: str) -> Issued:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_NOW - datetime.timedelta(hours=1))
        .not_valid_after(_NOW + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_CA_KEY_USAGE, critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return _write(directory, stem, cert, key)


def _issue(
    directory: Path, name: str, ca: Issued, *, san_dns: Sequence[str] = (), server: bool = False
) -> Issued:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "authsvc tests"),
            x509.NameAttribute(NameOID.COMMON_NAME, name),
        ]
    )
    general: list[x509.GeneralName] = [x509.DNSName(d) for d in san_dns]
    if server:
        general += [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca.name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_NOW - datetime.timedelta(hours=1))
        .not_valid_after(_NOW + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([_SERVER if server else _CLIENT]),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False
        )
    )
    if general:
        builder = builder.add_extension(x509.SubjectAlternativeName(general), critical=False)
    cert = builder.sign(ca.key, hashes.SHA256())
    stem = name.replace(".", "_").replace("/", "_")
    return _write(directory, stem, cert, key)


def make_pki(directory: Path) -> Pki:
    directory.mkdir(parents=True, exist_ok=True)
    ca = _ca(directory, "ca", "authsvc test CA")
    foreign_ca = _ca(directory, "foreign-ca", "someone else's CA")
    return Pki(
        ca=ca,
        server=_issue(directory, "localhost", ca, server=True),
        client=_issue(directory, "shop", ca, san_dns=["shop.example"]),
        other_client=_issue(directory, "intruder", ca, san_dns=["intruder.example"]),
        foreign_ca=foreign_ca,
        foreign_client=_issue(directory, "foreign-shop", foreign_ca, san_dns=["shop.example"]),
        directory=directory,
    )


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))
