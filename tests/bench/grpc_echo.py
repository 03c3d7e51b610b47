"""A bare ``grpc.aio`` server for the benchmarks' Python-gRPC ceiling: the cost of one unary call
with nothing of ours in it.

Run as ``python tests/bench/grpc_echo.py --listen HOST:PORT --workers N --response FILE [--sign]``: N
processes (``--workers``, as ``authsvc serve`` starts them: spawned, each with its own event loop
and ``grpc.so_reuseport``) serve ``/authsvc.v1.TokenService/IssueToken``. Each call parses the
request as an ``IssueTokenRequest`` (as the real server does) and answers a fixed
``IssueTokenResponse`` read from ``FILE`` (a real token response, so the answer is the same size
and shape as the one measured against it). No interceptor, no health service, no logging. With
``--sign`` each call also makes one RSA-2048 PKCS#1 v1.5 SHA-256 signature (cryptography, a key
generated at start, over a message the size of a token's signing input), as the TokenService does:
a bare server that signs, nothing else of ours. SIGTERM stops every worker.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import signal
import sys
from pathlib import Path

import grpc
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a script: make `authsvc` importable

from authsvc.v1 import token_pb2

SERVICE = "authsvc.v1.TokenService"
METHOD = "IssueToken"


async def serve(listen: str, response: bytes, reuse_port: bool, sign: bool) -> None:
    answer = token_pb2.IssueTokenResponse.FromString(response)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    signing_input = answer.access_token.rpartition(".")[0].encode("ascii")

    async def issue_token(
        request: token_pb2.IssueTokenRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> token_pb2.IssueTokenResponse:
        if sign:
            key.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
        return answer

    handler = grpc.unary_unary_rpc_method_handler(
        issue_token,
        request_deserializer=token_pb2.IssueTokenRequest.FromString,
        response_serializer=token_pb2.IssueTokenResponse.SerializeToString,
    )
    server = grpc.aio.server(options=[("grpc.so_reuseport", 1 if reuse_port else 0)])
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, {METHOD: handler}),))
    server.add_insecure_port(listen)
    await server.start()
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    await stopping.wait()
    await server.stop(1)


def _worker(listen: str, response: bytes, reuse_port: bool, sign: bool) -> None:
    asyncio.run(serve(listen, response, reuse_port, sign))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--listen", required=True)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--response", type=Path, required=True, help="a serialized IssueTokenResponse")
    parser.add_argument("--sign", action="store_true", help="one RSA-2048 signature per call")
    args = parser.parse_args()
    response = args.response.read_bytes()
    if args.workers == 1:
        _worker(args.listen, response, False, args.sign)
        return 0
    ctx = multiprocessing.get_context("spawn")
    procs = [
        ctx.Process(target=_worker, args=(args.listen, response, True, args.sign))
        for _ in range(args.workers)
    ]
    for p in procs:
        p.start()

    def forward(signum: int, _frame: object) -> None:
        for p in procs:
            if p.is_alive():
                p.terminate()

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for p in procs:
        p.join()
    return max((p.exitcode or 0) for p in procs)


if __name__ == "__main__":
    sys.exit(main())
