"""Attacks on certificate-bound tokens and mutual TLS (RFC 8705), one named case each.

A real TokenService with a mutual-TLS port issues the tokens; real EchoServices (sync and asyncio)
guarded by the real interceptors verify them, each on a port that requires a client certificate
from the test CA and on a plain TLS port. Tokens are stolen (used by someone else), edited, or
forged with the issuer's real key where the point is their content. Each case asserts the status
code and the ErrorInfo reason, never the message text.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from authsvc.verify import GrpcJwksSource, TokenVerifier
from payments_svc.app import RunningPayments
from payments_svc.app import start_server as start_payments
from tests.conftest import ISSUER, RegisteredClient, TokenServer
from tests.helpers import ServerThread
from tests.keypool import rsa_key as pooled_rsa_key
from tests.mtls import channel_credentials, claims, https_context, issue, post_form, start_mtls_token_server
from tests.payments.test_mtls import payments_config
from tests.pki import Issued, Pki, make_pki
from tests.security.test_token_verification_attacks import Forge, b64
from tests.verify.echo import pb2, pb2_grpc
from tests.verify.test_interceptor import reason
from tests.verify.test_interceptor_binding import start_echo

READER = "echo-reader"
REFUSED = (grpc.StatusCode.UNAUTHENTICATED, "INVALID_TOKEN")
TIMEOUT = 10.0


@dataclass
class Target:
    """An EchoService of one kind and the TokenService whose tokens it accepts."""

    pki: Pki
    mtls_port: int
    tls_port: int
    issuer: TokenServer
    reader: RegisteredClient
    forge: Forge

    def bound(self, cert: Issued) -> str:
        return issue(self.issuer.running.mtls_port or 0, self.pki, self.reader, cert, audience="echo")

    def call(
        self,
        token: str,
        cert: Issued | None,
        *,
        mutual: bool = True,
        metadata: tuple[tuple[str, Any], ...] = (),
    ) -> tuple[grpc.StatusCode, str]:
        port = self.mtls_port if mutual else self.tls_port
        with grpc.secure_channel(f"localhost:{port}", channel_credentials(self.pki, cert)) as channel:
            try:
                response = pb2_grpc.EchoServiceStub(channel).Echo(
                    pb2.EchoRequest(text="x"),
                    metadata=(("authorization", f"Bearer {token}"), *metadata),
                    timeout=TIMEOUT,
                )
            except grpc.RpcError as exc:
                return reason(exc)
        return grpc.StatusCode.OK, response.caller


@pytest.fixture(scope="module")
def module_pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def issuer(tmp_path_factory: pytest.TempPathFactory, module_pki: Pki) -> Iterator[TokenServer]:
    server = start_mtls_token_server(tmp_path_factory.mktemp("authsvc") / "data", module_pki)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def reader(issuer: TokenServer) -> RegisteredClient:
    return issuer.register(READER, scopes=("echo:read",), audiences=("echo",))


@pytest.fixture(scope="module", params=["sync", "aio"])
def target(
    request: pytest.FixtureRequest, issuer: TokenServer, module_pki: Pki, reader: RegisteredClient
) -> Iterator[Target]:
    pki = module_pki
    verifier = TokenVerifier(
        issuer=ISSUER,
        audience="echo",
        jwks=GrpcJwksSource(
            f"localhost:{issuer.running.port}", credentials=grpc.ssl_channel_credentials(pki.ca.cert_pem)
        ),
    )
    mtls, tls, stop = start_echo(request.param, verifier, pki)
    key = issuer.authority.keys.ensure_signing_key()
    forge = Forge(key.private_key, key.kid, pooled_rsa_key())
    try:
        yield Target(pki, mtls, tls, issuer, reader, forge)
    finally:
        stop()
        verifier.close()


def _forged(target: Target, **claims: object) -> str:
    f = target.forge
    return f.token(claims=f.claims(sub=READER, client_id=READER, **claims))


# -- stolen tokens -------------------------------------------------------------------------------


def test_control_bound_token_with_its_certificate_is_accepted(target: Target) -> None:
    assert target.call(target.bound(target.pki.client), target.pki.client) == (grpc.StatusCode.OK, READER)


def test_stolen_bound_token_replayed_with_another_valid_certificate(target: Target) -> None:
    # the intruder holds a perfectly valid certificate of the same CA, just not the client's
    token = target.bound(target.pki.client)
    assert target.call(token, target.pki.other_client) == REFUSED


def test_stolen_bound_token_over_plain_tls_without_a_certificate(target: Target) -> None:
    token = target.bound(target.pki.client)
    assert target.call(token, None, mutual=False) == REFUSED


def test_stolen_bound_token_replayed_after_the_client_used_it(target: Target) -> None:
    # the first, legitimate call puts the token in the verifier's cache; the replay hits it
    token = target.bound(target.pki.client)
    assert target.call(token, target.pki.client) == (grpc.StatusCode.OK, READER)
    assert target.call(token, target.pki.other_client) == REFUSED
    assert target.call(token, None, mutual=False) == REFUSED
    assert target.call(token, target.pki.client) == (grpc.StatusCode.OK, READER)


def test_certificate_claimed_in_metadata_counts_for_nothing(target: Target) -> None:
    # grpc's auth context comes from the TLS handshake: metadata that names the right
    # certificate (as a proxy's forwarded-certificate header would) proves nothing
    token = target.bound(target.pki.client)
    pem = target.pki.client.cert_pem.decode().replace("\n", "")
    forwarded = (("x509_pem_cert", pem), ("x-forwarded-client-cert", pem), ("ssl-client-cert", pem))
    assert target.call(token, None, mutual=False, metadata=forwarded) == REFUSED


# -- edited and forged tokens --------------------------------------------------------------------


def _edit(token: str, **changes: object) -> str:
    header, _, signature = token.split(".")
    body = claims(token)
    for name, value in changes.items():
        if value is None:
            body.pop(name, None)
        else:
            body[name] = value
    return ".".join((header, b64(json.dumps(body, separators=(",", ":")).encode()), signature))


def test_rebinding_a_stolen_token_to_the_attackers_certificate_breaks_the_signature(target: Target) -> None:
    token = _edit(target.bound(target.pki.client), cnf={"x5t#S256": target.pki.other_client.thumbprint})
    assert target.call(token, target.pki.other_client) == REFUSED


def test_stripping_the_binding_breaks_the_signature(target: Target) -> None:
    token = _edit(target.bound(target.pki.client), cnf=None)
    assert "cnf" not in claims(token)
    assert target.call(token, target.pki.other_client) == REFUSED
    assert target.call(token, None, mutual=False) == REFUSED


def test_forge_control_token_bound_to_the_callers_certificate_is_accepted(target: Target) -> None:
    # the forge is sound: signed with the issuer's key and bound right, it passes
    token = _forged(target, cnf={"x5t#S256": target.pki.client.thumbprint})
    assert target.call(token, target.pki.client) == (grpc.StatusCode.OK, READER)


@pytest.mark.parametrize(
    "cnf",
    [
        {"jkt": "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I"},
        {"x5t#S256": "PLACEHOLDER", "jkt": "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I"},
        {"jwk": {"kty": "EC", "crv": "P-256", "x": "AA", "y": "AA"}},
        {"x5t": "PLACEHOLDER"},
    ],
    ids=["dpop-jkt-only", "x5t-plus-jkt", "jwk", "sha1-named-x5t"],
)
def test_unknown_confirmation_method_is_refused(target: Target, cnf: dict[str, object]) -> None:
    # a proof of possession this verifier cannot check is no reason to accept the token as bearer
    thumb = target.pki.client.thumbprint
    cnf = {k: thumb if v == "PLACEHOLDER" else v for k, v in cnf.items()}
    assert target.call(_forged(target, cnf=cnf), target.pki.client) == REFUSED


@pytest.mark.parametrize(
    "cnf",
    [None, "", [], {}, {"x5t#S256": ""}, {"x5t#S256": 1}, {"x5t#S256": "PLACEHOLDER="}],
    ids=["null", "empty-string", "list", "empty-object", "empty-thumbprint", "number", "padded"],
)
def test_malformed_cnf_is_refused(target: Target, cnf: object) -> None:
    thumb = target.pki.client.thumbprint
    if isinstance(cnf, dict):
        cnf = {k: v.replace("PLACEHOLDER", thumb) if isinstance(v, str) else v for k, v in cnf.items()}
    assert target.call(_forged(target, cnf=cnf), target.pki.client) == REFUSED


@pytest.mark.parametrize("encoding", ["padded-base64", "hex", "sha1"])
def test_thumbprint_of_the_right_certificate_in_another_form_is_refused(
    target: Target, encoding: str
) -> None:
    # only base64url(SHA-256(DER)) without padding is the RFC 8705 §3.1 thumbprint
    der = target.pki.client.der
    digest = hashlib.sha256(der).digest()
    thumbprint = {
        "padded-base64": base64.b64encode(digest).decode(),
        "hex": digest.hex(),
        "sha1": b64(hashlib.sha1(der).digest()),  # noqa: S324 - the attack: x5t's SHA-1, in x5t#S256
    }[encoding]
    assert target.call(_forged(target, cnf={"x5t#S256": thumbprint}), target.pki.client) == REFUSED


# -- the mutual-TLS listeners --------------------------------------------------------------------


def test_token_endpoint_refuses_a_handshake_without_a_certificate(
    issuer: TokenServer, module_pki: Pki
) -> None:
    client = issuer.register("no-cert", audiences=("echo",))
    with pytest.raises(grpc.RpcError) as info:
        issue(issuer.running.mtls_port or 0, module_pki, client, None, audience="echo")
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


def test_token_endpoint_refuses_a_certificate_from_another_ca(issuer: TokenServer, module_pki: Pki) -> None:
    # same subject and SAN as the client's own certificate, issued by a CA the server does not trust
    client = issuer.register("foreign", audiences=("echo",))
    with pytest.raises(grpc.RpcError) as info:
        issue(issuer.running.mtls_port or 0, module_pki, client, module_pki.foreign_client, audience="echo")
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


def test_http_token_endpoint_refuses_a_certificate_from_another_ca(
    issuer: TokenServer, module_pki: Pki
) -> None:
    client = issuer.register("foreign-http")
    url = f"https://localhost:{issuer.running.mtls_http_port}/oauth2/token"
    form = f"grant_type=client_credentials&client_id={client.client_id}&client_secret={client.secret}"
    with pytest.raises(OSError):  # ssl.SSLError and URLError are OSErrors: no TLS session
        post_form(url, form, module_pki, module_pki.foreign_client)


def test_self_signed_client_certificate_is_refused(
    tmp_path: Path, issuer: TokenServer, module_pki: Pki
) -> None:
    # a certificate that is its own CA, with the client's name
    rogue = make_pki(tmp_path / "rogue").ca
    client = issuer.register("rogue", audiences=("echo",))
    with pytest.raises(grpc.RpcError) as info:
        issue(issuer.running.mtls_port or 0, module_pki, client, rogue, audience="echo")
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


# -- the PaymentService's HTTP API (payments-svc serve --client-ca) --------------------------------


@pytest.fixture(scope="module")
def gateway(
    tmp_path_factory: pytest.TempPathFactory, issuer: TokenServer, module_pki: Pki
) -> Iterator[RunningPayments]:
    config = payments_config(tmp_path_factory.mktemp("payments"), module_pki, issuer)
    thread: ServerThread[RunningPayments] = ServerThread(lambda: start_payments(config))
    try:
        yield thread.start()
    finally:
        thread.stop(0)


def _http_get(port: int, pki: Pki, token: str, cert: Issued | None, **headers: str) -> tuple[int, str]:
    context = https_context(pki, cert)
    conn = http.client.HTTPSConnection("localhost", port, context=context, timeout=TIMEOUT)
    try:
        conn.request("GET", "/api/v1/payments", headers={"Authorization": f"Bearer {token}", **headers})
        answer = conn.getresponse()
        return answer.status, str(json.loads(answer.read()).get("error", ""))
    finally:
        conn.close()


def test_http_stolen_bound_token_with_a_forwarded_certificate_header(
    gateway: RunningPayments, issuer: TokenServer, module_pki: Pki
) -> None:
    # over a connection without a certificate, headers that carry the client's certificate (as
    # proxies forward them) are not the TLS handshake: refused
    shop = issuer.register("shop-http", scopes=("payments:read",))
    token = issue(issuer.running.mtls_port or 0, module_pki, shop, module_pki.client)
    pem = module_pki.client.cert_pem.decode().replace("\n", "")
    forwarded = {"X-Client-Cert": pem, "X-Forwarded-Client-Cert": f"Cert={pem}", "Ssl-Client-Cert": pem}
    assert _http_get(gateway.http_port, module_pki, token, None, **forwarded) == (401, "invalid_token")
    assert _http_get(gateway.http_port, module_pki, token, module_pki.other_client) == (401, "invalid_token")
    assert _http_get(gateway.http_port, module_pki, token, module_pki.client) == (200, "")
