"""``GET /oauth2/revocations``: the revocation list over HTTP, for verifiers that reach the
TokenService only over HTTP (:class:`authsvc.verify.HttpRevocationSource`). Only a client holding
``authsvc:revocations`` may read it (Basic); the answer is the whole current list, never cached,
with an ``ETag`` of its sequence and 304 for ``If-None-Match``.

One real TokenService (gRPC and HTTP on free loopback ports) per module; each test registers its
own clients. Waits are bounded conditions, never sleeps followed by assertions.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Iterator

import pytest
import requests

from authsvc.authority.revocations import RevocationFeed
from authsvc.core.revocation import REVOCATIONS_SCOPE
from authsvc.server.app import RunningServer, open_authority, start_server
from authsvc.verify import HttpRevocationSource, RevocationCache
from tests.conftest import ISSUER, RegisteredClient, TokenServer, serve_config
from tests.helpers import ServerThread

TIMEOUT = 10
WAIT = 10.0


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TokenServer]:
    config = serve_config(tmp_path_factory.mktemp("revocations-http") / "data", http_listen="127.0.0.1:0")
    thread: ServerThread[RunningServer] = ServerThread(
        lambda: start_server(config, authority=open_authority(config))
    )
    running = thread.start()
    try:
        yield TokenServer(running, config, thread)
    finally:
        thread.stop(grace=0)


def feed_of(server: TokenServer) -> RevocationFeed:
    feed = server.running.revocations
    assert feed is not None
    return feed


def until(predicate: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


def reader(server: TokenServer) -> RegisteredClient:
    return server.register(f"rs-{secrets.token_hex(4)}", scopes=(REVOCATIONS_SCOPE,), audiences=("authsvc",))


def url(server: TokenServer) -> str:
    return server.http_url + "/oauth2/revocations"


def get(server: TokenServer, client: RegisteredClient | None, **headers: str) -> requests.Response:
    auth = None if client is None else (client.client_id, client.secret)
    return requests.get(url(server), auth=auth, headers=headers, timeout=TIMEOUT)


def revoke_jti(server: TokenServer, jti: str) -> int:
    """Add a token entry through the application layer and wait until the feed holds it."""
    server.authority.revocations.revoke_token(jti)
    feed = feed_of(server)
    feed.notify()
    until(lambda: jti in feed.set.by_jti, "the feed never read the entry")
    return feed.sequence


def test_the_list_is_served_whole_with_its_sequence_and_never_cached(server: TokenServer) -> None:
    client = reader(server)
    revoke_jti(server, "jti-http-list-1")
    server.authority.revocations.revoke_client("gone-shop")
    feed = feed_of(server)
    feed.notify()
    until(lambda: "gone-shop" in feed.set.by_client, "the feed never read the client entry")
    answer = get(server, client)
    assert answer.status_code == 200
    assert answer.headers["Content-Type"].startswith("application/json")
    assert answer.headers["Cache-Control"] == "no-store"
    body = answer.json()
    assert set(body) == {"sequence", "revocations"}
    assert body["sequence"] >= feed.sequence  # at least the list waited for
    assert answer.headers["ETag"] == f'"{body["sequence"]}"'
    by_jti = {e["jti"]: e for e in body["revocations"] if "jti" in e}
    by_client = {e["client_id"]: e for e in body["revocations"] if "client_id" in e}
    assert set(by_jti["jti-http-list-1"]) == {"jti", "expires_at"}
    assert isinstance(by_jti["jti-http-list-1"]["expires_at"], int)
    gone = by_client["gone-shop"]
    assert set(gone) == {"client_id", "not_before", "expires_at"}
    assert (gone["not_before"], gone["expires_at"]) == feed.set.by_client["gone-shop"]


def test_if_none_match_with_the_current_sequence_is_304_and_a_change_is_200(server: TokenServer) -> None:
    client = reader(server)
    first = get(server, client)
    etag = first.headers["ETag"]
    not_modified = get(server, client, **{"If-None-Match": etag})
    assert not_modified.status_code == 304
    assert not_modified.headers["ETag"] == etag
    assert not_modified.content == b""
    sequence = revoke_jti(server, "jti-http-etag")
    changed = get(server, client, **{"If-None-Match": etag})
    assert changed.status_code == 200
    assert changed.headers["ETag"] == f'"{sequence}"' != etag
    assert "jti-http-etag" in {e.get("jti") for e in changed.json()["revocations"]}


def test_without_credentials_it_is_401_invalid_client(server: TokenServer) -> None:
    answer = get(server, None)
    assert answer.status_code == 401
    assert answer.json()["error"] == "invalid_client"
    assert answer.headers["Cache-Control"] == "no-store"
    assert "revocations" not in answer.json()


def test_a_wrong_secret_is_401_with_a_basic_challenge(server: TokenServer) -> None:
    client = reader(server)
    answer = get(server, RegisteredClient(client.client_id, client.secret + "x"))
    assert answer.status_code == 401
    assert answer.json()["error"] == "invalid_client"
    assert answer.headers["WWW-Authenticate"].startswith("Basic")


def test_a_client_without_the_scope_is_403_unauthorized_client(server: TokenServer) -> None:
    shop = server.register(f"shop-{secrets.token_hex(4)}", scopes=("payments:read",))
    answer = get(server, shop)
    assert answer.status_code == 403
    assert answer.json()["error"] == "unauthorized_client"
    assert "revocations" not in answer.json()
    # a conditional request learns nothing either: no 304 before authorization
    etag = get(server, reader(server)).headers["ETag"]
    assert get(server, shop, **{"If-None-Match": etag}).status_code == 403


def test_credentials_in_the_query_are_not_accepted(server: TokenServer) -> None:
    client = reader(server)
    answer = requests.get(
        url(server), params={"client_id": client.client_id, "client_secret": client.secret}, timeout=TIMEOUT
    )
    assert answer.status_code == 401


def test_the_metadata_names_the_endpoint(server: TokenServer) -> None:
    document = requests.get(
        server.http_url + "/.well-known/oauth-authorization-server", timeout=TIMEOUT
    ).json()
    assert document["revocation_list_endpoint"] == ISSUER + "/oauth2/revocations"


def test_http_revocation_source_reads_the_list_and_follows_it(server: TokenServer) -> None:
    client = reader(server)
    sequence = revoke_jti(server, "jti-http-source-1")
    source = HttpRevocationSource(
        url(server), client_id=client.client_id, client_secret=client.secret, poll_interval=0.05
    )
    cache = RevocationCache(source)
    try:
        assert cache.wait_for(sequence, timeout=WAIT)
        assert "jti-http-source-1" in cache.revocations.by_jti
        later = revoke_jti(server, "jti-http-source-2")
        assert cache.wait_for(later, timeout=WAIT)
        assert "jti-http-source-2" in cache.revocations.by_jti
        assert source.last_error is None
        # unchanged lists are revalidated with If-None-Match and kept
        polls = source.polls
        until(lambda: source.polls > polls + 2, "the source stopped polling")
        assert cache.sequence == later and not cache.stale
    finally:
        cache.close()


def test_a_source_whose_secret_is_refused_reports_down_and_keeps_nothing(server: TokenServer) -> None:
    client = reader(server)
    source = HttpRevocationSource(
        url(server), client_id=client.client_id, client_secret="not-the-secret", poll_interval=0.05
    )
    cache = RevocationCache()
    assert source.poll_once(cache) is False
    assert cache.down_since is not None and not cache.has_list
    assert source.last_error is not None and "HTTP 401" in source.last_error
    assert "not-the-secret" not in source.last_error
