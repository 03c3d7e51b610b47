"""Hostile access tokens against a resource server, one named case per attack.

Every token goes as ``authorization`` metadata over a real channel to a real EchoService (sync
and asyncio) guarded by the real interceptor and a :class:`TokenVerifier` that fetches its keys
from a real TokenService. Each case asserts the gRPC status code and the ``google.rpc.ErrorInfo``
reason (domain ``authsvc``), never the message text.

Tokens are forged by hand: JSON, base64url and an RSA signature made with the issuer's *real*
private key wherever the point is the content. A token whose signature is also wrong would be
refused for that reason alone and would prove nothing about the header or claim checks, so
:func:`test_forged_control_token_is_accepted` first shows that the forge, unchanged, makes
tokens the verifier accepts.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import json
import logging
import secrets
import string
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Final

import grpc
import pytest
from _pytest.mark import ParameterSet
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from authsvc.core.errors import InvalidToken
from authsvc.core.keys import jwks_json, public_jwk, rfc7638_thumbprint
from authsvc.server.app import RunningServer, open_authority, start_server
from authsvc.v1 import token_pb2, token_pb2_grpc
from authsvc.verify import GrpcJwksSource, JwksCache, JwksSource, StaticJwksSource, TokenVerifier
from authsvc.verify.principal import verify_token
from authsvc.verify.verifier import MAX_TOKEN_BYTES
from tests.conftest import ISSUER, TokenServer, serve_config
from tests.helpers import ServerThread
from tests.keypool import rsa_key as pooled_rsa_key
from tests.verify.echo import pb2, pb2_grpc
from tests.verify.test_interceptor import start_echo

CLIENT_ID = "echo-reader"
AUDIENCE = "echo"
DOMAIN = "authsvc"
TIMEOUT = 10.0
LEEWAY = 30  # the verifier's default
MAX_LIFETIME = 86_400  # the verifier's default

OK = grpc.StatusCode.OK
ACCEPTED = (OK, CLIENT_ID)
REFUSED = (grpc.StatusCode.UNAUTHENTICATED, "INVALID_TOKEN")
INSUFFICIENT = (grpc.StatusCode.PERMISSION_DENIED, "INSUFFICIENT_SCOPE")
# What grpc core answers, before any interceptor runs, for metadata above its size limits.
METADATA_TOO_LARGE = (grpc.StatusCode.RESOURCE_EXHAUSTED, "")

Answer = tuple[grpc.StatusCode, str]
Metadata = tuple[tuple[str, str | bytes], ...]


# -- forging -------------------------------------------------------------------------------------


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


class Raw(str):
    """JSON text put into a forged object as is (NaN, Infinity, 1e400)."""


class _Drop:
    def __repr__(self) -> str:
        return "DROP"


DROP: Final = _Drop()
"""As a header or claim value: leave the member out."""


class In(int):
    """As a time claim value: this many seconds from the moment the token is forged."""


def json_members(pairs: Iterable[tuple[str, object]]) -> bytes:
    """A JSON object from members in order, duplicates and :class:`Raw` text kept as given."""
    text = ",".join(f"{json.dumps(k)}:{v if isinstance(v, Raw) else json.dumps(v)}" for k, v in pairs)
    return ("{" + text + "}").encode("utf-8")


def rs256(key: rsa.RSAPrivateKey, data: bytes) -> bytes:
    return key.sign(data, padding.PKCS1v15(), hashes.SHA256())


def hs256(secret: bytes) -> Callable[[bytes], bytes]:
    return lambda data: hmac.new(secret, data, hashlib.sha256).digest()


def self_signed_der(key: rsa.RSAPrivateKey) -> bytes:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "auth.test")])
    start = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.DER)


_B64URL_ALPHABET = string.ascii_uppercase + string.ascii_lowercase + string.digits + "-_"


def noncanonical(segment: str) -> str:
    """The same bytes with a non-zero unused trailing bit (RFC 4648 §3.5: decoders MAY reject;
    accepting it gives one token several spellings)."""
    assert len(segment) % 4 in (2, 3)
    last = _B64URL_ALPHABET.index(segment[-1])
    assert last & 1 == 0
    tweaked = segment[:-1] + _B64URL_ALPHABET[last | 1]
    pad = "=" * (-len(segment) % 4)
    assert base64.urlsafe_b64decode(tweaked + pad) == base64.urlsafe_b64decode(segment + pad)
    return tweaked


@dataclass(frozen=True)
class Forge:
    """Builds tokens by hand with the issuer's real key (or the attacker's)."""

    key: rsa.RSAPrivateKey
    kid: str
    attacker: rsa.RSAPrivateKey

    @property
    def attacker_kid(self) -> str:
        return rfc7638_thumbprint(self.attacker.public_key())

    def header(self, **changes: object) -> dict[str, object]:
        header: dict[str, object] = {"alg": "RS256", "typ": "at+jwt", "kid": self.kid}
        header.update(changes)
        return {k: v for k, v in header.items() if v is not DROP}

    def claims(self, **changes: object) -> dict[str, object]:
        now = int(time.time())
        claims: dict[str, object] = {
            "iss": ISSUER,
            "sub": CLIENT_ID,
            "aud": AUDIENCE,
            "exp": now + 300,
            "iat": now,
            "nbf": now,
            "jti": secrets.token_urlsafe(16),
            "client_id": CLIENT_ID,
            "scope": "echo:read",
        }
        claims.update(changes)
        return {k: now + v if isinstance(v, In) else v for k, v in claims.items() if v is not DROP}

    def token(
        self,
        header: Mapping[str, object] | bytes | None = None,
        claims: Mapping[str, object] | bytes | None = None,
        *,
        key: rsa.RSAPrivateKey | None = None,
        sign: Callable[[bytes], bytes] | None = None,
    ) -> str:
        """``header.payload.signature``; mappings become compact JSON, bytes go as they are; the
        signature is RS256 with ``key`` (default: the issuer's) unless ``sign`` is given."""

        def segment(value: Mapping[str, object] | bytes) -> str:
            if isinstance(value, bytes):
                return b64(value)
            return b64(json.dumps(value, separators=(",", ":")).encode())

        return self.signed(
            segment(self.header() if header is None else header),
            segment(self.claims() if claims is None else claims),
            key=key,
            sign=sign,
        )

    def signed(
        self,
        header_b64: str,
        payload_b64: str,
        *,
        key: rsa.RSAPrivateKey | None = None,
        sign: Callable[[bytes], bytes] | None = None,
    ) -> str:
        signing_input = f"{header_b64}.{payload_b64}".encode("ascii")
        signature = sign(signing_input) if sign else rs256(key or self.key, signing_input)
        return f"{header_b64}.{payload_b64}.{b64(signature)}"

    def parts(self, token: str | None = None) -> list[str]:
        return (token or self.token()).split(".")


# -- servers -------------------------------------------------------------------------------------


@dataclass
class Issuer:
    """The real TokenService of this module, its registered client and a forge with its key."""

    server: TokenServer
    secret: str
    forge: Forge
    stub: Any

    def issue(self, audience: tuple[str, ...] = (AUDIENCE,), scope: str = "echo:read") -> str:
        request = token_pb2.IssueTokenRequest(
            grant_type="client_credentials",
            client_id=CLIENT_ID,
            client_secret=self.secret,
            scope=scope,
            audience=list(audience),
        )
        return str(self.stub.IssueToken(request, timeout=TIMEOUT).access_token)


@pytest.fixture(scope="module")
def issuer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Issuer]:
    config = serve_config(tmp_path_factory.mktemp("authsvc") / "data")
    thread: ServerThread[RunningServer] = ServerThread(
        lambda: start_server(config, authority=open_authority(config))
    )
    running = thread.start()
    try:
        server = TokenServer(running, config, thread)
        client = server.register(CLIENT_ID, scopes=("echo:read", "echo:write"), audiences=(AUDIENCE, "other"))
        key = server.authority.keys.ensure_signing_key()
        attacker = pooled_rsa_key()
        with grpc.insecure_channel(server.target) as channel:
            yield Issuer(
                server,
                client.secret,
                Forge(key.private_key, key.kid, attacker),
                token_pb2_grpc.TokenServiceStub(channel),
            )
    finally:
        thread.stop(grace=0)


