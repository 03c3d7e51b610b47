"""HttpJwksSource against a real jwks_uri on a free port: TLS or loopback, Cache-Control, ETag,
and the JwksCache rules (stale-on-error, throttled unknown-kid refresh) through it."""

from __future__ import annotations

import logging
import ssl
from collections.abc import Iterator, Mapping
from pathlib import Path

import httpx
import pytest

from authsvc.core.keys import jwks_json, public_jwk, rfc7638_thumbprint
from authsvc.server.app import RunningServer, open_authority, start_server
from authsvc.verify import HttpJwksSource, JwksCache, TokenVerifier
from authsvc.verify.jwks import MIN_HTTP_MAX_AGE, JwksFetchError
from tests.conftest import ISSUER, TokenServer, serve_config
from tests.helpers import ServerThread
from tests.keypool import rsa_key as pooled_rsa_key
from tests.security.test_token_verification_attacks import AUDIENCE, CLIENT_ID, Forge
from tests.server.test_serve import self_signed
from tests.verify.http_servers import JWKS_PATH, JwksServer, Reply, serving

KEY = pooled_rsa_key()
NEXT = pooled_rsa_key()
FORGE = Forge(KEY, rfc7638_thumbprint(KEY.public_key()), NEXT)
JWKS = jwks_json([public_jwk(KEY.public_key())])
BOTH = jwks_json([public_jwk(KEY.public_key()), public_jwk(NEXT.public_key())])


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_a_token_verifies_with_keys_from_the_jwks_uri() -> None:
    with JwksServer(serving(JWKS)) as server:
        verifier = TokenVerifier(issuer=ISSUER, audience=AUDIENCE, jwks=HttpJwksSource(server.url()))
        assert verifier.verify(FORGE.token()).client_id == CLIENT_ID
        path, headers = server.requests[0]
        assert path == JWKS_PATH
        assert "application/jwk-set+json" in headers["accept"]


def test_the_jwk_set_media_type_is_accepted() -> None:
    answer = serving(JWKS)
    with JwksServer(
        lambda p, h: Reply(
            200, answer(p, h).body, {"Content-Type": "application/jwk-set+json; charset=utf-8"}
        )
    ) as server:
        assert HttpJwksSource(server.url()).fetch() == JWKS


def test_https_with_the_issuers_ca_file(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert, key)
    with JwksServer(serving(JWKS), tls=tls) as server:
        assert HttpJwksSource(server.url(), ca_file=cert).fetch() == JWKS
        context = ssl.create_default_context(cafile=str(cert))
        assert HttpJwksSource(server.url(host="localhost"), ssl_context=context).fetch() == JWKS
        # the system trust store does not know this certificate: refused, nothing returned
        with pytest.raises(OSError, match="CERTIFICATE_VERIFY_FAILED"):
            HttpJwksSource(server.url()).fetch()


@pytest.mark.parametrize(
    ("cache_control", "age", "expected"),
    [
        pytest.param("public, max-age=120", None, 120.0, id="max_age"),
        pytest.param("max-age=120", "20", 100.0, id="max_age_less_age"),
        pytest.param("no-store", None, MIN_HTTP_MAX_AGE, id="no_store_means_the_minimum"),
        pytest.param("no-cache, max-age=600", None, MIN_HTTP_MAX_AGE, id="no_cache_means_the_minimum"),
        pytest.param("max-age=0", None, MIN_HTTP_MAX_AGE, id="zero_means_the_minimum"),
        pytest.param("max-age=abc", None, MIN_HTTP_MAX_AGE, id="malformed_is_stale"),
        pytest.param("private", None, None, id="silent_on_freshness"),
    ],
)
def test_cache_control_sets_the_max_age_hint(
    cache_control: str, age: str | None, expected: float | None
) -> None:
    headers = {"Cache-Control": cache_control} | ({"Age": age} if age else {})
    with JwksServer(serving(JWKS, **headers)) as server:
        source = HttpJwksSource(server.url())
        source.fetch()
        assert source.max_age == expected
        cache = JwksCache(source, max_age=300)
        assert cache.effective_max_age == (300 if expected is None else expected)


def test_no_cache_control_leaves_the_caches_own_max_age() -> None:
    with JwksServer(serving(JWKS)) as server:
        source = HttpJwksSource(server.url())
        source.fetch()
        assert source.max_age is None


