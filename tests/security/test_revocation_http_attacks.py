"""Attacks on the revocation list over HTTP: ``GET /oauth2/revocations`` at a real TokenService,
and :class:`authsvc.verify.HttpRevocationSource` against a hostile list server.

- The list reveals which clients were disabled and which tokens stolen: without credentials,
  with a wrong secret, or as a client without ``authsvc:revocations`` it is refused, and a
  conditional request learns nothing either.
- The source's Basic header carries its secret: plaintext to anything but loopback is refused at
  construction, and no log line ever shows the secret.
- A list server that answers too much, answers garbage, or redirects elsewhere cannot make the
  verifier drop the list it holds; the failure makes the source a non-working one, which the
  cache's staleness policy then handles (fail closed refuses once stale).

Polls are driven one at a time (``poll_once``), clocks injected: no sleeps, no timed assertions.
"""

from __future__ import annotations

import json
import logging
import secrets
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import requests

from authsvc.core.errors import TemporarilyUnavailable
from authsvc.core.revocation import REVOCATIONS_SCOPE
from authsvc.server.app import RunningServer, open_authority, start_server
from authsvc.verify import HttpRevocationSource, RevocationCache
from tests.conftest import TokenServer, serve_config
from tests.helpers import ServerThread

TIMEOUT = 10
SECRET = "s3cr3t-" + "x" * 24
MAX_BYTES = 4096


# -- the endpoint at a real TokenService -----------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TokenServer]:
    config = serve_config(tmp_path_factory.mktemp("revocations-attacks") / "data", http_listen="127.0.0.1:0")
    thread: ServerThread[RunningServer] = ServerThread(
        lambda: start_server(config, authority=open_authority(config))
    )
    running = thread.start()
    try:
        yield TokenServer(running, config, thread)
    finally:
        thread.stop(grace=0)


def list_url(server: TokenServer) -> str:
    return server.http_url + "/oauth2/revocations"


def test_no_credentials_are_refused(server: TokenServer) -> None:
    answer = requests.get(list_url(server), timeout=TIMEOUT)
    assert answer.status_code == 401
    assert answer.json()["error"] == "invalid_client"
    assert "revocations" not in answer.text
    # a Bearer token is no client credential either
    bearer = requests.get(list_url(server), headers={"Authorization": "Bearer abc"}, timeout=TIMEOUT)
    assert bearer.status_code == 401


def test_a_wrong_secret_is_refused_and_the_source_never_logs_it(
    server: TokenServer, caplog: pytest.LogCaptureFixture
) -> None:
    reader = server.register(
        f"rs-{secrets.token_hex(4)}", scopes=(REVOCATIONS_SCOPE,), audiences=("authsvc",)
    )
    assert requests.get(list_url(server), auth=(reader.client_id, SECRET), timeout=TIMEOUT).status_code == 401
    source = HttpRevocationSource(list_url(server), client_id=reader.client_id, client_secret=SECRET)
    cache = RevocationCache()
    with caplog.at_level(logging.DEBUG):
        assert source.poll_once(cache) is False
        assert source.poll_once(cache) is False
    assert not cache.has_list and cache.down_since is not None
    assert SECRET not in caplog.text and SECRET not in repr(source)
    assert "HTTP 401" in caplog.text


def test_a_client_without_the_scope_is_refused(server: TokenServer) -> None:
    shop = server.register(f"shop-{secrets.token_hex(4)}", scopes=("payments:read",))
    answer = requests.get(list_url(server), auth=(shop.client_id, shop.secret), timeout=TIMEOUT)
    assert answer.status_code == 403
    assert answer.json()["error"] == "unauthorized_client"
    for etag in ('"0"', '"1"', "*"):  # no 304 oracle for the sequence either
        conditional = requests.get(
            list_url(server),
            auth=(shop.client_id, shop.secret),
            headers={"If-None-Match": etag},
            timeout=TIMEOUT,
        )
        assert conditional.status_code == 403
    source = HttpRevocationSource(list_url(server), client_id=shop.client_id, client_secret=shop.secret)
    cache = RevocationCache()
    assert source.poll_once(cache) is False
    assert not cache.has_list
    assert source.last_error is not None and "HTTP 403" in source.last_error