@pytest.fixture(scope="module")
def forge(issuer: Issuer) -> Forge:
    return issuer.forge


def answer_of(err: grpc.RpcError) -> Answer:
    """The status code and ErrorInfo reason of a failed call ("" when there is no detail)."""
    status = rpc_status.from_call(err)
    code: grpc.StatusCode = err.code()
    if status is None or not status.details:
        return code, ""
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    assert info.domain == DOMAIN
    return code, str(info.reason)


@dataclass
class Echo:
    kind: str
    stub: Any

    def call(self, metadata: Metadata) -> Answer:
        """Echo with ``metadata``: ``(OK, caller)`` or the refusal's ``(code, reason)``."""
        try:
            response = self.stub.Echo(pb2.EchoRequest(text="x"), metadata=metadata, timeout=TIMEOUT)
        except grpc.RpcError as err:
            return answer_of(err)
        return OK, str(response.caller)

    def bearer(self, token: str) -> Answer:
        return self.call((("authorization", f"Bearer {token}"),))


@dataclass
class Guarded:
    """An EchoService with its own verifier, key cache and counting key source."""

    echo: Echo
    cache: JwksCache
    source: CountingSource


class CountingSource:
    """A JWKS source that counts the fetches that reach the issuer."""

    def __init__(self, inner: GrpcJwksSource) -> None:
        self.inner = inner
        self.calls = 0
        self._lock = threading.Lock()

    def fetch(self) -> str:
        with self._lock:
            self.calls += 1
        return self.inner.fetch()


@contextmanager
def serve(kind: str, jwks: JwksSource | JwksCache) -> Iterator[Echo]:
    verifier = TokenVerifier(issuer=ISSUER, audience=AUDIENCE, jwks=jwks)
    port, stop = start_echo(kind, verifier)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield Echo(kind, pb2_grpc.EchoServiceStub(channel))
    finally:
        stop()


@pytest.fixture(scope="module", params=["sync", "aio"])
def echo(request: pytest.FixtureRequest, issuer: Issuer) -> Iterator[Echo]:
    source = GrpcJwksSource(issuer.server.target)
    try:
        with serve(request.param, source) as served:
            yield served
    finally:
        source.close()


@pytest.fixture
def guarded(echo: Echo, issuer: Issuer) -> Iterator[Guarded]:
    """A fresh server of the same kind as ``echo`` whose key fetches are counted; the cooldown is
    long enough that no refresh is due during the test."""
    inner = GrpcJwksSource(issuer.server.target)
    source = CountingSource(inner)
    cache = JwksCache(source, cooldown=60)
    try:
        with serve(echo.kind, cache) as served:
            yield Guarded(served, cache, source)
    finally:
        inner.close()


# -- cases ---------------------------------------------------------------------------------------

Build = Callable[[Forge], str]


def case(name: str, build: Build) -> ParameterSet:
    return pytest.param(build, id=name)


