"""What an unauthenticated caller can make the servers hold, one named case per attack (issue 9,
"Resource exhaustion", and item 6 on logged client ids).

Every case runs against real servers on free ports over real connections (gRPC channels, or raw
TCP sockets where the attack is below gRPC). A refusal with a status is checked by its code and
its ``google.rpc.ErrorInfo`` reason, never by its message; each case also shows that callers
within the limits keep being served.
"""

from __future__ import annotations

import base64
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from authsvc import listen
from authsvc.server.app import RunningServer, open_authority, start_server
from authsvc.v1 import token_pb2, token_pb2_grpc
from payments_svc.app import PaymentsConfig, RunningPayments
from payments_svc.app import start_server as start_payments
from tests.conftest import ISSUER, TokenServer, serve_config
from tests.helpers import ServerThread

RESOURCE_EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED
RATE_LIMITED = "RATE_LIMITED"
LONG = 60.0  # a deadline no case should ever reach; it only keeps a broken case from hanging


# -- machinery ---------------------------------------------------------------------------------


@contextmanager
def token_service(
    tmp_path: Path, *, start: dict[str, Any] | None = None, **config: Any
) -> Iterator[TokenServer]:
    """A TokenService with ``config`` overrides on ServeConfig, ``start`` keywords for start_server."""
    cfg = serve_config(tmp_path / "data", **config)
    thread: ServerThread[RunningServer] = ServerThread(
        lambda: start_server(cfg, authority=open_authority(cfg), **(start or {}))
    )
    running = thread.start()
    try:
        yield TokenServer(running, cfg, thread)
    finally:
        thread.stop(grace=0)


def reason_of(err: grpc.RpcError) -> tuple[grpc.StatusCode, str | None]:
    status = rpc_status.from_call(err)
    if status is None:
        return err.code(), None
    info = error_details_pb2.ErrorInfo()
    assert status.details and status.details[0].Unpack(info)
    assert info.domain == "authsvc"
    return err.code(), info.reason


