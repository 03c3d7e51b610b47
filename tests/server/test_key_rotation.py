"""Key rotation against real servers, under load: not one call fails, every key is published for
the publication delay before it signs, and verifiers learn keys by push (WatchJwks) or by polling."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import jwt
import pytest

from authsvc.core.keys import KeyState
from authsvc.server.app import RunningServer, open_authority, start_server
from authsvc.v1 import token_pb2, token_pb2_grpc
from authsvc.verify import AuthInterceptor, GrpcJwksSource, JwksCache, TokenVerifier
from tests.conftest import ISSUER, serve_config
from tests.helpers import ServerThread
from tests.verify.echo import SyncEcho, pb2, pb2_grpc

PUBLISH_DELAY = 2
LOAD_PAUSE = 0.05  # between one load thread's rounds (a token and two verifications)
SCOPES = ["echo:read"]


@dataclass
class Echo:
    server: grpc.Server
    port: int
    cache: JwksCache


def start_echo(cache: JwksCache) -> Echo:
    verifier = TokenVerifier(issuer=ISSUER, audience="echo", jwks=cache)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8), interceptors=[AuthInterceptor(verifier)])
    pb2_grpc.add_EchoServiceServicer_to_server(SyncEcho(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return Echo(server, port, cache)


@dataclass
class World:
    running: RunningServer
    pushed: Echo  # learns keys only through WatchJwks (polling and refetching are all but off)
    polled: Echo  # learns keys only by polling GetJwks, every 0.5 s
    secret: str

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.running.port}"


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    config = serve_config(
        tmp_path / "d", key_publish_delay=PUBLISH_DELAY, jwks_max_age=1, key_tick_interval=0.2
    )
    thread: ServerThread[RunningServer] = ServerThread(
        lambda: start_server(config, authority=open_authority(config))
    )
    running = thread.start()
    target = f"127.0.0.1:{running.port}"
    _, secret = running.authority.clients.create_client(client_id="loader", scopes=SCOPES, audiences=["echo"])
    pushed = start_echo(JwksCache(GrpcJwksSource(target), max_age=3600, cooldown=3600))
    polled = start_echo(JwksCache(GrpcJwksSource(target, watch=False), max_age=0.5, cooldown=3600))
    try:
        yield World(running, pushed, polled, secret)
    finally:
        for echo in (pushed, polled):
            echo.server.stop(0).wait()
            echo.cache.close()
        thread.stop(0)


@dataclass
class Observations:
    first_published: dict[str, float] = field(default_factory=dict)
    first_signed: dict[str, float] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    calls: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


def observe_jwks(target: str, seen: Observations, stop: threading.Event) -> None:
    with grpc.insecure_channel(target) as channel:
        stub = token_pb2_grpc.TokenServiceStub(channel)
        while not stop.is_set():
            jwks = json.loads(stub.GetJwks(token_pb2.GetJwksRequest(), timeout=5).jwks_json)
            now = time.monotonic()
            for key in jwks["keys"]:
                seen.first_published.setdefault(key["kid"], now)
            stop.wait(0.02)


def load(world: World, seen: Observations, stop: threading.Event) -> None:
    with (
        grpc.insecure_channel(world.target) as auth,
        grpc.insecure_channel(f"127.0.0.1:{world.pushed.port}") as pushed_channel,
        grpc.insecure_channel(f"127.0.0.1:{world.polled.port}") as polled_channel,
    ):
        tokens = token_pb2_grpc.TokenServiceStub(auth)
        echoes = [pb2_grpc.EchoServiceStub(pushed_channel), pb2_grpc.EchoServiceStub(polled_channel)]
        while not stop.is_set():
            try:
                token = tokens.IssueToken(
                    token_pb2.IssueTokenRequest(
                        grant_type="client_credentials", client_id="loader", client_secret=world.secret
                    ),
                    timeout=5,
                ).access_token
                kid = jwt.get_unverified_header(token)["kid"]
                with seen.lock:
                    seen.first_signed.setdefault(kid, time.monotonic())
                for name, echo in zip(("pushed", "polled"), echoes, strict=True):
                    try:
                        echo.Echo(
                            pb2.EchoRequest(text="x"),
                            metadata=(("authorization", f"Bearer {token}"),),
                            timeout=5,
                        )
                    except grpc.RpcError as err:
                        with seen.lock:
                            seen.failures.append(f"{name} {kid}: {err.code()}: {err.details()}")
                with seen.lock:
                    seen.calls += 1
            except grpc.RpcError as err:
                with seen.lock:
                    seen.failures.append(f"{err.code()}: {err.details()}")
            # paced: four threads still keep calls in flight through each rotation, without
            # the whole test burning a core on the GIL for its six seconds
            stop.wait(LOAD_PAUSE)


def wait_until_active(world: World, kid: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(k.kid == kid and k.state == KeyState.ACTIVE for k in world.running.authority.keys.list_keys()):
            return
        time.sleep(0.05)
    pytest.fail(f"key {kid} never became active")


def test_two_rotations_under_load_fail_no_call(world: World) -> None:
    seen, stop = Observations(), threading.Event()
    threads = [threading.Thread(target=observe_jwks, args=(world.target, seen, stop))]
    threads += [threading.Thread(target=load, args=(world, seen, stop)) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        time.sleep(0.5)
        rotated = []
        for _ in range(2):
            kid = world.running.authority.keys.rotate().kid
            rotated.append(kid)
            wait_until_active(world, kid)
            time.sleep(0.7)  # let the load run on the new key
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=20)
    assert seen.failures == []
    assert seen.calls > 50, seen.calls
    assert set(rotated) <= set(seen.first_signed), "the rotated keys never signed a token under load"
    for kid in rotated:
        published_for = seen.first_signed[kid] - seen.first_published[kid]
        # the observer polls every 20 ms, so it sees a key slightly after it is published
        assert published_for >= PUBLISH_DELAY - 0.1, f"{kid} signed {published_for:.2f}s after publication"
    states = {k.kid: k.state for k in world.running.authority.keys.list_keys()}
    assert list(states.values()).count(KeyState.ACTIVE) == 1
    assert states[rotated[-1]] == KeyState.ACTIVE
    assert sorted(states.values()) == sorted([KeyState.ACTIVE, KeyState.RETIRING, KeyState.RETIRING])


def test_watching_verifier_learns_a_key_before_it_signs(world: World) -> None:
    before = world.pushed.cache.fetches
    kid = world.running.authority.keys.rotate().kid
    deadline = time.monotonic() + PUBLISH_DELAY / 2
    while kid not in world.pushed.cache.kids:
        assert time.monotonic() < deadline, "WatchJwks did not deliver the new key in time"
        time.sleep(0.02)
    assert world.pushed.cache.fetches == before, "the key came by push, not by a fetch"
    assert all(k.state != KeyState.ACTIVE for k in world.running.authority.keys.list_keys() if k.kid == kid)


def test_polling_verifier_learns_a_key_before_it_signs(world: World) -> None:
    world.polled.cache.get("warm-up")  # the first fetch happens before the rotation
    kid = world.running.authority.keys.rotate().kid
    assert kid not in world.polled.cache.kids
    deadline = time.monotonic() + PUBLISH_DELAY
    while True:
        # the polled cache refreshes when it is used: keep using it, as live traffic would
        world.polled.cache.get("no-such-kid-but-a-lookup")
        if kid in world.polled.cache.kids:
            break
        assert time.monotonic() < deadline, "polling did not deliver the new key within the delay"
        time.sleep(0.05)
    assert all(k.state != KeyState.ACTIVE for k in world.running.authority.keys.list_keys() if k.kid == kid)


def test_revoked_key_stops_verifying_at_once_where_keys_are_pushed(world: World) -> None:
    with (
        grpc.insecure_channel(world.target) as auth,
        grpc.insecure_channel(f"127.0.0.1:{world.pushed.port}") as channel,
    ):
        token = (
            token_pb2_grpc.TokenServiceStub(auth)
            .IssueToken(
                token_pb2.IssueTokenRequest(
                    grant_type="client_credentials", client_id="loader", client_secret=world.secret
                ),
                timeout=5,
            )
            .access_token
        )
        echo = pb2_grpc.EchoServiceStub(channel)
        md = (("authorization", f"Bearer {token}"),)
        assert echo.Echo(pb2.EchoRequest(text="ok"), metadata=md, timeout=5).caller == "loader"
        kid = jwt.get_unverified_header(token)["kid"]
        world.running.authority.keys.revoke(kid)
        deadline = time.monotonic() + 3
        while True:
            try:
                echo.Echo(pb2.EchoRequest(text="x"), metadata=md, timeout=5)
            except grpc.RpcError as err:
                assert err.code() == grpc.StatusCode.UNAUTHENTICATED
                break
            assert time.monotonic() < deadline, "a revoked key's token still verifies 3 s later"
            time.sleep(0.05)
        # signing goes on with a new key, which verifiers are told about
        fresh = (
            token_pb2_grpc.TokenServiceStub(auth)
            .IssueToken(
                token_pb2.IssueTokenRequest(
                    grant_type="client_credentials", client_id="loader", client_secret=world.secret
                ),
                timeout=5,
            )
            .access_token
        )
        assert jwt.get_unverified_header(fresh)["kid"] != kid
        deadline = time.monotonic() + 3
        while True:
            try:
                echo.Echo(
                    pb2.EchoRequest(text="y"), metadata=(("authorization", f"Bearer {fresh}"),), timeout=5
                )
                break
            except grpc.RpcError:
                assert time.monotonic() < deadline, "the replacement key never verified"
                time.sleep(0.05)