def header_case(name: str, **changes: object) -> ParameterSet:
    """A token validly signed by the issuer's key whose header has ``changes``."""
    return case(name, lambda f: f.token(header=f.header(**changes)))


def claims_case(name: str, **changes: object) -> ParameterSet:
    """A token validly signed by the issuer's key whose claims have ``changes``."""
    return case(name, lambda f: f.token(claims=f.claims(**changes)))


def _alg_none(spelling: str, signature: str) -> Build:
    def build(f: Forge) -> str:
        header, payload, _ = f.parts(f.token(header=f.header(alg=spelling)))
        return f"{header}.{payload}.{signature}"

    return build


ALG_NONE = [
    case(f"alg_{spelling}_{name}", _alg_none(spelling, signature))
    for spelling in ("none", "None", "NONE", "nOnE")
    for name, signature in (("empty_signature", ""), ("garbage_signature", b64(b"garbage")))
] + [header_case("alg_none_with_a_real_rs256_signature", alg="none")]


def _strip(keep_dot: bool) -> Build:
    def build(f: Forge) -> str:
        header, payload, _ = f.parts()
        return f"{header}.{payload}." if keep_dot else f"{header}.{payload}"

    return build


SIGNATURE = [
    case("signature_empty", _strip(keep_dot=True)),
    case("signature_stripped_two_segments", _strip(keep_dot=False)),
    case("signature_all_zero_bytes", lambda f: f.token(sign=lambda _: bytes(256))),
    case("signature_one_byte_short", lambda f: f.token(sign=lambda d: rs256(f.key, d)[:-1])),
    case("signature_one_byte_long", lambda f: f.token(sign=lambda d: rs256(f.key, d) + b"\0")),
    case("signature_leading_zero_byte", lambda f: f.token(sign=lambda d: b"\0" + rs256(f.key, d))),
    case(
        "signature_of_another_token_payload_swapped",
        lambda f: ".".join([*f.parts()[:2], f.parts(f.token(claims=f.claims(sub="someone-else")))[2]]),
    ),
]


def _public(f: Forge, encoding: serialization.Encoding, form: serialization.PublicFormat) -> bytes:
    return f.key.public_key().public_bytes(encoding, form)


def _hmac_case(name: str, alg: str, secret: Callable[[Forge], bytes]) -> ParameterSet:
    return case(name, lambda f: f.token(header=f.header(alg=alg), sign=hs256(secret(f))))


PEM, DER = serialization.Encoding.PEM, serialization.Encoding.DER
SPKI, PKCS1 = serialization.PublicFormat.SubjectPublicKeyInfo, serialization.PublicFormat.PKCS1

ALGORITHM_CONFUSION = [
    _hmac_case("hs256_keyed_with_pem_spki", "HS256", lambda f: _public(f, PEM, SPKI)),
    _hmac_case("hs256_keyed_with_pem_spki_no_newline", "HS256", lambda f: _public(f, PEM, SPKI).strip()),
    _hmac_case("hs256_keyed_with_pem_pkcs1", "HS256", lambda f: _public(f, PEM, PKCS1)),
    _hmac_case("hs256_keyed_with_der_spki", "HS256", lambda f: _public(f, DER, SPKI)),
    _hmac_case("hs256_keyed_with_der_pkcs1", "HS256", lambda f: _public(f, DER, PKCS1)),
    _hmac_case(
        "hs256_keyed_with_openssh",
        "HS256",
        lambda f: _public(f, serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH),
    ),
    _hmac_case(
        "hs256_keyed_with_jwk_json",
        "HS256",
        lambda f: json.dumps(public_jwk(f.key.public_key()), separators=(",", ":")).encode(),
    ),
    _hmac_case("hs384_keyed_with_pem_spki", "HS384", lambda f: _public(f, PEM, SPKI)),
    _hmac_case("hs512_keyed_with_pem_spki", "HS512", lambda f: _public(f, PEM, SPKI)),
    _hmac_case("rs256_header_with_hmac_signature", "RS256", lambda f: _public(f, PEM, SPKI)),
    # The header lies but the signature is a real RS256 one: the header's alg must still be RS256.
    header_case("hs256_header_signed_with_real_rsa_key", alg="HS256"),
    header_case("alg_rs256_lowercase", alg="rs256"),
    header_case("alg_rs256_trailing_space", alg="RS256 "),
    header_case("alg_missing", alg=DROP),
    header_case("alg_null", alg=None),
    header_case("alg_list", alg=["RS256"]),
    case(
        "alg_rs512_signed_with_real_key",
        lambda f: f.token(
            header=f.header(alg="RS512"), sign=lambda d: f.key.sign(d, padding.PKCS1v15(), hashes.SHA512())
        ),
    ),
    case(
        "alg_ps256_signed_with_real_key",
        lambda f: f.token(
            header=f.header(alg="PS256"),
            sign=lambda d: f.key.sign(d, padding.PSS(padding.MGF1(hashes.SHA256()), 32), hashes.SHA256()),
        ),
    ),
]

