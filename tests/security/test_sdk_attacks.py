"""Attacks through the Python SDK (authsvc.client), one named test each.

- A client secret must never go in plaintext to another host: the SDK refuses such a channel
  before it sends anything (a recording listener on the port named by the target receives
  nothing, and no name is ever resolved: channels are only built and closed).
- A token the resource server refuses with INVALID_TOKEN must not be kept forever, and its
  refusal must not make the SDK hammer the TokenService: the token is dropped, exactly one new
  IssueToken follows, and repeated refusals never loop.

The refused-token tests run against a real TokenService and a real resource server (the test
EchoService behind the real interceptor, on sync and asyncio servers). The refused token is a
real token issued for another audience, which the verifier refuses as INVALID_TOKEN.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from authsvc.client import (
    AioBearerInterceptor,
    AsyncClientCredentials,
    AsyncGrpcTokenFetcher,
    ClientCredentials,
    GrpcTokenFetcher,
    insecure_loopback_channel,
    local_channel,
)
from authsvc.verify import GrpcJwksSource, TokenVerifier
from tests.client.fakes import FakeClock
from tests.conftest import ISSUER, RegisteredClient, TokenServer
from tests.helpers import run_at_once
from tests.verify.echo import pb2, pb2_grpc
from tests.verify.test_interceptor import start_echo

SECRET = "authsvc_cs_never-on-the-wire-0123456789abcdefghijklmnopqrstuv"
AUDIENCE = "echo"
ELSEWHERE = "elsewhere"  # a real audience of the client, but not the resource server's
COOLDOWN = 30.0  # the SDK's default refusal_cooldown
TIMEOUT = 10.0

UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED


# -- a client secret in plaintext to another host ---------------------------------------------


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A TCP listener on loopback whose port the remote-looking targets name; it must never see a
    connection."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    sock.setblocking(False)
    yield sock
    try:
        conn, _ = sock.accept()
    except BlockingIOError:
        pass
    else:
        received = conn.recv(65536)
        conn.close()
        raise AssertionError(f"the SDK connected and sent {len(received)} bytes")
    finally:
        sock.close()


# Each names a host that is not loopback; {port} is the listener's. None of them is resolved.
REMOTE = {
    "dns-name": "dns:///authsvc-test.invalid:{port}",
    "bare-name": "authsvc-test.invalid:{port}",
    "private-ipv4": "10.0.0.1:{port}",
    "ipv6-documentation": "[2001:db8::1]:{port}",
    "ipv4-list-with-one-remote": "ipv4:127.0.0.1:{port},10.0.0.1:{port}",
    "localhost-via-a-dns-authority": "dns://10.0.0.53/localhost:{port}",
}


def _remote(name: str, listener: socket.socket) -> str:
    return REMOTE[name].format(port=listener.getsockname()[1])


@pytest.mark.parametrize("name", REMOTE, ids=REMOTE)
def test_secret_never_sent_in_plaintext_to_remote_host(name: str, listener: socket.socket) -> None:
    channel = grpc.insecure_channel(_remote(name, listener))
    try:
        with pytest.raises(ValueError, match="refusing to send the client secret"):
            ClientCredentials.for_channel(channel, client_id="shop", client_secret=SECRET)
    finally:
        channel.close()


@pytest.mark.parametrize("name", REMOTE, ids=REMOTE)
def test_secret_never_sent_in_plaintext_to_remote_host_asyncio(name: str, listener: socket.socket) -> None:
    async def attempt() -> None:
        channel = grpc.aio.insecure_channel(_remote(name, listener))
        try:
            with pytest.raises(ValueError, match="refusing to send the client secret"):
                AsyncClientCredentials.for_channel(channel, client_id="shop", client_secret=SECRET)
        finally:
            await channel.close()

    asyncio.run(attempt())


def test_token_fetcher_refuses_a_plaintext_remote_channel(listener: socket.socket) -> None:
    """The fetchers themselves send the secret: building one directly is no way around the rule."""
    target = _remote("dns-name", listener)
    channel = grpc.insecure_channel(target)
    try:
        with pytest.raises(ValueError, match="refusing to send the client secret"):
            GrpcTokenFetcher(channel, client_id="shop", client_secret=SECRET)
    finally:
        channel.close()

    async def attempt() -> None:
        aio_channel = grpc.aio.insecure_channel(target)
        try:
            with pytest.raises(ValueError, match="refusing to send the client secret"):
                AsyncGrpcTokenFetcher(aio_channel, client_id="shop", client_secret=SECRET)
        finally:
            await aio_channel.close()

    asyncio.run(attempt())


def test_plaintext_remote_channel_behind_an_interceptor_is_refused(listener: socket.socket) -> None:
    class Passthrough(grpc.UnaryUnaryClientInterceptor):
        def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
            return continuation(details, request)

    inner = grpc.insecure_channel(_remote("dns-name", listener))
    channel = grpc.intercept_channel(inner, Passthrough())
    try:
        with pytest.raises(ValueError, match="refusing to send the client secret"):
            ClientCredentials.for_channel(channel, client_id="shop", client_secret=SECRET)
    finally:
        inner.close()


# -- a refused token is dropped once, and never loops --------------------------------------------


class Fetches:
    """Real IssueToken calls: the first for the wrong audience (so the resource server refuses
    it), the rest for the right one; with ``always_refused`` every one for the wrong audience."""

    def __init__(
        self, channel: grpc.Channel, client: RegisteredClient, *, always_refused: bool = False
    ) -> None:
        def fetcher(audience: str) -> GrpcTokenFetcher:
            return GrpcTokenFetcher(
                channel,
                client_id=client.client_id,
                client_secret=client.secret,
                scopes=["echo:read"],
                audience=[audience],
            )

        self._refused = fetcher(ELSEWHERE)
        self._accepted = self._refused if always_refused else fetcher(AUDIENCE)
        self.calls = 0

    def __call__(self) -> tuple[str, float, str]:
        self.calls += 1
        return (self._refused if self.calls == 1 else self._accepted)()


def answer_of(err: grpc.RpcError) -> tuple[grpc.StatusCode, str]:
    status = rpc_status.from_call(err)
    assert status is not None, "the refusal carries no google.rpc.Status"
    info = error_details_pb2.ErrorInfo()
    assert status.details and status.details[0].Unpack(info)
    return err.code(), info.reason


@dataclass
class Resource:
    port: int
    token_server: TokenServer
    client: RegisteredClient
    auth_channel: grpc.Channel

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def credentials(self, clock: FakeClock, *, always_refused: bool = False) -> ClientCredentials:
        return ClientCredentials(
            Fetches(self.auth_channel, self.client, always_refused=always_refused),
            clock=clock,
            sleep=lambda _: None,
            jitter=lambda: 1.0,
        )


@pytest.fixture(params=["sync", "aio"])
def resource(request: pytest.FixtureRequest, token_server: TokenServer) -> Iterator[Resource]:
    """A resource server (audience ``echo``) of the given kind, and a client of the TokenService
    that may ask for tokens for ``echo`` and for ``elsewhere``."""
    client = token_server.register("sdk-refused", scopes=("echo:read",), audiences=(ELSEWHERE, AUDIENCE))
    verifier = TokenVerifier(issuer=ISSUER, audience=AUDIENCE, jwks=GrpcJwksSource(token_server.target))
    port, stop = start_echo(request.param, verifier)
    try:
        with grpc.insecure_channel(token_server.target) as auth_channel:
            yield Resource(port, token_server, client, auth_channel)
    finally:
        stop()
        verifier.close()


def issued(caplog: pytest.LogCaptureFixture) -> int:
    return sum(
        1 for r in caplog.records if r.name == "authsvc.token" and r.getMessage().startswith("token issued")
    )


def _echo(channel: grpc.Channel) -> str:
    return str(pb2_grpc.EchoServiceStub(channel).Echo(pb2.EchoRequest(text="hi"), timeout=TIMEOUT).caller)


CHANNELS = {
    "interceptor": insecure_loopback_channel,  # the token added by BearerInterceptor
    "call-credentials": local_channel,  # the token added by BearerAuthPlugin
}


@pytest.mark.parametrize("make_channel", CHANNELS.values(), ids=CHANNELS)
def test_refused_token_is_dropped_and_exactly_one_new_token_is_fetched(
    resource: Resource, make_channel: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="authsvc.token")
    creds = resource.credentials(FakeClock())
    with make_channel(resource.target, creds) as channel:
        # refused, dropped, and sent once more with a fresh token: the caller sees no failure
        assert _echo(channel) == resource.client.client_id
        for _ in range(5):
            assert _echo(channel) == resource.client.client_id
    assert (creds.fetches, issued(caplog)) == (2, 2)
    assert creds.refusals_dropped == 1


@pytest.mark.parametrize("make_channel", CHANNELS.values(), ids=CHANNELS)
def test_refused_token_on_a_stream_is_dropped_without_retrying_the_stream(
    resource: Resource, make_channel: Any
) -> None:
    creds = resource.credentials(FakeClock())
    with make_channel(resource.target, creds) as channel:
        stub = pb2_grpc.EchoServiceStub(channel)
        with pytest.raises(grpc.RpcError) as refused:
            list(stub.ServerStream(pb2.EchoRequest(text="x"), timeout=TIMEOUT))
        assert answer_of(refused.value) == (UNAUTHENTICATED, "INVALID_TOKEN")
        # the refused token is gone: the next stream carries a fresh one
        texts = [r.text for r in stub.ServerStream(pb2.EchoRequest(text="x"), timeout=TIMEOUT)]
    assert texts == ["x0", "x1", "x2"]
    assert creds.fetches == 2
    assert creds.refusals_dropped == 1


@pytest.mark.parametrize("make_channel", CHANNELS.values(), ids=CHANNELS)
def test_repeated_refusals_never_loop(resource: Resource, make_channel: Any) -> None:
    clock = FakeClock()
    creds = resource.credentials(clock, always_refused=True)
    with make_channel(resource.target, creds) as channel:
        stub = pb2_grpc.EchoServiceStub(channel)
        for _ in range(10):
            with pytest.raises(grpc.RpcError) as refused:
                stub.Echo(pb2.EchoRequest(text="hi"), timeout=TIMEOUT)
            assert answer_of(refused.value) == (UNAUTHENTICATED, "INVALID_TOKEN")
        # the first call: one drop, one new token, one retry; then nothing more within the cooldown
        assert creds.fetches == 2
        assert creds.refusals_dropped == 1
        clock.advance(COOLDOWN + 1)
        with pytest.raises(grpc.RpcError) as refused:
            stub.Echo(pb2.EchoRequest(text="hi"), timeout=TIMEOUT)
        assert answer_of(refused.value) == (UNAUTHENTICATED, "INVALID_TOKEN")
    assert creds.fetches == 3
    assert creds.refusals_dropped == 2


@pytest.mark.parametrize("make_channel", CHANNELS.values(), ids=CHANNELS)
def test_a_stampede_of_refusals_drops_the_token_once(resource: Resource, make_channel: Any) -> None:
    creds = resource.credentials(FakeClock())
    creds.token()  # the token every thread starts with, which the resource server refuses
    with make_channel(resource.target, creds) as channel:
        callers, errors = run_at_once(16, lambda _: _echo(channel))
    assert errors == []
    assert callers == [resource.client.client_id] * 16
    assert creds.fetches == 2
    assert creds.refusals_dropped == 1


def _aio_credentials(resource: Resource, clock: FakeClock, *, always_refused: bool) -> AsyncClientCredentials:
    sync = Fetches(resource.auth_channel, resource.client, always_refused=always_refused)

    async def fetch() -> tuple[str, float, str]:
        return await asyncio.to_thread(sync)

    return AsyncClientCredentials(fetch, clock=clock, jitter=lambda: 1.0)


def test_refused_token_is_dropped_and_exactly_one_new_token_is_fetched_asyncio(resource: Resource) -> None:
    creds = _aio_credentials(resource, FakeClock(), always_refused=False)

    async def run() -> list[str]:
        async with grpc.aio.insecure_channel(
            resource.target, interceptors=[AioBearerInterceptor(creds)]
        ) as channel:
            stub = pb2_grpc.EchoServiceStub(channel)
            await creds.token()  # the refused one
            answers = await asyncio.gather(
                *(stub.Echo(pb2.EchoRequest(text="hi"), timeout=TIMEOUT) for _ in range(16))
            )
            return [a.caller for a in answers]

    assert asyncio.run(run()) == [resource.client.client_id] * 16
    assert creds.fetches == 2
    assert creds.refusals_dropped == 1


def test_refused_token_on_a_stream_is_dropped_asyncio(resource: Resource) -> None:
    from authsvc.client import aio_insecure_loopback_channel

    creds = _aio_credentials(resource, FakeClock(), always_refused=False)

    async def run() -> tuple[tuple[grpc.StatusCode, str], list[str]]:
        async with aio_insecure_loopback_channel(resource.target, creds) as channel:
            stub = pb2_grpc.EchoServiceStub(channel)
            call = stub.ServerStream(pb2.EchoRequest(text="x"), timeout=TIMEOUT)
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                _ = [r async for r in call]
            # the drop runs in a done callback of the call: let it run before the next stream
            for _ in range(100):
                if creds.refusals_dropped:
                    break
                await asyncio.sleep(0)
            texts = [r.text async for r in stub.ServerStream(pb2.EchoRequest(text="x"), timeout=TIMEOUT)]
            return answer_of(refused.value), texts

    answer, texts = asyncio.run(run())
    assert answer == (UNAUTHENTICATED, "INVALID_TOKEN")
    assert texts == ["x0", "x1", "x2"]
    assert creds.fetches == 2
    assert creds.refusals_dropped == 1


def test_repeated_refusals_never_loop_asyncio(resource: Resource) -> None:
    from authsvc.client import aio_insecure_loopback_channel

    clock = FakeClock()
    creds = _aio_credentials(resource, clock, always_refused=True)

    async def refused(stub: Any) -> tuple[grpc.StatusCode, str]:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Echo(pb2.EchoRequest(text="hi"), timeout=TIMEOUT)
        return answer_of(info.value)

    async def run() -> list[tuple[int, int]]:
        seen = []
        async with aio_insecure_loopback_channel(resource.target, creds) as channel:
            stub = pb2_grpc.EchoServiceStub(channel)
            for _ in range(10):
                assert await refused(stub) == (UNAUTHENTICATED, "INVALID_TOKEN")
            seen.append((creds.fetches, creds.refusals_dropped))
            clock.advance(COOLDOWN + 1)
            assert await refused(stub) == (UNAUTHENTICATED, "INVALID_TOKEN")
            seen.append((creds.fetches, creds.refusals_dropped))
        return seen

    assert asyncio.run(run()) == [(2, 1), (3, 2)]
