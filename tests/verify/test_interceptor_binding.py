"""The interceptors enforce certificate-bound tokens (RFC 8705 §3) over real mutual TLS, on sync
and asyncio servers (asyncio with async handlers, async generators, the reader/writer style, and
plain functions in a thread pool), for every RPC kind.

Each EchoService listens twice: a port that requires a client certificate from the test CA, and a
plain TLS port that never asks for one. Tokens come from a real TokenService's mutual-TLS port.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass
from typing import Any

import grpc
import pytest

from authsvc.verify import AioAuthInterceptor, AuthInterceptor, GrpcJwksSource, TokenVerifier
from tests.conftest import ISSUER, RegisteredClient, TokenServer
from tests.helpers import ServerThread
from tests.mtls import channel_credentials, claims, issue
from tests.pki import Issued, Pki
from tests.verify.echo import AioEcho, SyncEcho, pb2, pb2_grpc
from tests.verify.test_interceptor import reason

KINDS = ["sync", "aio", "aio-plain-functions"]
METHODS = ["Echo", "ServerStream", "ClientStream", "Chat"]
# every kind with every RPC kind, except request streams into plain functions on grpc.aio: its
# (experimental) migration bridge can leave a pool thread waiting for a request message from a
# loop that the test has already closed, which hangs the interpreter at exit
PAIRS = [
    pytest.param(kind, method, id=f"{kind}-{method}")
    for kind in KINDS
    for method in METHODS
    if not (kind == "aio-plain-functions" and method in ("ClientStream", "Chat"))
]
REFUSED = (grpc.StatusCode.UNAUTHENTICATED, "INVALID_TOKEN")
TIMEOUT = 10.0


@dataclass
class _Aio:
    server: grpc.aio.Server
    ports: tuple[int, int]
    pool: futures.ThreadPoolExecutor | None

    async def stop(self, grace: float | None) -> None:
        await self.server.stop(grace)
        if self.pool is not None:
            self.pool.shutdown(wait=False, cancel_futures=True)


def _credentials(pki: Pki, *, mutual: bool) -> grpc.ServerCredentials:
    return grpc.ssl_server_credentials(
        [(pki.server.key_pem, pki.server.cert_pem)],
        root_certificates=pki.ca.cert_pem if mutual else None,
        require_client_auth=mutual,
    )


def start_echo(kind: str, verifier: TokenVerifier, pki: Pki) -> tuple[int, int, Callable[[], object]]:
    """An EchoService of ``kind`` on a mutual-TLS port and a TLS port; (mtls, tls, stop)."""
    if kind == "sync":
        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=4), interceptors=[AuthInterceptor(verifier)]
        )
        pb2_grpc.add_EchoServiceServicer_to_server(SyncEcho(), server)
        mtls = server.add_secure_port("127.0.0.1:0", _credentials(pki, mutual=True))
        tls = server.add_secure_port("127.0.0.1:0", _credentials(pki, mutual=False))
        server.start()
        return mtls, tls, lambda: server.stop(1).wait()

    async def start() -> _Aio:
        pool = futures.ThreadPoolExecutor(max_workers=4) if kind == "aio-plain-functions" else None
        server = grpc.aio.server(interceptors=[AioAuthInterceptor(verifier)], migration_thread_pool=pool)
        servicer = SyncEcho() if kind == "aio-plain-functions" else AioEcho()
        pb2_grpc.add_EchoServiceServicer_to_server(servicer, server)
        mtls = server.add_secure_port("127.0.0.1:0", _credentials(pki, mutual=True))
        tls = server.add_secure_port("127.0.0.1:0", _credentials(pki, mutual=False))
        await server.start()
        return _Aio(server, (mtls, tls), pool)

    thread: ServerThread[_Aio] = ServerThread(start)
    ports = thread.start().ports
    return ports[0], ports[1], lambda: thread.stop(1)


@dataclass
class Bench:
    """An EchoService of one kind, and tokens from the TokenService's mutual-TLS port."""

    pki: Pki
    mtls_port: int
    tls_port: int
    token_server: TokenServer
    reader: RegisteredClient

    def token(self, cert: Issued | None) -> str:
        """A token for the reader: bound to ``cert``, or unbound (over plain TLS) when None."""
        port = self.token_server.running.port if cert is None else self.token_server.running.mtls_port or 0
        return issue(port, self.pki, self.reader, cert, audience="echo")

    def stub(self, cert: Issued | None, *, mutual: bool = True) -> Any:
        port = self.mtls_port if mutual else self.tls_port
        channel = grpc.secure_channel(f"localhost:{port}", channel_credentials(self.pki, cert))
        self._channels.append(channel)
        return pb2_grpc.EchoServiceStub(channel)

    _channels: list[grpc.Channel]