HEADER = [
    case(
        "jwk_embedded_attacker_key_signed_by_attacker",
        lambda f: f.token(
            header=f.header(kid=f.attacker_kid, jwk=public_jwk(f.attacker.public_key())), key=f.attacker
        ),
    ),
    case(
        "jwk_embedded_attacker_key_under_real_kid",
        lambda f: f.token(header=f.header(jwk=public_jwk(f.attacker.public_key())), key=f.attacker),
    ),
    case(
        "jwk_embedded_real_key_validly_signed",
        lambda f: f.token(header=f.header(jwk=public_jwk(f.key.public_key()))),
    ),
    header_case("jku_validly_signed", jku="https://attacker.example/jwks.json"),
    header_case("x5u_validly_signed", x5u="https://attacker.example/cert.pem"),
    case(
        "x5c_attacker_cert_validly_signed",
        lambda f: f.token(header=f.header(x5c=[base64.b64encode(self_signed_der(f.attacker)).decode()])),
    ),
    case(
        "x5c_attacker_cert_signed_by_attacker",
        lambda f: f.token(
            header=f.header(kid=f.attacker_kid, x5c=[base64.b64encode(self_signed_der(f.attacker)).decode()]),
            key=f.attacker,
        ),
    ),
    header_case("x5t_validly_signed", x5t=b64(b"\1" * 20)),
    header_case("crit_exp_validly_signed", crit=["exp"], exp=4102444800),
    header_case("crit_b64_false_validly_signed", crit=["b64"], b64=False),
    header_case("crit_empty_list_validly_signed", crit=[]),
    header_case("cty_nested_jwt_validly_signed", cty="JWT"),
    header_case("zip_deflate_validly_signed", zip="DEF"),
    header_case("enc_jwe_member_validly_signed", enc="A256GCM"),
    header_case("unknown_member_validly_signed", foo="bar"),
    case(
        "duplicate_alg_none_then_rs256",
        lambda f: f.token(header=json_members([("alg", "none"), *f.header().items()])),
    ),
    case(
        "duplicate_kid_unknown_then_real",
        lambda f: f.token(header=json_members([("kid", "unknown"), *f.header().items()])),
    ),
]

KID = [
    header_case("kid_path_traversal", kid="../../../../etc/passwd"),
    header_case("kid_sql_injection", kid="' OR 1=1 --"),
    case("kid_real_with_nul", lambda f: f.token(header=f.header(kid=f.kid + "\0"))),
    header_case("kid_nul_only", kid="\0"),
    header_case("kid_129_chars", kid="k" * 129),
    header_case("kid_4096_chars", kid="k" * 4096),
    header_case("kid_number", kid=1),
    header_case("kid_null", kid=None),
    header_case("kid_list", kid=["a"]),
    case("kid_list_of_real_kid", lambda f: f.token(header=f.header(kid=[f.kid]))),
    header_case("kid_object", kid={"kid": "a"}),
    header_case("kid_empty", kid=""),
    header_case("kid_missing", kid=DROP),
    case("kid_real_uppercased", lambda f: f.token(header=f.header(kid=f.kid.upper()))),
    case("kid_real_trailing_space", lambda f: f.token(header=f.header(kid=f.kid + " "))),
    case("attacker_key_under_real_kid", lambda f: f.token(key=f.attacker)),
    case(
        "attacker_key_under_its_own_kid",
        lambda f: f.token(header=f.header(kid=f.attacker_kid), key=f.attacker),
    ),
]

TYP = [
    header_case("typ_JWT", typ="JWT"),
    header_case("typ_missing", typ=DROP),
    header_case("typ_null", typ=None),
    header_case("typ_empty", typ=""),
    # Media types compare case-insensitively (RFC 7515 §4.1.9), so "AT+JWT" is accepted below;
    # what must be refused is any other type.
    header_case("typ_application_jwt", typ="application/jwt"),
    header_case("typ_id_token_jwt", typ="id_token+jwt"),
    header_case("typ_list", typ=["at+jwt"]),
    header_case("typ_object", typ={"at+jwt": True}),
]


def _with_raw(f: Forge, **raw: str) -> bytes:
    return json_members(f.claims(**{k: Raw(v) for k, v in raw.items()}).items())


def _exp_before_iat(f: Forge) -> str:
    # Not expired and iat within the leeway, but exp < iat.
    return f.token(claims=f.claims(iat=In(LEEWAY - 5), exp=In(10)))


