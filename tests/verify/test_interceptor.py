"""The interceptor on a third service, defined only in the tests, on sync and asyncio servers."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from authsvc.v1 import token_pb2, token_pb2_grpc
from authsvc.verify import PUBLIC, AioAuthInterceptor, AuthInterceptor, GrpcJwksSource, TokenVerifier
from tests.conftest import ISSUER, TokenServer
from tests.helpers import ServerThread
from tests.verify.echo import AioEcho, SyncEcho, pb2, pb2_grpc


@dataclass
class AioServer:
    server: grpc.aio.Server
    port: int

    async def stop(self, grace: float | None) -> None:
        await self.server.stop(grace)


def start_echo(
    kind: str, verifier: TokenVerifier, policy: dict[str, Any] | None = None
) -> tuple[int, Callable[[], object]]:
    """Start an EchoService of the given kind; returns its port and a stop callable."""
    if kind == "sync":
        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=4), interceptors=[AuthInterceptor(verifier, policy)]
        )
        pb2_grpc.add_EchoServiceServicer_to_server(SyncEcho(), server)
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        return port, lambda: server.stop(0).wait()

    async def start() -> AioServer:
        server = grpc.aio.server(interceptors=[AioAuthInterceptor(verifier, policy)])
        pb2_grpc.add_EchoServiceServicer_to_server(AioEcho(), server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        return AioServer(server, port)

    thread: ServerThread[AioServer] = ServerThread(start)
    return thread.start().port, lambda: thread.stop(0)


@dataclass
class Echo:
    stub: Any
    token_server: TokenServer

    def token(self, scope: str) -> str:
        c = self.token_server.authority
        stub = token_pb2_grpc.TokenServiceStub(grpc.insecure_channel(self.token_server.target))
        client_id = "echo-" + scope.replace(":", "-").replace(" ", "_")
        if c.store.get_client(client_id) is None:
            _, secret = c.clients.create_client(client_id=client_id, scopes=scope.split(), audiences=["echo"])
            self.secrets[client_id] = secret
        return str(
            stub.IssueToken(
                token_pb2.IssueTokenRequest(
                    grant_type="client_credentials",
                    client_id=client_id,
                    client_secret=self.secrets[client_id],
                    scope=scope,
                ),
                timeout=10,
            ).access_token
        )

    secrets: dict[str, str]


def auth(token: str) -> tuple[tuple[str, str]]:
    return (("authorization", f"Bearer {token}"),)


def reason(err: grpc.RpcError) -> tuple[grpc.StatusCode, str]:
    status = rpc_status.from_call(err)
    assert status is not None
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    return err.code(), info.reason


@pytest.fixture(params=["sync", "aio"])
def echo(request: pytest.FixtureRequest, token_server: TokenServer) -> Iterator[Echo]:
    verifier = TokenVerifier(issuer=ISSUER, audience="echo", jwks=GrpcJwksSource(token_server.target))
    port, stop = start_echo(request.param, verifier)
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield Echo(pb2_grpc.EchoServiceStub(channel), token_server, {})
    stop()
    verifier.close()


def test_unary_hands_the_caller_to_the_handler(echo: Echo) -> None:
    response = echo.stub.Echo(pb2.EchoRequest(text="hi"), metadata=auth(echo.token("echo:read")), timeout=10)
    assert (response.text, response.caller) == ("hi", "echo-echo-read")


def test_server_streaming_keeps_its_kind(echo: Echo) -> None:
    responses = list(
        echo.stub.ServerStream(pb2.EchoRequest(text="x"), metadata=auth(echo.token("echo:read")), timeout=10)
    )
    assert [(r.text, r.caller) for r in responses] == [(f"x{i}", "echo-echo-read") for i in range(3)]


def test_client_streaming_keeps_its_kind(echo: Echo) -> None:
    requests = iter([pb2.EchoRequest(text=t) for t in "abc"])
    response = echo.stub.ClientStream(requests, metadata=auth(echo.token("echo:read")), timeout=10)
    assert (response.text, response.caller) == ("abc", "echo-echo-read")


def test_bidi_streaming_keeps_its_kind(echo: Echo) -> None:
    requests = iter([pb2.EchoRequest(text=t) for t in "abc"])
    responses = list(echo.stub.Chat(requests, metadata=auth(echo.token("echo:read")), timeout=10))
    assert [(r.text, r.caller) for r in responses] == [(t, "echo-echo-read") for t in "abc"]


@pytest.mark.parametrize("method", ["Echo", "ServerStream", "ClientStream", "Chat"])
def test_every_kind_refuses_a_missing_token(echo: Echo, method: str) -> None:
    call = getattr(echo.stub, method)
    request: Any = (
        pb2.EchoRequest(text="x") if method in ("Echo", "ServerStream") else iter([pb2.EchoRequest()])
    )
    with pytest.raises(grpc.RpcError) as info:
        result = call(request, timeout=10)
        if method in ("ServerStream", "Chat"):
            list(result)
    assert reason(info.value) == (grpc.StatusCode.UNAUTHENTICATED, "INVALID_TOKEN")


def test_insufficient_scope(echo: Echo) -> None:
    with pytest.raises(grpc.RpcError) as info:
        echo.stub.EchoTwice(pb2.EchoRequest(), metadata=auth(echo.token("echo:read")), timeout=10)
    assert reason(info.value) == (grpc.StatusCode.PERMISSION_DENIED, "INSUFFICIENT_SCOPE")
    ok = echo.stub.EchoTwice(
        pb2.EchoRequest(text="t"), metadata=auth(echo.token("echo:read echo:write")), timeout=10
    )
    assert ok.caller == "echo-echo-read_echo-write"


def test_public_method_needs_no_token_and_sees_no_caller(echo: Echo) -> None:
    assert echo.stub.Ping(pb2.EchoRequest(text="p"), timeout=10).caller == ""


def test_undeclared_method_is_denied_by_default(echo: Echo) -> None:
    with pytest.raises(grpc.RpcError) as info:
        echo.stub.Undeclared(pb2.EchoRequest(), metadata=auth(echo.token("echo:read")), timeout=10)
    assert reason(info.value) == (grpc.StatusCode.PERMISSION_DENIED, "ACCESS_DENIED")


@pytest.mark.parametrize("kind", ["sync", "aio"])
def test_explicit_policy_overrides_the_proto(kind: str, token_server: TokenServer) -> None:
    verifier = TokenVerifier(issuer=ISSUER, audience="echo", jwks=GrpcJwksSource(token_server.target))
    policy = {"/echo.v1.EchoService/Undeclared": PUBLIC, "/echo.v1.EchoService/Echo": ["echo:admin"]}
    port, stop = start_echo(kind, verifier, policy)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb2_grpc.EchoServiceStub(channel)
            assert stub.Undeclared(pb2.EchoRequest(text="u"), timeout=10).text == "u"
            e = Echo(stub, token_server, {})
            with pytest.raises(grpc.RpcError) as info:
                stub.Echo(pb2.EchoRequest(), metadata=auth(e.token("echo:read")), timeout=10)
            assert reason(info.value) == (
                grpc.StatusCode.PERMISSION_DENIED,
                "INSUFFICIENT_SCOPE",
            )
    finally:
        stop()
        verifier.close()


def test_health_is_public_on_a_protected_server(token_server: TokenServer) -> None:
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc

    verifier = TokenVerifier(issuer=ISSUER, audience="echo", jwks=GrpcJwksSource(token_server.target))
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2), interceptors=[AuthInterceptor(verifier)])
    health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            status = (
                health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10).status
            )
            assert status == health_pb2.HealthCheckResponse.SERVING
    finally:
        server.stop(0).wait()
        verifier.close()


def test_aio_callers_never_see_each_others_principal(token_server: TokenServer) -> None:
    """The asyncio interceptor sets the caller in the RPC's own task: concurrent calls with
    different tokens, and a public call among them, each see exactly their own caller."""
    import asyncio

    verifier = TokenVerifier(issuer=ISSUER, audience="echo", jwks=GrpcJwksSource(token_server.target))
    port, stop = start_echo("aio", verifier)
    try:
        e = Echo(None, token_server, {})
        tokens = {
            "echo-echo-read": e.token("echo:read"),
            "echo-echo-read_echo-write": e.token("echo:read echo:write"),
        }

        async def run() -> list[tuple[str, str]]:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = pb2_grpc.EchoServiceStub(channel)
                calls = []
                for i in range(60):
                    expected = list(tokens)[i % 2] if i % 3 else ""
                    if expected:
                        call = stub.Echo(
                            pb2.EchoRequest(text=expected), metadata=auth(tokens[expected]), timeout=10
                        )
                    else:
                        call = stub.Ping(pb2.EchoRequest(text=""), timeout=10)
                    calls.append(call)
                return [(r.text, r.caller) for r in await asyncio.gather(*calls)]

        for text, caller in asyncio.run(run()):
            assert caller == text
    finally:
        stop()
        verifier.close()