def test_an_etag_makes_the_next_fetch_conditional_and_a_304_reuses_the_body() -> None:
    def answer(path: str, headers: Mapping[str, str]) -> Reply:
        if headers.get("if-none-match") == '"v1"':
            return Reply(304, headers={"ETag": '"v1"', "Cache-Control": "max-age=30"})
        return Reply(200, JWKS.encode(), {"Content-Type": "application/json", "ETag": '"v1"'})

    with JwksServer(answer) as server:
        source = HttpJwksSource(server.url())
        assert source.fetch() == JWKS
        assert source.max_age is None
        assert source.fetch() == JWKS
        assert [h.get("if-none-match") for _, h in server.requests] == [None, '"v1"']
        assert source.max_age == 30.0, "a 304 carries the new freshness"


def test_a_304_without_an_earlier_body_is_refused() -> None:
    with JwksServer(lambda p, h: Reply(304, headers={})) as server, pytest.raises(JwksFetchError):
        HttpJwksSource(server.url()).fetch()


@pytest.mark.parametrize(
    "reply",
    [
        pytest.param(Reply(500, b"{}"), id="server_error"),
        pytest.param(Reply(404, b"{}"), id="not_found"),
        pytest.param(Reply(204, b""), id="no_content"),
        pytest.param(Reply(200, JWKS.encode(), {"Content-Type": "text/html"}), id="html"),
        pytest.param(Reply(200, JWKS.encode(), {}), id="no_content_type"),
        pytest.param(Reply(200, b"<html>", {"Content-Type": "application/json"}), id="not_json"),
        pytest.param(Reply(200, b"\xff\xfe{}", {"Content-Type": "application/json"}), id="not_utf8"),
        pytest.param(
            Reply(200, JWKS.encode(), {"Content-Type": "application/json", "Content-Encoding": "gzip"}),
            id="encoded",
        ),
    ],
)
def test_answers_other_than_a_json_200_are_refused(reply: Reply) -> None:
    with JwksServer(lambda p, h: reply) as server, pytest.raises(JwksFetchError):
        HttpJwksSource(server.url()).fetch()


def test_a_redirect_within_the_origin_is_followed() -> None:
    def answer(path: str, headers: Mapping[str, str]) -> Reply:
        if path == "/old":
            return Reply(301, headers={"Location": JWKS_PATH})
        return Reply(200, JWKS.encode())

    with JwksServer(answer) as server:
        assert HttpJwksSource(server.url("/old")).fetch() == JWKS
        assert [p for p, _ in server.requests] == ["/old", JWKS_PATH]


def test_the_cache_keeps_its_last_good_set_when_the_jwks_uri_fails(caplog: pytest.LogCaptureFixture) -> None:
    replies = [Reply(200, JWKS.encode(), {"Content-Type": "application/json", "Cache-Control": "max-age=60"})]
    with JwksServer(lambda p, h: replies[-1]) as server:
        clock = Clock()
        cache = JwksCache(HttpJwksSource(server.url()), max_age=300, cooldown=5, monotonic=clock)
        verifier = TokenVerifier(issuer=ISSUER, audience=AUDIENCE, jwks=cache)
        assert cache.refresh()
        assert cache.effective_max_age == 60
        replies.append(Reply(503, b"down"))
        clock.t += 61
        with caplog.at_level(logging.WARNING, "authsvc.verify.jwks"):
            assert cache.refresh() is False
        assert "HTTP 503" in caplog.text, "the log says why the fetch failed"
        assert verifier.verify(FORGE.token()).client_id == CLIENT_ID
        assert len(server.requests) == 2