CLAIMS = [
    claims_case("exp_well_past", exp=In(-3600), iat=In(-3900), nbf=In(-3900)),
    claims_case("exp_just_beyond_leeway", exp=In(-LEEWAY - 10), iat=In(-300), nbf=In(-300)),
    claims_case("exp_zero", exp=0),
    claims_case("exp_negative", exp=-1),
    claims_case("nbf_in_the_future", nbf=In(3600)),
    claims_case("nbf_just_beyond_leeway", nbf=In(LEEWAY + 30)),
    claims_case("iat_in_the_future_beyond_leeway", iat=In(LEEWAY + 60)),
    case("exp_before_iat", _exp_before_iat),
    claims_case("lifetime_longer_than_max", exp=In(MAX_LIFETIME + 60)),
    claims_case("lifetime_centuries", exp=In(100 * 365 * 86_400)),
    claims_case("exp_huge_integer", exp=10**30),
    claims_case("iss_other", iss="https://evil.test"),
    claims_case("iss_trailing_slash", iss=ISSUER + "/"),
    claims_case("iss_upper_case", iss=ISSUER.upper()),
    claims_case("iss_homoglyph", iss=ISSUER.replace("a", "\u0430")),
    claims_case("iss_suffix_domain", iss=ISSUER + ".evil.example"),
    claims_case("iss_with_nul", iss=ISSUER + "\0"),
    claims_case("iss_list", iss=[ISSUER]),
    claims_case("iss_null", iss=None),
    claims_case("aud_other", aud="other"),
    claims_case("aud_list_without_ours", aud=["other", "another"]),
    claims_case("aud_empty_list", aud=[]),
    claims_case("aud_empty_string", aud=""),
    claims_case("aud_upper_case", aud=AUDIENCE.upper()),
    claims_case("aud_trailing_space", aud=AUDIENCE + " "),
    claims_case("aud_list_with_non_string", aud=[AUDIENCE, 1]),
    claims_case("aud_nested_list", aud=[[AUDIENCE]]),
    claims_case("aud_object", aud={AUDIENCE: True}),
    claims_case("aud_null", aud=None),
    *(
        claims_case(f"{name}_missing", **{name: DROP})
        for name in ("iss", "sub", "aud", "exp", "iat", "nbf", "jti", "client_id", "scope")
    ),
    claims_case("sub_empty", sub=""),
    claims_case("jti_empty", jti=""),
    claims_case("client_id_empty", client_id=""),
    claims_case("client_id_number", client_id=1),
    claims_case("exp_string", exp=str(int(time.time()) + 300)),
    claims_case("exp_true", exp=True),
    claims_case("iat_false", iat=False),
    claims_case("nbf_null", nbf=None),
    claims_case("exp_list", exp=[4102444800]),
    case("exp_NaN_literal", lambda f: f.token(claims=_with_raw(f, exp="NaN"))),
    case("exp_Infinity_literal", lambda f: f.token(claims=_with_raw(f, exp="Infinity"))),
    case("exp_minus_Infinity_literal", lambda f: f.token(claims=_with_raw(f, exp="-Infinity"))),
    case("nbf_minus_Infinity_literal", lambda f: f.token(claims=_with_raw(f, nbf="-Infinity"))),
    case("exp_1e400_overflows_to_infinity", lambda f: f.token(claims=_with_raw(f, exp="1e400"))),
    # an integer too large for a float: float() raises OverflowError, which must not escape
    case("exp_integer_too_large_for_a_float", lambda f: f.token(claims=_with_raw(f, exp="1" + "0" * 400))),
    case("iat_integer_too_large_for_a_float", lambda f: f.token(claims=_with_raw(f, iat="-1" + "0" * 400))),
    case("nbf_integer_too_large_for_a_float", lambda f: f.token(claims=_with_raw(f, nbf="9" * 309))),
    # more digits than int() converts (4300): the parser raises a plain ValueError
    case("exp_integer_of_5000_digits", lambda f: f.token(claims=_with_raw(f, exp="1" * 5000))),
    case(
        "aud_duplicate_wrong_then_right",
        lambda f: f.token(
            claims=json_members([*f.claims(aud=DROP).items(), ("aud", "other"), ("aud", AUDIENCE)])
        ),
    ),
    case(
        "aud_duplicate_right_then_wrong",
        lambda f: f.token(
            claims=json_members([*f.claims(aud=DROP).items(), ("aud", AUDIENCE), ("aud", "other")])
        ),
    ),
    case(
        "exp_duplicate_past_then_future",
        lambda f: f.token(claims=json_members([("exp", 1), *f.claims().items()])),
    ),
    case(
        "iss_duplicate_evil_then_real",
        lambda f: f.token(claims=json_members([("iss", "https://evil.test"), *f.claims().items()])),
    ),
    claims_case("scope_list", scope=["echo:read"]),
    claims_case("scope_trailing_space", scope="echo:read "),
    claims_case("scope_double_space", scope="echo:read  echo:write"),
    claims_case("scope_with_quote", scope='echo:read "x"'),
]


def respell_signature(token: str, translate: Callable[[str], str]) -> str:
    header, payload, signature = token.split(".")
    return f"{header}.{payload}.{translate(signature)}"


def _signature_variant(translate: Callable[[str], str], needs: str) -> Build:
    """A validly signed token whose signature segment is re-spelled by ``translate``."""

    def build(f: Forge) -> str:
        for _ in range(100):
            token = f.token()
            if needs in token.rsplit(".", 1)[1]:
                return respell_signature(token, translate)
        raise AssertionError(f"no signature with {needs!r} in 100 tries")

    return build


def _noncanonical_payload(f: Forge) -> str:
    for pad in range(3):
        payload = json.dumps(f.claims(jti="j" * (16 + pad)), separators=(",", ":")).encode()
        if len(payload) % 3:
            header = b64(json.dumps(f.header(), separators=(",", ":")).encode())
            # Signed over the re-spelled segment, so only the decoder's strictness can refuse it.
            return f.signed(header, noncanonical(b64(payload)))
    raise AssertionError("unreachable")


def _padded_header(f: Forge) -> str:
    raw = json.dumps(f.header(), separators=(",", ":")).encode()
    if len(raw) % 3 == 0:
        raw = json.dumps(f.header(), separators=(", ", ":")).encode()
    padded = base64.urlsafe_b64encode(raw).decode()
    assert padded.endswith("=")
    return f.signed(padded, f.parts()[1])


def _segment_length_mod4_is_1(f: Forge) -> str:
    token = f.token()
    assert (len(token.split(".")[2]) + 3) % 4 == 1
    return token + "AAA"


def _deeply_nested(f: Forge) -> str:
    depth = 2_000
    return f.token(claims=b"[" * depth + b"]" * depth)


