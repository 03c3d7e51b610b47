"""The client certificate of a mutual-TLS connection, as the token endpoint sees it (RFC 8705).

The edge that terminated TLS (the gRPC or HTTP listener started with a client CA) hands the core
the certificate the client presented, already verified against that CA by the TLS stack, as
DER or PEM bytes; :class:`ClientCertificate` keeps what the token endpoint uses:

- ``thumbprint``: the RFC 8705 §3.1 certificate thumbprint, base64url(SHA-256(DER)) without
  padding: the ``x5t#S256`` member of the ``cnf`` claim (RFC 7800 §3.1) of every token issued
  over that connection, which verifiers compare with the certificate of each call;
- ``subject_dn`` and the subject alternative names, for ``tls_client_auth`` (§2.1.2): the client
  authenticates by its certificate alone when they match its registration.

Pure: parsing with ``cryptography``, no transport, no clock (the TLS stack checked validity).
"""

from __future__ import annotations

import binascii
import hashlib
from dataclasses import dataclass
from typing import Final, TypedDict

from authsvc.core.errors import InvalidClient
from authsvc.core.keys import b64url

__all__ = [
    "X5T_S256",
    "ClientCertificate",
    "Confirmation",
    "certificate_thumbprint",
    "confirmation",
    "pem_to_der",
]

X5T_S256: Final = "x5t#S256"
"""RFC 8705 §3.1: the ``cnf`` member that carries the certificate's SHA-256 thumbprint."""

Confirmation = TypedDict("Confirmation", {"x5t#S256": str})
"""RFC 7800 §3.1 ``cnf`` claim of a certificate-bound token: ``{"x5t#S256": thumbprint}``."""

_MAX_CERTIFICATE_BYTES = 16 * 1024  # a leaf certificate is one or two kilobytes


def certificate_thumbprint(der: bytes) -> str:
    """RFC 8705 §3.1: base64url (no padding) of the SHA-256 of the certificate's DER encoding."""
    return b64url(hashlib.sha256(der).digest())


def confirmation(certificate: ClientCertificate) -> Confirmation:
    """The ``cnf`` claim that binds a token to ``certificate`` (RFC 8705 §3.1)."""
    return {X5T_S256: certificate.thumbprint}


@dataclass(frozen=True, slots=True)
class ClientCertificate:
    """The leaf certificate a client presented over mutual TLS, verified by the TLS stack.

    ``subject_dn`` is the subject as an RFC 4514 string (``CN=shop,O=Example``, most specific
    first), what ``tls_client_auth_subject_dn`` registrations are written in; the ``san_*``
    tuples are the subject alternative names of each kind (RFC 8705 §2.1.2), IP addresses in
    their compressed text form.
    """

    der: bytes
    thumbprint: str
    subject_dn: str
    san_dns: tuple[str, ...] = ()
    san_uri: tuple[str, ...] = ()
    san_ip: tuple[str, ...] = ()
    san_email: tuple[str, ...] = ()

    def __repr__(self) -> str:  # the DER is long and says nothing a log line needs
        return f"ClientCertificate(subject_dn={self.subject_dn!r}, thumbprint={self.thumbprint!r})"

    @classmethod
    def from_der(cls, der: bytes) -> ClientCertificate:
        """Parse a DER certificate; InvalidClient if it is not one (the TLS stack accepted it,
        so this means the edge handed over something else)."""
        # here, not at the top: cryptography.x509 is a third of the start-up of every command
        # that loads the token endpoint (`authsvc clients ...` among them); `serve --client-ca`
        # loads it at start-up anyway (authsvc.listen.check_client_ca parses the CA file)
        from cryptography import x509  # noqa: PLC0415

        if not der or len(der) > _MAX_CERTIFICATE_BYTES:
            raise InvalidClient("the client certificate could not be read")
        try:
            cert = x509.load_der_x509_certificate(der)
            subject_dn = cert.subject.rfc4514_string()
            try:
                names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            except x509.ExtensionNotFound:
                names = x509.SubjectAlternativeName([])
            san_ip = tuple(str(a) for a in names.get_values_for_type(x509.IPAddress))
            return cls(
                der=der,
                thumbprint=certificate_thumbprint(der),
                subject_dn=subject_dn,
                san_dns=tuple(names.get_values_for_type(x509.DNSName)),
                san_uri=tuple(names.get_values_for_type(x509.UniformResourceIdentifier)),
                san_ip=san_ip,
                san_email=tuple(names.get_values_for_type(x509.RFC822Name)),
            )
        except (ValueError, TypeError) as exc:
            raise InvalidClient("the client certificate could not be read") from exc

    @classmethod
    def from_pem(cls, pem: bytes | str) -> ClientCertificate:
        """Parse the first PEM certificate of ``pem`` (what grpc's ``x509_pem_cert`` holds)."""
        return cls.from_der(pem_to_der(pem))


_BEGIN, _END = "-----BEGIN CERTIFICATE-----", "-----END CERTIFICATE-----"


def pem_to_der(pem: bytes | str) -> bytes:
    """The DER bytes of the first certificate in ``pem``; InvalidClient if there is none."""
    text = pem.decode("ascii", "replace") if isinstance(pem, bytes) else pem
    start = text.find(_BEGIN)
    end = text.find(_END, start + len(_BEGIN))
    if start < 0 or end < 0:
        raise InvalidClient("the client certificate could not be read")
    body = "".join(text[start + len(_BEGIN) : end].split())
    try:
        return binascii.a2b_base64(body.encode("ascii"), strict_mode=True)
    except (binascii.Error, UnicodeError, ValueError) as exc:
        raise InvalidClient("the client certificate could not be read") from exc
