"""Issue 11: attacks on the revocation list's store and on secret rotation, one named test each.

Real TokenServices on free ports run on an injected frozen clock, so a grace period ends when a
test moves the clock, never by sleeping. Refusals on the wire are asserted by status code and
``ErrorInfo`` reason; refusals of the application layer by the OAuth error code.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from authsvc import authority as application
from authsvc.authority import Authority
from authsvc.authority.revocations import LEEWAY_MARGIN, RevocationRegistry
from authsvc.core.clients import MAX_TOKEN_TTL
from authsvc.core.errors import InvalidRequest
from authsvc.core.ports import SystemRandom
from authsvc.core.revocation import Revocation, RevocationSet
from authsvc.server.app import RunningServer, start_server
from authsvc.store.memory import MemoryStore
from authsvc.store.sqlite import SQLiteStore
from authsvc.v1 import token_pb2, token_pb2_grpc
from tests.conftest import KEK, serve_config
from tests.core.fakes import FrozenClock
from tests.helpers import ServerThread
from tests.server.test_token_service import error_reason

NOW = 1_700_000_000


@dataclass
class Service:
    authority: Authority
    clock: FrozenClock
    stub: token_pb2_grpc.TokenServiceStub

    def issue(self, client_id: str, secret: str) -> token_pb2.IssueTokenResponse:
        return self.stub.IssueToken(
            token_pb2.IssueTokenRequest(
                grant_type="client_credentials", client_id=client_id, client_secret=secret
            ),
            timeout=10,
        )

    def refused(self, client_id: str, secret: str) -> tuple[grpc.StatusCode, str]:
        with pytest.raises(grpc.RpcError) as info:
            self.issue(client_id, secret)
        return error_reason(info.value)

    def register(self, client_id: str = "shop") -> str:
        _, secret = self.authority.clients.create_client(
            client_id=client_id, scopes=["payments:read"], audiences=["payments"]
        )
        return secret


def _start(tmp_path: Path, clock: FrozenClock, **overrides: object) -> Iterator[Service]:
    config = serve_config(tmp_path / "data", **overrides)
    authority = application.open_authority(
        config.data_dir, kek=KEK, kek_file=None, clock=clock, random=SystemRandom()
    )
    thread: ServerThread[RunningServer] = ServerThread(lambda: start_server(config, authority=authority))
    running = thread.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            yield Service(authority, clock, token_pb2_grpc.TokenServiceStub(channel))
    finally:
        thread.stop(grace=0)


@pytest.fixture
def service(tmp_path: Path) -> Iterator[Service]:
    # whole seconds of real time, so that tokens it signs are valid now
    yield from _start(tmp_path, FrozenClock(float(int(time.time()))))


def _claims(token: str) -> dict[str, object]:
    payload = token.split(".")[1]
    return dict(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))))


# -- two live secrets ----------------------------------------------------------------------------


def test_old_secret_refused_after_the_grace_period(service: Service) -> None:
    old = service.register()
    _, new = service.authority.clients.rotate_secret("shop", grace=6)
    assert service.issue("shop", old).access_token  # during the grace: both
    assert service.issue("shop", new).access_token
    service.clock.advance(6)  # the cached client record says nothing: the clock decides
    assert service.refused("shop", old) == (grpc.StatusCode.UNAUTHENTICATED, "INVALID_CLIENT")
    assert service.issue("shop", new).access_token
    service.clock.advance(10**6)  # and never again
    assert service.refused("shop", old) == (grpc.StatusCode.UNAUTHENTICATED, "INVALID_CLIENT")


def test_old_secret_refused_at_once_with_grace_zero(service: Service) -> None:
    old = service.register()
    _, new = service.authority.clients.rotate_secret("shop", grace=0)
    assert service.refused("shop", old) == (grpc.StatusCode.UNAUTHENTICATED, "INVALID_CLIENT")
    assert service.issue("shop", new).access_token


def test_second_rotation_during_the_grace_refused(service: Service) -> None:
    first = service.register()
    _, second = service.authority.clients.rotate_secret("shop", grace=60)
    with pytest.raises(InvalidRequest) as info:
        service.authority.clients.rotate_secret("shop", grace=60)
    assert info.value.error == "invalid_request"
    # nothing changed: the two live secrets are the same two
    assert service.issue("shop", first).access_token
    assert service.issue("shop", second).access_token


def test_end_grace_never_leaves_three_live_secrets(service: Service) -> None:
    first = service.register()
    _, second = service.authority.clients.rotate_secret("shop", grace=60)
    _, third = service.authority.clients.rotate_secret("shop", grace=60, end_grace=True)
    assert service.refused("shop", first) == (grpc.StatusCode.UNAUTHENTICATED, "INVALID_CLIENT")
    assert service.issue("shop", second).access_token
    assert service.issue("shop", third).access_token


def test_previous_secret_of_a_disabled_client_refused(service: Service) -> None:
    old = service.register()
    service.authority.clients.rotate_secret("shop", grace=600)
    service.authority.clients.set_enabled("shop", False)  # before any request: nothing cached
    assert service.refused("shop", old) == (grpc.StatusCode.UNAUTHENTICATED, "INVALID_CLIENT")


# -- the revocation list -------------------------------------------------------------------------


def _listed(authority: Authority, now: int) -> RevocationSet:
    sequence, entries = authority.store.revocation_snapshot(now)
    return RevocationSet.of(entries, sequence=sequence)


def test_revoked_client_entry_survives_a_reenable_for_old_tokens(service: Service) -> None:
    secret = service.register()
    old_token = _claims(service.issue("shop", secret).access_token)
    service.authority.clients.set_enabled("shop", False)
    service.authority.revocations.revoke_client("shop")
    service.authority.clients.set_enabled("shop", True)
    service.clock.advance(1)  # a token issued after the disable's second
    new_token = _claims(service.issue("shop", secret).access_token)
    listed = _listed(service.authority, int(service.clock.now()))
    assert listed.refuses(jti=str(old_token["jti"]), client_id="shop", issued_at=float(str(old_token["iat"])))
    assert not listed.refuses(
        jti=str(new_token["jti"]), client_id="shop", issued_at=float(str(new_token["iat"]))
    )


def test_tokens_issued_from_a_stale_client_cache_after_a_disable_are_revoked(tmp_path: Path) -> None:
    for service in _start(tmp_path, FrozenClock(float(int(time.time()))), client_cache_ttl=5):
        secret = service.register()
        service.issue("shop", secret)  # the server now caches the client as enabled, for 5 s
        service.authority.clients.set_enabled("shop", False)
        entry = service.authority.revocations.revoke_client("shop", also_next=5)
        service.clock.advance(5)  # still within the cut-off, whatever the cache answers
        try:
            late = _claims(service.issue("shop", secret).access_token)
        except grpc.RpcError as err:  # the cache had expired: refused at the token endpoint
            assert error_reason(err) == (grpc.StatusCode.UNAUTHENTICATED, "INVALID_CLIENT")
        else:  # issued from the cache: the list refuses it
            assert entry.refuses(jti=str(late["jti"]), client_id="shop", issued_at=float(str(late["iat"])))


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MemoryStore | SQLiteStore]:
    s = MemoryStore() if request.param == "memory" else SQLiteStore(tmp_path / "r.db")
    yield s
    s.close()


def test_table_purged_of_expired_entries(store: MemoryStore | SQLiteStore) -> None:
    # a flood of short entries cannot grow the table: each write purges what has expired
    for i in range(50):
        store.add_revocation(Revocation(expires_at=NOW + i + 1, jti=f"flood-{i}"), now=NOW + i)
    assert [e.jti for _, e in store.revocations_after(0)] == ["flood-49"]


def test_sequences_never_reused_after_a_purge(store: MemoryStore | SQLiteStore) -> None:
    # a reused number would let a verifier that saw it skip the new entry on resume
    seen = [
        store.add_revocation(Revocation(expires_at=NOW + 1, jti=f"j{i}"), now=NOW + 1 + i) for i in range(5)
    ]
    assert seen == sorted(set(seen)) and len(seen) == 5
    assert store.revocation_snapshot(NOW + 100)[0] == seen[-1]


def test_revoke_token_cannot_make_the_list_outlive_every_token(store: MemoryStore | SQLiteStore) -> None:
    registry = RevocationRegistry(store, FrozenClock(NOW), MAX_TOKEN_TTL)
    entry = registry.revoke_token("jti-1", expires_at=2**62)
    assert entry.expires_at == NOW + MAX_TOKEN_TTL + LEEWAY_MARGIN


@pytest.mark.parametrize(
    "jti",
    ["forged\nINFO token issued", "\x1b[31mred", "a" * 4096, ""],
    ids=["newline", "escape", "huge", "empty"],
)
def test_malformed_jti_refused_and_nothing_written(store: MemoryStore | SQLiteStore, jti: str) -> None:
    registry = RevocationRegistry(store, FrozenClock(NOW), MAX_TOKEN_TTL)
    with pytest.raises(InvalidRequest) as info:
        registry.revoke_token(jti)
    assert info.value.error == "invalid_request"
    assert store.revocations_after(0) == []


def test_revoke_client_with_a_forged_id_refused(store: MemoryStore | SQLiteStore) -> None:
    registry = RevocationRegistry(store, FrozenClock(NOW), MAX_TOKEN_TTL)
    with pytest.raises(InvalidRequest) as info:
        registry.revoke_client("shop\nINFO client enabled")
    assert info.value.error == "invalid_request"
    assert store.revocations_after(0) == []