ENCODING = [
    case("header_with_bom", lambda f: f.token(header=b"\xef\xbb\xbf" + json.dumps(f.header()).encode())),
    case("payload_with_bom", lambda f: f.token(claims=b"\xef\xbb\xbf" + json.dumps(f.claims()).encode())),
    case("header_not_json", lambda f: f.token(header=b"not json")),
    case("header_json_array", lambda f: f.token(header=json.dumps(list(f.header().items())).encode())),
    case("header_json_string", lambda f: f.token(header=b'"RS256"')),
    case("header_json_null", lambda f: f.token(header=b"null")),
    case("header_trailing_garbage", lambda f: f.token(header=json.dumps(f.header()).encode() + b"x")),
    case("header_two_objects", lambda f: f.token(header=json.dumps(f.header()).encode() * 2)),
    case("header_utf16", lambda f: f.token(header=json.dumps(f.header()).encode("utf-16"))),
    case("header_empty_segment", lambda f: ".".join(["", *f.parts()[1:]])),
    case("payload_empty_segment", lambda f: ".".join([f.parts()[0], "", f.parts()[2]])),
    case("payload_json_array", lambda f: f.token(claims=json.dumps(list(f.claims().items())).encode())),
    case("payload_invalid_utf8", lambda f: f.token(claims=b'{"iss":"\xff"}')),
    case("payload_deeply_nested_json", _deeply_nested),
    case("four_segments", lambda f: f.token() + ".e30"),
    case("four_segments_trailing_dot", lambda f: f.token() + "."),
    case(
        "five_segments_jwe_like",
        lambda f: ".".join(
            [
                b64(b'{"alg":"RSA-OAEP","enc":"A256GCM","kid":"' + f.kid.encode() + b'"}'),
                b64(secrets.token_bytes(256)),
                b64(secrets.token_bytes(12)),
                b64(b"ciphertext"),
                b64(bytes(16)),
            ]
        ),
    ),
    case(
        "five_segments_jwe_like_dir",
        lambda f: ".".join(
            [b64(b'{"alg":"dir","enc":"A256GCM"}'), "", b64(bytes(12)), b64(b"ciphertext"), b64(bytes(16))]
        ),
    ),
    case("header_padded_validly_signed", _padded_header),
    case("signature_padded", lambda f: f.token() + "=="),
    case("signature_standard_alphabet_plus", _signature_variant(lambda s: s.replace("-", "+"), "-")),
    case("signature_standard_alphabet_slash", _signature_variant(lambda s: s.replace("_", "/"), "_")),
    case("signature_space_inside", lambda f: (t := f.token())[:-10] + " " + t[-10:]),
    case("space_between_segments", lambda f: f.token().replace(".", ". ", 1)),
    case("signature_noncanonical_trailing_bits", _signature_variant(noncanonical, "")),
    case("payload_noncanonical_trailing_bits_validly_signed", _noncanonical_payload),
    case("segment_length_mod4_is_1", _segment_length_mod4_is_1),
    case("signature_percent_encoded", lambda f: (t := f.token())[:-1] + f"%{ord(t[-1]):02X}"),
    case("garbage", lambda f: "garbage"),
    case("single_dot_garbage", lambda f: "a.b"),
    case("dots_only", lambda f: ".."),
]


# -- tests: the forge itself, and the legitimate paths --------------------------------------------


def test_issued_token_is_accepted(echo: Echo, issuer: Issuer) -> None:
    assert echo.bearer(issuer.issue()) == ACCEPTED


def test_forged_control_token_is_accepted(echo: Echo, forge: Forge) -> None:
    """Without this, the validly signed cases below would prove nothing."""
    assert echo.bearer(forge.token()) == ACCEPTED


@pytest.mark.parametrize("typ", ["application/at+jwt", "at+JWT", "AT+JWT", "Application/At+Jwt"])
def test_typ_spellings_of_at_jwt_are_accepted(echo: Echo, forge: Forge, typ: str) -> None:
    """RFC 9068 §4 with RFC 7515 §4.1.9: "at+jwt", with or without "application/", any case."""
    assert echo.bearer(forge.token(header=forge.header(typ=typ))) == ACCEPTED


def test_aud_list_with_ours_is_accepted(echo: Echo, forge: Forge) -> None:
    assert echo.bearer(forge.token(claims=forge.claims(aud=["other", AUDIENCE]))) == ACCEPTED


def test_issued_token_for_another_audience_is_refused(echo: Echo, issuer: Issuer) -> None:
    assert echo.bearer(issuer.issue(audience=("other",))) == REFUSED


def test_validly_signed_token_without_the_scope_is_permission_denied(echo: Echo, forge: Forge) -> None:
    assert echo.bearer(forge.token(claims=forge.claims(scope="echo:write"))) == INSUFFICIENT
    assert echo.bearer(forge.token(claims=forge.claims(scope="ECHO:READ"))) == INSUFFICIENT
    assert echo.bearer(forge.token(claims=forge.claims(scope=""))) == INSUFFICIENT


# -- tests: hostile tokens ------------------------------------------------------------------------


@pytest.mark.parametrize("build", ALG_NONE)
def test_alg_none(echo: Echo, forge: Forge, build: Build) -> None:
    assert echo.bearer(build(forge)) == REFUSED


@pytest.mark.parametrize("build", SIGNATURE)
def test_signature(echo: Echo, forge: Forge, build: Build) -> None:
    assert echo.bearer(build(forge)) == REFUSED


@pytest.mark.parametrize("build", ALGORITHM_CONFUSION)
def test_algorithm_confusion(echo: Echo, forge: Forge, build: Build) -> None:
    assert echo.bearer(build(forge)) == REFUSED


@pytest.mark.parametrize("build", HEADER)
def test_header_member(echo: Echo, forge: Forge, build: Build) -> None:
    assert echo.bearer(build(forge)) == REFUSED


@pytest.mark.parametrize("build", KID)
def test_kid(echo: Echo, forge: Forge, build: Build) -> None:
    assert echo.bearer(build(forge)) == REFUSED


@pytest.mark.parametrize("build", TYP)
def test_typ(echo: Echo, forge: Forge, build: Build) -> None:
    assert echo.bearer(build(forge)) == REFUSED