# -- construction --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "http://auth.example.com/oauth2/revocations",
        "http://10.0.0.7:8080/oauth2/revocations",
        "http://[2001:db8::1]/oauth2/revocations",
    ],
)
def test_plaintext_to_a_non_loopback_url_is_refused_at_construction(url: str) -> None:
    with pytest.raises(ValueError, match="without TLS") as caught:
        HttpRevocationSource(url, client_id="rs", client_secret=SECRET)
    assert SECRET not in str(caught.value)
    # inside a trusted mesh, on purpose only
    HttpRevocationSource(url, client_id="rs", client_secret=SECRET, allow_plaintext=True).close()


@pytest.mark.parametrize(
    ("url", "kw"),
    [
        ("ftp://auth.example.com/oauth2/revocations", {}),
        ("https://user:pw@auth.example.com/oauth2/revocations", {}),
        ("https://auth.example.com/oauth2/revocations#x", {}),
        ("/oauth2/revocations", {}),
        ("https://auth.example.com/oauth2/revocations", {"client_secret": ""}),
        ("https://auth.example.com/oauth2/revocations", {"client_id": ""}),
        ("https://auth.example.com/oauth2/revocations", {"poll_interval": 0}),
        ("https://auth.example.com/oauth2/revocations", {"poll_interval": float("inf")}),
        ("https://auth.example.com/oauth2/revocations", {"max_bytes": 0}),
        ("http://127.0.0.1/oauth2/revocations", {"ca_file": "ca.pem"}),
    ],
)
def test_unsafe_or_nonsensical_settings_are_refused(url: str, kw: dict[str, Any]) -> None:
    settings: dict[str, Any] = {"client_id": "rs", "client_secret": SECRET, **kw}
    with pytest.raises(ValueError):
        HttpRevocationSource(url, **settings)


def test_an_ssl_context_that_does_not_verify_is_refused() -> None:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with pytest.raises(ValueError, match="verify"):
        HttpRevocationSource(
            "https://auth.example.com/oauth2/revocations",
            client_id="rs",
            client_secret=SECRET,
            ssl_context=context,
        )


# -- a hostile list server -------------------------------------------------------------------


@dataclass
class Hostile:
    """A list server on loopback whose next answer the test chooses."""

    port: int = 0
    mode: str = "good"
    authorizations: list[str] = field(default_factory=list)
    conditions: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/oauth2/revocations"


GOOD = {"sequence": 7, "revocations": [{"jti": "stolen", "expires_at": 4_102_444_800}]}


@pytest.fixture
def hostile() -> Iterator[Hostile]:
    state = Hostile()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _send(self, status: int, body: bytes, headers: dict[str, str]) -> None:
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            state.authorizations.append(self.headers.get("Authorization", ""))
            state.conditions.append(self.headers.get("If-None-Match", ""))
            json_type = {"Content-Type": "application/json"}
            mode = state.mode
            if mode == "conditional" and self.headers.get("If-None-Match") == '"7"':
                self._send(304, b"", {"ETag": '"7"'})
            elif mode in ("good", "conditional"):
                body = json.dumps(GOOD).encode()
                self._send(200, body, {**json_type, "Content-Length": str(len(body)), "ETag": '"7"'})
            elif mode == "oversize-declared":
                body = b'{"sequence": 8, "revocations": []}' + b" " * MAX_BYTES
                self._send(200, body, {**json_type, "Content-Length": str(len(body))})
            elif mode == "oversize-undeclared":  # no Content-Length: read until close, capped
                self.close_connection = True
                big = {"sequence": 8, "revocations": [{"jti": "x" * 100, "expires_at": 1}] * 100}
                self._send(200, json.dumps(big).encode(), {**json_type, "Connection": "close"})
            elif mode == "garbage":
                self._send(200, b"{not json", {**json_type, "Content-Length": "9"})
            elif mode == "wrong-shape":
                body = b'{"sequence": "8", "revocations": {}}'
                self._send(200, body, {**json_type, "Content-Length": str(len(body))})
            elif mode == "html":
                self._send(200, b"<html></html>", {"Content-Type": "text/html", "Content-Length": "13"})
            elif mode == "redirect-away":
                self._send(302, b"", {"Location": "http://127.0.0.2:9/steal", "Content-Length": "0"})
            elif mode == "empty-list":  # a legitimate empty list: replaces, as the server says
                body = b'{"sequence": 9, "revocations": []}'
                self._send(200, body, {**json_type, "Content-Length": str(len(body))})
            else:
                self._send(500, b"", {"Content-Length": "0"})

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.port = httpd.server_address[1]
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def source_and_cache(hostile: Hostile, **cache_kw: Any) -> tuple[HttpRevocationSource, RevocationCache]:
    source = HttpRevocationSource(hostile.url, client_id="rs", client_secret=SECRET, max_bytes=MAX_BYTES)
    cache = RevocationCache(**cache_kw)
    hostile.mode = "good"
    assert source.poll_once(cache) is True
    assert "stolen" in cache.revocations.by_jti and cache.sequence == 7
    return source, cache


