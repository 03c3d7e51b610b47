"""Hostile requests against the TokenService's HTTP endpoints, one named case each, through a
real server and real HTTP. Each asserts the status and the RFC 6749 §5.2 ``error`` code."""

from __future__ import annotations

import base64
import logging
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from authsvc.http.oauth import MAX_FORM_BYTES
from authsvc.server.app import RunningServer, open_authority, start_server
from tests.conftest import RegisteredClient, TokenServer, serve_config
from tests.helpers import ServerThread

TIMEOUT = 10
GRANT = {"grant_type": "client_credentials"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TokenServer]:
    config = serve_config(tmp_path_factory.mktemp("http-attacks") / "data", http_listen="127.0.0.1:0")
    thread: ServerThread[RunningServer] = ServerThread(
        lambda: start_server(config, authority=open_authority(config))
    )
    running = thread.start()
    try:
        yield TokenServer(running, config, thread)
    finally:
        thread.stop(grace=0)


@pytest.fixture(scope="module")
def shop(server: TokenServer) -> RegisteredClient:
    return server.register("attacked-shop")


def token(server: TokenServer, **kwargs: Any) -> tuple[int, str]:
    answer = requests.post(server.http_url + "/oauth2/token", timeout=TIMEOUT, **kwargs)
    try:
        error = str(answer.json().get("error", ""))
    except ValueError:
        error = ""
    return answer.status_code, error


def basic(client_id: str, secret: str) -> str:
    return "Basic " + base64.b64encode(f"{client_id}:{secret}".encode()).decode()


def test_repeated_grant_type_is_invalid_request(server: TokenServer, shop: RegisteredClient) -> None:
    data = [("grant_type", "client_credentials"), ("grant_type", "client_credentials")]
    assert token(server, data=data, auth=(shop.client_id, shop.secret)) == (400, "invalid_request")


def test_repeated_client_secret_is_invalid_request(server: TokenServer, shop: RegisteredClient) -> None:
    data = [
        *GRANT.items(),
        ("client_id", shop.client_id),
        ("client_secret", "x"),
        ("client_secret", shop.secret),
    ]
    assert token(server, data=data) == (400, "invalid_request")


def test_basic_and_client_secret_together_is_invalid_request(
    server: TokenServer, shop: RegisteredClient
) -> None:
    data = {**GRANT, "client_secret": shop.secret}
    assert token(server, data=data, auth=(shop.client_id, shop.secret)) == (400, "invalid_request")


def test_two_authorization_headers_is_invalid_request(server: TokenServer, shop: RegisteredClient) -> None:
    # requests folds duplicate header names, so send the raw list through urllib3
    import urllib3

    answer = urllib3.PoolManager().request(
        "POST",
        server.http_url + "/oauth2/token",
        body="grant_type=client_credentials",
        headers=urllib3.HTTPHeaderDict(
            [
                ("Content-Type", "application/x-www-form-urlencoded"),
                ("Authorization", basic(shop.client_id, shop.secret)),
                ("Authorization", basic(shop.client_id, "wrong")),
            ]
        ),
        timeout=TIMEOUT,
    )
    assert (answer.status, answer.json()["error"]) == (400, "invalid_request")


def test_json_body_is_invalid_request(server: TokenServer, shop: RegisteredClient) -> None:
    assert token(server, json=GRANT, auth=(shop.client_id, shop.secret)) == (400, "invalid_request")


def test_multipart_body_is_invalid_request(server: TokenServer, shop: RegisteredClient) -> None:
    files = {"grant_type": (None, "client_credentials")}
    assert token(server, files=files, auth=(shop.client_id, shop.secret)) == (400, "invalid_request")


def test_oversize_body_is_refused_before_parsing(server: TokenServer, shop: RegisteredClient) -> None:
    data = {**GRANT, "scope": "a" * (MAX_FORM_BYTES + 10)}
    assert token(server, data=data, auth=(shop.client_id, shop.secret)) == (400, "invalid_request")


def test_credentials_in_the_query_string_are_ignored(server: TokenServer, shop: RegisteredClient) -> None:
    params = {"client_id": shop.client_id, "client_secret": shop.secret}
    assert token(server, data=GRANT, params=params) == (401, "invalid_client")


def test_get_on_the_token_endpoint_is_not_allowed(server: TokenServer, shop: RegisteredClient) -> None:
    answer = requests.get(
        server.http_url + "/oauth2/token",
        params={**GRANT},
        auth=(shop.client_id, shop.secret),
        timeout=TIMEOUT,
    )
    assert answer.status_code == 405


def test_invalid_percent_encoding_is_invalid_request(server: TokenServer, shop: RegisteredClient) -> None:
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    body = "grant_type=client_credentials&scope=%FF%FE"
    assert token(server, data=body, headers=headers, auth=(shop.client_id, shop.secret)) == (
        400,
        "invalid_request",
    )


def test_non_ascii_body_is_invalid_request(server: TokenServer, shop: RegisteredClient) -> None:
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    body = "grant_type=client_credentials&scope=pay\u00e9".encode()
    assert token(server, data=body, headers=headers, auth=(shop.client_id, shop.secret)) == (
        400,
        "invalid_request",
    )


def test_too_many_fields_is_invalid_request(server: TokenServer, shop: RegisteredClient) -> None:
    data = [*GRANT.items(), *((f"x{i}", "1") for i in range(100))]
    assert token(server, data=data, auth=(shop.client_id, shop.secret)) == (400, "invalid_request")


def test_bearer_scheme_at_the_token_endpoint_is_invalid_client(server: TokenServer) -> None:
    headers = {"Authorization": "Bearer something"}
    assert token(server, data=GRANT, headers=headers) == (401, "invalid_client")


def test_basic_without_a_colon_is_invalid_client(server: TokenServer) -> None:
    headers = {"Authorization": "Basic " + base64.b64encode(b"no-colon").decode()}
    assert token(server, data=GRANT, headers=headers) == (401, "invalid_client")


def test_unknown_client_and_wrong_secret_answer_the_same(server: TokenServer, shop: RegisteredClient) -> None:
    unknown = requests.post(
        server.http_url + "/oauth2/token", data=GRANT, auth=("nobody", "x"), timeout=TIMEOUT
    )
    wrong = requests.post(
        server.http_url + "/oauth2/token", data=GRANT, auth=(shop.client_id, "x"), timeout=TIMEOUT
    )
    assert (unknown.status_code, unknown.json()) == (wrong.status_code, wrong.json())
    assert unknown.headers["WWW-Authenticate"] == wrong.headers["WWW-Authenticate"]


def test_secret_sent_as_client_id_over_http_is_never_logged(
    server: TokenServer, shop: RegisteredClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    assert token(server, data=GRANT, auth=(shop.secret, shop.secret)) == (401, "invalid_client")
    random_part = shop.secret.removeprefix("authsvc_cs_")
    pieces = {random_part[i : i + 8] for i in range(len(random_part) - 7)}
    for record in caplog.records:
        assert not any(piece in record.getMessage() for piece in pieces), record.name


def test_introspection_of_a_token_for_another_client_reveals_nothing(
    server: TokenServer, shop: RegisteredClient
) -> None:
    other = server.register("nosy-shop")
    issued = requests.post(
        server.http_url + "/oauth2/token", data=GRANT, auth=(shop.client_id, shop.secret), timeout=TIMEOUT
    ).json()["access_token"]
    answer = requests.post(
        server.http_url + "/oauth2/introspect",
        data={"token": issued},
        auth=(other.client_id, other.secret),
        timeout=TIMEOUT,
    )
    assert answer.status_code == 200 and answer.json() == {"active": False}