def eventually(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    """Wait for something the server does asynchronously (no clock of ours to advance)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(0.02)


class Watch:
    """An open WatchJwks stream whose first message has arrived."""

    def __init__(self, channel: grpc.Channel) -> None:
        self.call = token_pb2_grpc.TokenServiceStub(channel).WatchJwks(
            token_pb2.WatchJwksRequest(), timeout=LONG
        )
        first = next(self.call)
        assert '"keys"' in first.jwks_json

    def cancel(self) -> None:
        self.call.cancel()


def refused_watch(channel: grpc.Channel) -> tuple[grpc.StatusCode, str | None]:
    call = token_pb2_grpc.TokenServiceStub(channel).WatchJwks(token_pb2.WatchJwksRequest(), timeout=LONG)
    with pytest.raises(grpc.RpcError) as caught:
        next(call)
    return reason_of(caught.value)


def still_serves(target: str, client_id: str, secret: str) -> None:
    """A legitimate caller gets a token and the keys, on a fresh connection."""
    with grpc.insecure_channel(target) as ch:
        stub = token_pb2_grpc.TokenServiceStub(ch)
        issued = stub.IssueToken(
            token_pb2.IssueTokenRequest(
                grant_type="client_credentials", client_id=client_id, client_secret=secret
            ),
            timeout=LONG,
        )
        assert issued.access_token.count(".") == 2
        assert '"keys"' in stub.GetJwks(token_pb2.GetJwksRequest(), timeout=LONG).jwks_json


def wait_closed(sock: socket.socket, limit: float = 30.0) -> bytes:
    """Read until the server closes ``sock``; what it sent before. Fails if it stays open."""
    sock.settimeout(limit)
    received = b""
    try:
        while chunk := sock.recv(4096):
            received += chunk
    except ConnectionResetError:
        pass
    except TimeoutError:
        pytest.fail(f"the server kept an idle connection open for {limit} s")
    return received


@pytest.fixture(params=["token-service", "payment-service"])
def limited_server(
    request: pytest.FixtureRequest, token_server: TokenServer, tmp_path: Path
) -> Iterator[Callable[..., str]]:
    """Starts, on demand, the TokenService or the PaymentService with the given connection limits;
    returns its target. Both are grpc.aio servers; the limits are the same flags on both."""
    threads: list[ServerThread[Any]] = []

    def start(**limits: Any) -> str:
        # no overrides: the defaults, exactly as `serve` runs without flags
        overrides: dict[str, Any] = {"limits": listen.ConnectionLimits(**limits)} if limits else {}
        if request.param == "token-service":
            cfg = serve_config(tmp_path / "limited", **overrides)
            t: ServerThread[Any] = ServerThread(lambda: start_server(cfg, authority=open_authority(cfg)))
        else:
            pcfg = PaymentsConfig(
                data_dir=tmp_path / "payments",
                listen="127.0.0.1:0",
                token_service=token_server.target,
                issuer=ISSUER,
                **overrides,
            )
            t = ServerThread(lambda: start_payments(pcfg))
        threads.append(t)
        running: RunningServer | RunningPayments = t.start()
        return f"127.0.0.1:{running.port}"

    yield start
    for t in threads:
        t.stop(0)


def healthy(target: str) -> bool:
    try:
        with grpc.insecure_channel(target) as ch:
            answer = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5)
    except grpc.RpcError:
        return False
    return bool(answer.status == health_pb2.HealthCheckResponse.SERVING)


# -- WatchJwks streams -------------------------------------------------------------------------


def test_watch_jwks_streams_capped_per_peer(tmp_path: Path) -> None:
    """One address opens WatchJwks streams (no credentials needed, each held forever): past the
    default cap of 8 per address it gets RESOURCE_EXHAUSTED / RATE_LIMITED, while another
    address (::1 beside 127.0.0.1), token requests and the open streams keep working."""
    with token_service(tmp_path, listen="localhost:0") as server:
        port = server.running.port
        shop = server.register()
        with grpc.insecure_channel(f"127.0.0.1:{port}") as v4, grpc.insecure_channel(f"[::1]:{port}") as v6:
            held = [Watch(v4) for _ in range(8)]
            assert refused_watch(v4) == (RESOURCE_EXHAUSTED, RATE_LIMITED)
            with grpc.insecure_channel(f"127.0.0.1:{port}") as another_connection:
                assert refused_watch(another_connection) == (RESOURCE_EXHAUSTED, RATE_LIMITED)
            other_caller = Watch(v6)
            still_serves(f"127.0.0.1:{port}", shop.client_id, shop.secret)
            # the open streams are still live: a rotation reaches each of them
            kid = server.authority.keys.rotate().kid
            for w in [*held, other_caller]:
                assert kid in next(w.call).jwks_json
            # a slot given back is usable again
            held.pop().cancel()
            eventually(
                lambda: server.running.watch_slots is not None and server.running.watch_slots.in_use == 8,
                "release",
            )
            held.append(Watch(v4))
            for w in [*held, other_caller]:
                w.cancel()


def test_watch_jwks_streams_capped_in_all(tmp_path: Path) -> None:
    """Many addresses together cannot hold more than the total cap of WatchJwks streams."""
    with token_service(
        tmp_path, listen="localhost:0", watch_streams_per_peer=2, watch_streams_total=3
    ) as server:
        port = server.running.port
        shop = server.register()
        with grpc.insecure_channel(f"127.0.0.1:{port}") as v4, grpc.insecure_channel(f"[::1]:{port}") as v6:
            held = [Watch(v4), Watch(v4), Watch(v6)]
            assert refused_watch(v6) == (RESOURCE_EXHAUSTED, RATE_LIMITED)  # its own count is 1 of 2
            still_serves(f"127.0.0.1:{port}", shop.client_id, shop.secret)
            for w in held:
                w.cancel()


def test_watch_jwks_slots_released_on_cancel_disconnect_and_shutdown(tmp_path: Path) -> None:
    """A stream's slot comes back however the stream ends: cancelled by the caller, the caller's
    connection dropped, or the server shut down."""
    with token_service(tmp_path, watch_streams_per_peer=2, watch_streams_total=2) as server:
        slots = server.running.watch_slots
        assert slots is not None
        with grpc.insecure_channel(server.target) as ch:
            cancelled, kept = Watch(ch), Watch(ch)
            assert slots.in_use == 2
            cancelled.cancel()
            eventually(lambda: slots.in_use == 1, "release on cancel")
        # leaving the `with` closed the channel with `kept` still open: a disconnect
        eventually(lambda: slots.in_use == 0, "release on disconnect")
        del kept
        with grpc.insecure_channel(server.target) as ch:
            Watch(ch), Watch(ch)
            assert slots.in_use == 2
            server.stop()
        assert slots.in_use == 0


# -- connections and streams -------------------------------------------------------------------


def test_idle_connection_closed_after_handshake_timeout(limited_server: Callable[..., str]) -> None:
    """A TCP connection that never starts HTTP/2 (sends nothing) is closed after the handshake
    timeout instead of being held for grpc's default 120 s; the server keeps serving."""
    target = limited_server(handshake_timeout=0.5)
    host, port = listen.split_host_port(target)
    with socket.create_connection((host, port)) as idle:
        wait_closed(idle)
    assert healthy(target)


def test_connections_over_cap_are_closed(limited_server: Callable[..., str]) -> None:
    """Past the connection cap, a new connection is closed at once; when connections leave, new
    callers are served again."""
    target = limited_server(max_connections=2)
    host, port = listen.split_host_port(target)
    held = [socket.create_connection((host, port)) for _ in range(2)]
    try:
        with socket.create_connection((host, port)) as third:
            wait_closed(third)
    finally:
        for s in held:
            s.close()
    eventually(lambda: healthy(target), "served again once connections left")


def test_concurrent_streams_per_connection_capped(limited_server: Callable[..., str]) -> None:
    """One connection may not open more than its cap of concurrent streams (HTTP/2
    SETTINGS_MAX_CONCURRENT_STREAMS; grpc's default is unlimited, ours 1000, here 100): the 101st
    waits for a free stream, here until its deadline, and runs as soon as one ends."""
    target = limited_server(max_streams_per_connection=100)
    with grpc.insecure_channel(target) as ch:
        health = health_pb2_grpc.HealthStub(ch)
        held = [health.Watch(health_pb2.HealthCheckRequest(), timeout=LONG) for _ in range(100)]
        for call in held:
            assert next(call).status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as caught:
            health.Check(health_pb2.HealthCheckRequest(), timeout=2)
        assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        held.pop().cancel()
        assert health.Check(health_pb2.HealthCheckRequest(), timeout=LONG).status == (
            health_pb2.HealthCheckResponse.SERVING
        )
        for call in held:
            call.cancel()


def test_concurrent_rpcs_over_cap_get_resource_exhausted(tmp_path: Path) -> None:
    """RPCs held open (WatchJwks, and the public Health.Watch) count against the process's
    concurrent-RPC cap: one more RPC gets RESOURCE_EXHAUSTED from grpc itself (no ErrorInfo:
    grpc answers before any handler), and calls are served again once the streams end."""
    limits = listen.ConnectionLimits(max_concurrent_rpcs=3)
    with token_service(tmp_path, limits=limits, watch_streams_per_peer=2, watch_streams_total=2) as server:
        shop = server.register()
        with grpc.insecure_channel(server.target) as ch:
            watches = [Watch(ch), Watch(ch)]
            health_watch = health_pb2_grpc.HealthStub(ch).Watch(health_pb2.HealthCheckRequest(), timeout=LONG)
            assert next(health_watch).status == health_pb2.HealthCheckResponse.SERVING
            with pytest.raises(grpc.RpcError) as caught:
                token_pb2_grpc.TokenServiceStub(ch).GetJwks(token_pb2.GetJwksRequest(), timeout=LONG)
            assert caught.value.code() == RESOURCE_EXHAUSTED
            health_watch.cancel()
            for w in watches:
                w.cancel()

        def served() -> bool:
            try:
                still_serves(server.target, shop.client_id, shop.secret)
            except grpc.RpcError as err:
                assert err.code() == RESOURCE_EXHAUSTED
                return False
            return True

        eventually(served, "served again once the streams ended")


# -- logs --------------------------------------------------------------------------------------


class FakeMonotonic:
    def __init__(self) -> None:
        self.now = 1000.0
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self.now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self.now += seconds


def refusal_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "authsvc.token"]