@pytest.mark.parametrize(
    "mode",
    ["oversize-declared", "oversize-undeclared", "garbage", "wrong-shape", "html", "redirect-away", "500"],
)
def test_a_bad_answer_is_refused_while_the_last_list_is_kept(hostile: Hostile, mode: str) -> None:
    source, cache = source_and_cache(hostile)
    hostile.mode = mode
    assert source.poll_once(cache) is False
    assert "stolen" in cache.revocations.by_jti and cache.sequence == 7, "the last list is kept"
    assert cache.has_list and cache.down_since is not None, "a failing poll is a non-working source"
    assert source.last_error is not None
    if mode.startswith("oversize"):
        assert f"more than {MAX_BYTES} bytes" in source.last_error
    # and once the server answers well again, the source works again
    hostile.mode = "good"
    assert source.poll_once(cache) is True
    assert cache.down_since is None and source.last_error is None


def test_the_secret_goes_only_in_the_basic_header_form_urlencoded(hostile: Hostile) -> None:
    import base64

    source = HttpRevocationSource(hostile.url, client_id="rs:1", client_secret="a b/c:d")
    assert source.poll_once(RevocationCache()) is True
    scheme, _, value = hostile.authorizations[-1].partition(" ")
    assert scheme == "Basic"
    assert base64.b64decode(value).decode() == "rs%3A1:a%20b%2Fc%3Ad"


def test_a_304_keeps_the_list_and_proves_the_source_works(hostile: Hostile) -> None:
    source, cache = source_and_cache(hostile)
    hostile.mode = "500"
    assert source.poll_once(cache) is False
    assert cache.down_since is not None
    hostile.mode = "conditional"
    assert source.poll_once(cache) is True
    assert hostile.conditions[-1] == '"7"'
    assert "stolen" in cache.revocations.by_jti and cache.sequence == 7
    assert cache.down_since is None


def test_fail_closed_refuses_once_a_failing_source_has_been_down_too_long(hostile: Hostile) -> None:
    clock = Clock()
    source, cache = source_and_cache(hostile, max_staleness=30, fail_closed=True, monotonic=clock)
    cache.check(jti="other", client_id="shop", issued_at=0)  # the list is current
    hostile.mode = "oversize-declared"
    assert source.poll_once(cache) is False
    clock.now += 29
    cache.check(jti="other", client_id="shop", issued_at=0)  # not stale yet
    clock.now += 2
    with pytest.raises(TemporarilyUnavailable):
        cache.check(jti="other", client_id="shop", issued_at=0)
    hostile.mode = "good"
    assert source.poll_once(cache) is True
    cache.check(jti="other", client_id="shop", issued_at=0)  # working again


def test_an_empty_list_from_the_server_replaces_the_list(hostile: Hostile) -> None:
    """Each answer is a snapshot: what the server says now is the list (an entry that expired
    or a reset store), so an authenticated empty answer empties it."""
    source, cache = source_and_cache(hostile)
    hostile.mode = "empty-list"
    assert source.poll_once(cache) is True
    assert len(cache.revocations) == 0 and cache.sequence == 9