@pytest.mark.parametrize("build", CLAIMS)
def test_claims(echo: Echo, forge: Forge, build: Build) -> None:
    assert echo.bearer(build(forge)) == REFUSED


_HUGE_NUMBERS = {
    "exp_integer_too_large_for_a_float": {"exp": "1" + "0" * 400},
    "iat_integer_too_large_for_a_float": {"iat": "-1" + "0" * 400},
    "exp_integer_of_5000_digits": {"exp": "1" * 5000},
}


@pytest.mark.parametrize("depth", [900, 990])
def test_a_deeply_nested_claim_is_an_invalid_token_not_an_unexpected_error(
    forge: Forge, depth: int, caplog: pytest.LogCaptureFixture
) -> None:
    """An array nested nearly as deep as the JSON parser allows (a 3.4 KB token) parses, but
    making the claims read-only walks it recursively: forged, it must be refused before that walk
    (the signature fails first), and signed by the issuer, refused when the walk runs out of
    stack, never a RecursionError escaping with a traceback in the log."""
    verifier = TokenVerifier(
        issuer=ISSUER,
        audience=AUDIENCE,
        jwks=StaticJwksSource(jwks_json([public_jwk(forge.key.public_key())])),
    )
    assert verifier.keys.refresh()
    claims = json.dumps(forge.claims())[:-1] + ', "x": ' + "[" * depth + "]" * depth + "}"
    for key in (forge.key, forge.attacker):
        with caplog.at_level(logging.DEBUG), pytest.raises(InvalidToken):
            verify_token(verifier, forge.token(claims=claims.encode(), key=key), where="/test")
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