def test_refusal_flood_log_is_bounded(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A flood of refused token requests writes a burst of lines, then nothing, then one
    "suppressed K similar lines" summary when the rate allows a line again: the log grows with
    time, not with the attacker's request rate."""
    clock = FakeMonotonic()
    caplog.set_level(logging.INFO, logger="authsvc.token")
    # the failed-authentication throttle off: after 10 wrong secrets it would answer RATE_LIMITED
    with token_service(
        tmp_path, refusal_log_rate=5, failed_auth_limit=None, start={"monotonic": clock}
    ) as server:
        shop = server.register()
        with grpc.insecure_channel(server.target) as ch:
            stub = token_pb2_grpc.TokenServiceStub(ch)

            def refused() -> None:
                with pytest.raises(grpc.RpcError) as caught:
                    stub.IssueToken(
                        token_pb2.IssueTokenRequest(
                            grant_type="client_credentials",
                            client_id=shop.client_id,
                            client_secret="wrong" * 9,
                        ),
                        timeout=LONG,
                    )
                assert reason_of(caught.value) == (grpc.StatusCode.UNAUTHENTICATED, "INVALID_CLIENT")

            for _ in range(300):
                refused()
            lines = refusal_lines(caplog)
            assert len(lines) == 10  # the burst: twice the rate
            assert all(line.startswith("token refused:") for line in lines)
            clock.advance(1.0)  # room for 5 more lines
            refused()
            lines = refusal_lines(caplog)
            assert lines[10:] == ["suppressed 290 similar lines (token refused)", lines[11]]
            assert lines[11].startswith("token refused:")
            still_serves(server.target, shop.client_id, shop.secret)


def test_secret_as_client_id_never_logged(
    token_server: TokenServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A caller that pastes a client secret (54 characters) into client_id, in the request or in
    Basic credentials, is refused as an unknown client, and no log line holds the secret, nor
    any long piece of it: an unknown id is logged as a short prefix and a hash only."""
    caplog.set_level(logging.DEBUG)
    shop = token_server.register()
    secret = shop.secret
    assert len(secret) == 54 and secret.startswith("authsvc_cs_")
    basic = base64.b64encode(f"{secret}:{secret}".encode()).decode()
    with grpc.insecure_channel(token_server.target) as ch:
        stub = token_pb2_grpc.TokenServiceStub(ch)
        for request, metadata in [
            (
                token_pb2.IssueTokenRequest(
                    grant_type="client_credentials", client_id=secret, client_secret=secret
                ),
                (),
            ),
            (
                token_pb2.IssueTokenRequest(grant_type="client_credentials"),
                (("authorization", f"Basic {basic}"),),
            ),
            (token_pb2.IssueTokenRequest(grant_type="nonsense", client_id=secret, client_secret=secret), ()),
        ]:
            with pytest.raises(grpc.RpcError) as caught:
                stub.IssueToken(request, metadata=metadata, timeout=LONG)
            code, reason = reason_of(caught.value)
            assert (code, reason) in {
                (grpc.StatusCode.UNAUTHENTICATED, "INVALID_CLIENT"),
                (grpc.StatusCode.INVALID_ARGUMENT, "UNSUPPORTED_GRANT_TYPE"),
            }
    refusals = [line for line in refusal_lines(caplog) if line.startswith("token refused")]
    assert len(refusals) == 3
    random_part = secret.removeprefix("authsvc_cs_")
    pieces = {random_part[i : i + 8] for i in range(len(random_part) - 7)}
    for record in caplog.records:
        text = record.getMessage()
        assert not any(piece in text for piece in pieces), (
            f"a piece of the secret reached the log: {record.name}"
        )
    still_serves(token_server.target, shop.client_id, shop.secret)


def test_registered_client_id_is_logged_in_full_on_a_refusal(
    token_server: TokenServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Redaction is for ids that name no client: an operator still sees which registered client
    sent a wrong secret or asked for a scope it may not have."""
    caplog.set_level(logging.INFO)
    shop = token_server.register()
    with grpc.insecure_channel(token_server.target) as ch:
        stub = token_pb2_grpc.TokenServiceStub(ch)
        for request in (
            token_pb2.IssueTokenRequest(
                grant_type="client_credentials", client_id=shop.client_id, client_secret="wrong"
            ),
            token_pb2.IssueTokenRequest(
                grant_type="client_credentials",
                client_id=shop.client_id,
                client_secret=shop.secret,
                scope="not:allowed",
            ),
        ):
            with pytest.raises(grpc.RpcError):
                stub.IssueToken(request, timeout=LONG)
    refusals = [line for line in refusal_lines(caplog) if line.startswith("token refused")]
    assert len(refusals) == 2
    assert all(repr(shop.client_id) in line for line in refusals)