@pytest.fixture(params=KINDS)  # indirect from PAIRS where a test takes a method too
def bench(request: pytest.FixtureRequest, mtls_token_server: TokenServer, pki: Pki) -> Iterator[Bench]:
    verifier = TokenVerifier(
        issuer=ISSUER,
        audience="echo",
        jwks=GrpcJwksSource(
            f"localhost:{mtls_token_server.running.port}",
            credentials=grpc.ssl_channel_credentials(pki.ca.cert_pem),
        ),
    )
    mtls, tls, stop = start_echo(request.param, verifier, pki)
    reader = mtls_token_server.register("echo-reader", scopes=("echo:read",), audiences=("echo",))
    made = Bench(pki, mtls, tls, mtls_token_server, reader, [])
    try:
        yield made
    finally:
        for channel in made._channels:
            channel.close()
        stop()  # with a grace: calls whose answer the client has seen finish their server side
        verifier.close()


def call(stub: Any, method: str, token: str) -> list[tuple[str, str]]:
    """One call of ``method``'s kind; (text, caller) of every response."""
    metadata = (("authorization", f"Bearer {token}"),)
    rpc = getattr(stub, method)
    if method in ("Echo", "EchoTwice"):
        response = rpc(pb2.EchoRequest(text="hi"), metadata=metadata, timeout=TIMEOUT)
        return [(response.text, response.caller)]
    if method == "ServerStream":
        return [
            (r.text, r.caller) for r in rpc(pb2.EchoRequest(text="s"), metadata=metadata, timeout=TIMEOUT)
        ]
    requests = iter([pb2.EchoRequest(text=t) for t in "ab"])
    if method == "ClientStream":
        response = rpc(requests, metadata=metadata, timeout=TIMEOUT)
        return [(response.text, response.caller)]
    return [(r.text, r.caller) for r in rpc(requests, metadata=metadata, timeout=TIMEOUT)]


def refusal(stub: Any, method: str, token: str) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        call(stub, method, token)
    return reason(info.value)


@pytest.mark.parametrize(("bench", "method"), PAIRS, indirect=["bench"])
def test_bound_token_with_its_certificate_is_accepted(bench: Bench, method: str) -> None:
    token = bench.token(bench.pki.client)
    assert claims(token)["cnf"]["x5t#S256"] == bench.pki.client.thumbprint
    answers = call(bench.stub(bench.pki.client), method, token)
    assert answers and all(caller == "echo-reader" for _, caller in answers)


@pytest.mark.parametrize(("bench", "method"), PAIRS, indirect=["bench"])
def test_bound_token_with_another_valid_certificate_is_invalid_token(bench: Bench, method: str) -> None:
    token = bench.token(bench.pki.client)
    assert refusal(bench.stub(bench.pki.other_client), method, token) == REFUSED


@pytest.mark.parametrize(("bench", "method"), PAIRS, indirect=["bench"])
def test_bound_token_over_tls_without_a_certificate_is_invalid_token(bench: Bench, method: str) -> None:
    token = bench.token(bench.pki.client)
    assert refusal(bench.stub(None, mutual=False), method, token) == REFUSED


def test_bound_token_is_checked_per_call_on_cache_hits(bench: Bench) -> None:
    token = bench.token(bench.pki.client)
    right, wrong = bench.stub(bench.pki.client), bench.stub(bench.pki.other_client)
    assert call(right, "Echo", token) == [("hi", "echo-reader")]  # verified, now cached
    assert refusal(wrong, "Echo", token) == REFUSED
    assert refusal(bench.stub(None, mutual=False), "Echo", token) == REFUSED
    assert call(right, "Echo", token) == [("hi", "echo-reader")]


@pytest.mark.parametrize(("bench", "method"), PAIRS, indirect=["bench"])
def test_unbound_token_still_works_over_mutual_tls(bench: Bench, method: str) -> None:
    token = bench.token(None)
    assert "cnf" not in claims(token)
    answers = call(bench.stub(bench.pki.other_client), method, token)
    assert answers and all(caller == "echo-reader" for _, caller in answers)
    assert call(bench.stub(None, mutual=False), "Echo", token) == [("hi", "echo-reader")]


def test_binding_is_checked_before_the_scopes(bench: Bench) -> None:
    # EchoTwice needs echo:write too: a stolen token is INVALID_TOKEN, whatever it holds
    token = bench.token(bench.pki.client)
    assert refusal(bench.stub(bench.pki.other_client), "EchoTwice", token) == REFUSED
    assert refusal(bench.stub(bench.pki.client), "EchoTwice", token) == (
        grpc.StatusCode.PERMISSION_DENIED,
        "INSUFFICIENT_SCOPE",
    )