def test_an_unknown_kid_refreshes_from_the_jwks_uri_once_per_cooldown() -> None:
    documents = [JWKS]
    with JwksServer(lambda p, h: Reply(200, documents[-1].encode())) as server:
        clock = Clock()
        cache = JwksCache(HttpJwksSource(server.url()), max_age=3600, cooldown=5, monotonic=clock)
        verifier = TokenVerifier(issuer=ISSUER, audience=AUDIENCE, jwks=cache)
        assert cache.refresh()
        next_token = FORGE.token(header=FORGE.header(kid=rfc7638_thumbprint(NEXT.public_key())), key=NEXT)
        documents.append(BOTH)  # the issuer publishes its next key
        # within the cooldown of the last fetch: refused without a fetch
        with pytest.raises(Exception, match="unknown key"):
            verifier.verify(next_token)
        assert len(server.requests) == 1
        clock.t += 6
        assert verifier.verify(next_token).client_id == CLIENT_ID
        assert len(server.requests) == 2
        forged = [FORGE.token(header=FORGE.header(kid=f"made-up-{i}")) for i in range(20)]
        for token in forged:
            with pytest.raises(Exception, match="unknown key"):
                verifier.verify(token)
        assert len(server.requests) == 2, "made-up kids within the cooldown fetched again"


@pytest.mark.parametrize(
    ("url", "kwargs"),
    [
        pytest.param("ftp://127.0.0.1/jwks.json", {}, id="not_http"),
        pytest.param("/.well-known/jwks.json", {}, id="relative"),
        pytest.param("https://user:pw@auth.example/jwks.json", {}, id="credentials_in_url"),
        pytest.param("https://auth.example/jwks.json#x", {}, id="fragment"),
        pytest.param("http://127.0.0.1/jwks.json", {"ca_file": "ca.pem"}, id="ca_file_for_plaintext"),
        pytest.param("https://auth.example/jwks.json", {"max_bytes": 0}, id="no_body_allowed"),
    ],
)
def test_malformed_configuration_is_refused_at_construction(url: str, kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        HttpJwksSource(url, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1:1/j", "http://localhost/j", "http://[::1]:8080/j", "https://auth.example/j"],
)
def test_https_anywhere_and_plaintext_on_loopback_are_accepted(url: str) -> None:
    assert HttpJwksSource(url).url == url


def test_plaintext_beyond_loopback_needs_allow_plaintext() -> None:
    assert HttpJwksSource("http://auth.mesh.internal/j", allow_plaintext=True).url.startswith("http://")


def test_an_ssl_context_that_does_not_verify_is_refused() -> None:
    unverified = ssl.create_default_context()
    unverified.check_hostname = False
    with pytest.raises(ValueError):
        HttpJwksSource("https://auth.example/j", ssl_context=unverified)
    with pytest.raises(ValueError):
        HttpJwksSource("https://auth.example/j", ssl_context=ssl._create_unverified_context())  # noqa: S323


# -- against the TokenService's own HTTP edge --------------------------------------------------------


@pytest.fixture
def https_token_server(tmp_path: Path) -> Iterator[tuple[TokenServer, Path]]:
    cert, key = self_signed(tmp_path)
    config = serve_config(tmp_path / "data", http_listen="127.0.0.1:0", tls_cert=cert, tls_key=key)
    thread: ServerThread[RunningServer] = ServerThread(
        lambda: start_server(config, authority=open_authority(config))
    )
    running = thread.start()
    try:
        yield TokenServer(running, config, thread), cert
    finally:
        thread.stop(grace=0)


def test_a_token_from_the_token_service_verifies_through_its_jwks_uri(
    https_token_server: tuple[TokenServer, Path],
) -> None:
    """The whole HTTP path: a token from POST /oauth2/token, keys from GET /.well-known/jwks.json
    (HTTPS, its Cache-Control and ETag), verified offline by HttpJwksSource and TokenVerifier."""
    server, cert = https_token_server
    shop = server.register("shop", scopes=("payments:write",), audiences=("payments",))
    base = f"https://127.0.0.1:{server.running.http_port}"
    answer = httpx.post(
        base + "/oauth2/token",
        data={"grant_type": "client_credentials", "scope": "payments:write"},
        auth=(shop.client_id, shop.secret),
        verify=ssl.create_default_context(cafile=str(cert)),
        timeout=10,
    )
    assert answer.status_code == 200
    source = HttpJwksSource(base + "/.well-known/jwks.json", ca_file=cert)
    verifier = TokenVerifier(issuer=ISSUER, audience="payments", jwks=source)
    principal = verifier.verify(answer.json()["access_token"])
    assert (principal.client_id, principal.scopes) == ("shop", frozenset({"payments:write"}))
    assert source.max_age == server.config.jwks_max_age
    assert source.fetch() == source.fetch(), "a revalidated set is the same set"