@pytest.mark.parametrize("raw", list(_HUGE_NUMBERS.values()), ids=list(_HUGE_NUMBERS))
def test_a_huge_integer_claim_is_an_invalid_token_not_an_unexpected_error(
    forge: Forge, raw: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    """float() of such an integer raises OverflowError, the parser ValueError past 4300 digits:
    escaping the verifier, either was an error-level traceback in the log for each forged token
    (the interceptor still refused it), a log flood anyone could send."""
    verifier = TokenVerifier(
        issuer=ISSUER,
        audience=AUDIENCE,
        jwks=StaticJwksSource(jwks_json([public_jwk(forge.key.public_key())])),
    )
    assert verifier.keys.refresh()
    for key in (forge.key, forge.attacker):
        with caplog.at_level(logging.DEBUG), pytest.raises(InvalidToken):
            verify_token(verifier, forge.token(claims=_with_raw(forge, **raw), key=key), where="/test")
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


@pytest.mark.parametrize("build", ENCODING)
def test_encoding(echo: Echo, forge: Forge, build: Build) -> None:
    assert echo.bearer(build(forge)) == REFUSED


def test_one_megabyte_token_is_stopped_by_grpc_and_the_server_keeps_serving(echo: Echo, forge: Forge) -> None:
    """grpc core refuses metadata above its hard limit (16 KiB) before the interceptor runs."""
    header, payload, signature = forge.parts()
    huge = f"{header}.{payload}{'A' * 1_000_000}.{signature}"
    assert echo.bearer(huge) == METADATA_TOO_LARGE
    assert echo.bearer(forge.token()) == ACCEPTED


def _token_longer_than(f: Forge, limit: int) -> str:
    """The shortest validly signed token longer than ``limit``, grown through its jti."""
    jti = ""
    while True:
        token = f.token(claims=f.claims(jti=jti))
        if len(token) > limit:
            return token
        jti += "j" * max(1, (limit - len(token)) * 3 // 4)


def test_validly_signed_token_over_the_size_limit_is_never_accepted(echo: Echo, forge: Forge) -> None:
    """Just over the verifier's 8 KiB: between grpc's soft (8 KiB) and hard limit grpc refuses
    at random, so each try is answered by grpc or by the verifier, never accepted."""
    answers: set[Answer] = set()
    for _ in range(10):
        token = _token_longer_than(forge, MAX_TOKEN_BYTES)
        assert MAX_TOKEN_BYTES < len(token) <= MAX_TOKEN_BYTES + 3
        answers.add(echo.bearer(token))
    assert answers <= {REFUSED, METADATA_TOO_LARGE}
    assert REFUSED in answers
    assert echo.bearer(forge.token()) == ACCEPTED


def test_non_ascii_token_never_leaves_the_client(echo: Echo, forge: Forge) -> None:
    """grpc refuses non-ASCII in text metadata on the client (INTERNAL, no detail); the server
    never sees it and keeps serving."""
    header, payload, signature = forge.parts()
    assert echo.bearer(f"{header}.{payload}.{signature}\u00e9") == (grpc.StatusCode.INTERNAL, "")
    assert echo.bearer(forge.token()) == ACCEPTED


# -- tests: metadata ------------------------------------------------------------------------------


def _basic(issuer: Issuer) -> str:
    return "Basic " + base64.b64encode(f"{CLIENT_ID}:{issuer.secret}".encode()).decode()


METADATA: list[ParameterSet] = [
    pytest.param(
        lambda t, i: (("authorization", f"Bearer {t}"), ("authorization", "Bearer garbage")),
        id="two_entries_valid_first",
    ),
    pytest.param(
        lambda t, i: (("authorization", "Bearer garbage"), ("authorization", f"Bearer {t}")),
        id="two_entries_valid_last",
    ),
    pytest.param(
        lambda t, i: (("authorization", f"Bearer {t}"), ("authorization", f"Bearer {t}")),
        id="two_entries_both_valid",
    ),
    pytest.param(lambda t, i: (("authorization", _basic(i)),), id="basic_client_credentials"),
    pytest.param(lambda t, i: (("authorization", f"Bearer<{t}>"),), id="bearer_angle_brackets"),
    pytest.param(lambda t, i: (("authorization", f"Bearer{t}"),), id="bearer_no_space"),
    pytest.param(lambda t, i: (("authorization", f"Bearer {t} "),), id="bearer_trailing_space"),
    pytest.param(lambda t, i: (("authorization", f" Bearer {t}"),), id="bearer_leading_space"),
    pytest.param(lambda t, i: (("authorization", f"Bearer:{t}"),), id="bearer_colon"),
    pytest.param(lambda t, i: (("authorization", f"Bearer {t} {t}"),), id="bearer_two_tokens"),
    pytest.param(lambda t, i: (("authorization", "Bearer "),), id="bearer_empty_token"),
    pytest.param(lambda t, i: (("authorization", "Bearer"),), id="bearer_scheme_only"),
    pytest.param(lambda t, i: (("authorization", ""),), id="empty_value"),
    pytest.param(lambda t, i: (("authorization", t),), id="token_without_scheme"),
    pytest.param(lambda t, i: (("authorization", f"DPoP {t}"),), id="dpop_scheme"),
    pytest.param(lambda t, i: (("authorization", f"Token {t}"),), id="token_scheme"),
    pytest.param(lambda t, i: (("authorization-bin", f"Bearer {t}".encode()),), id="authorization_bin_key"),
    pytest.param(lambda t, i: (("x-authorization", f"Bearer {t}"),), id="other_key"),
    pytest.param(lambda t, i: (), id="no_metadata"),
]


@pytest.mark.parametrize("metadata", METADATA)
def test_metadata_trick(echo: Echo, issuer: Issuer, metadata: Callable[[str, Issuer], Metadata]) -> None:
    assert echo.call(metadata(issuer.issue(), issuer)) == REFUSED


@pytest.mark.parametrize("scheme", ["bearer", "BEARER", "bEaReR"])
def test_scheme_is_case_insensitive(echo: Echo, issuer: Issuer, scheme: str) -> None:
    """RFC 6750 §2.1 / RFC 9110 §11.1: the auth scheme is case-insensitive."""
    assert echo.call((("authorization", f"{scheme} {issuer.issue()}"),)) == ACCEPTED


@pytest.mark.parametrize("spaces", [2, 5])
def test_several_spaces_after_the_scheme_are_accepted(echo: Echo, issuer: Issuer, spaces: int) -> None:
    """RFC 6750 §2.1: ``credentials = "Bearer" 1*SP b64token``."""
    assert echo.call((("authorization", "Bearer" + " " * spaces + issuer.issue()),)) == ACCEPTED


# -- tests: key fetches ---------------------------------------------------------------------------


def test_unknown_kid_flood_causes_at_most_one_fetch_per_cooldown(guarded: Guarded, forge: Forge) -> None:
    """200 validly formed tokens with made-up kids, 16 at a time: the initial fetch and at most
    one refresh (``JwksCache.fetches`` counts every attempt, successful or not)."""
    tokens = [forge.token(header=forge.header(kid=secrets.token_urlsafe(32))) for _ in range(200)]
    with ThreadPoolExecutor(max_workers=16) as pool:
        answers = list(pool.map(guarded.echo.bearer, tokens))
    assert set(answers) == {REFUSED}
    assert guarded.cache.fetches <= 2
    assert guarded.source.calls == guarded.cache.fetches
    fetches = guarded.cache.fetches
    assert guarded.echo.bearer(forge.token()) == ACCEPTED
    assert guarded.cache.fetches == fetches


def _cheap_failures(f: Forge, kid: str) -> list[str]:
    """Tokens refused before the key is looked up, whatever their kid."""
    header = f.header(kid=kid)
    return [
        "garbage",
        "a.b.c",
        _alg_none("none", "")(f),
        f.token(header=f.header(kid=kid, alg="none")),
        f.token(header=header, claims=f.claims(exp=In(-3600), iat=In(-3900), nbf=In(-3900))),
        f.token(header=header, claims=f.claims(nbf=In(3600))),
        f.token(header=header, claims=f.claims(aud="other")),
        f.token(header=header, claims=f.claims(iss="https://evil.test")),
        f.token(header=header, claims=f.claims(jti=DROP)),
        f.token(header=f.header(kid=kid, alg="HS256"), sign=hs256(_public(f, PEM, SPKI))),
        f.token(header=f.header(kid=kid, typ="JWT")),
        f.token(header=f.header(kid=kid, jku="https://attacker.example/jwks.json")),
        f.token(header=b"\xef\xbb\xbf" + json.dumps(header).encode()),
        respell_signature(f.token(header=header), noncanonical),
        f.token(header=header).replace(".", ".=", 1),
        f.token(header=header) + ".e30",
    ]


def test_no_fetch_for_tokens_that_fail_the_cheap_checks(guarded: Guarded, forge: Forge) -> None:
    for token in _cheap_failures(forge, forge.kid):
        assert guarded.echo.bearer(token) == REFUSED
    assert (guarded.cache.fetches, guarded.source.calls) == (0, 0)

    assert guarded.echo.bearer(forge.token()) == ACCEPTED
    assert (guarded.cache.fetches, guarded.source.calls) == (1, 1)

    for _ in range(3):  # made-up kids too: the cheap checks come before the key lookup
        for token in _cheap_failures(forge, secrets.token_urlsafe(32)):
            assert guarded.echo.bearer(token) == REFUSED
    assert (guarded.cache.fetches, guarded.source.calls) == (1, 1)
