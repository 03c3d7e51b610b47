"""The test-only EchoService: compiled from tests/protos at import, with sync and aio servicers
that report the caller they see through current_principal()."""

from __future__ import annotations

import importlib
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import grpc_tools
from grpc_tools import protoc

from authsvc.verify import current_principal

_ROOT = Path(__file__).resolve().parents[2]


def _compile() -> tuple[ModuleType, ModuleType]:
    out = Path(tempfile.mkdtemp(prefix="echo-proto-"))
    std = str(Path(grpc_tools.__file__).parent / "_proto")
    rc = protoc.main(
        [
            "protoc",
            f"-I{_ROOT / 'tests' / 'protos'}",
            f"-I{_ROOT / 'protos'}",
            f"-I{std}",
            f"--python_out={out}",
            f"--grpc_python_out={out}",
            "echo/v1/echo.proto",
        ]
    )
    assert rc == 0, "protoc failed on tests/protos/echo/v1/echo.proto"
    sys.path.insert(0, str(out))
    return importlib.import_module("echo.v1.echo_pb2"), importlib.import_module("echo.v1.echo_pb2_grpc")


pb2, pb2_grpc = _compile()


def _caller() -> str:
    try:
        return current_principal().client_id
    except LookupError:
        return ""


class SyncEcho(pb2_grpc.EchoServiceServicer):  # type: ignore[misc,name-defined]
    def Echo(self, request: Any, context: Any) -> Any:
        return pb2.EchoResponse(text=request.text, caller=_caller())

    EchoTwice = Echo
    Ping = Echo
    Undeclared = Echo

    def ServerStream(self, request: Any, context: Any) -> Iterator[Any]:
        for i in range(3):
            yield pb2.EchoResponse(text=f"{request.text}{i}", caller=_caller())

    def ClientStream(self, requests: Iterator[Any], context: Any) -> Any:
        return pb2.EchoResponse(text="".join(r.text for r in requests), caller=_caller())

    def Chat(self, requests: Iterator[Any], context: Any) -> Iterator[Any]:
        for r in requests:
            yield pb2.EchoResponse(text=r.text, caller=_caller())


class AioEcho(pb2_grpc.EchoServiceServicer):  # type: ignore[misc,name-defined]
    async def Echo(self, request: Any, context: Any) -> Any:
        return pb2.EchoResponse(text=request.text, caller=_caller())

    EchoTwice = Echo
    Ping = Echo
    Undeclared = Echo

    async def ServerStream(self, request: Any, context: Any) -> AsyncIterator[Any]:
        for i in range(3):
            yield pb2.EchoResponse(text=f"{request.text}{i}", caller=_caller())

    async def ClientStream(self, requests: AsyncIterator[Any], context: Any) -> Any:
        text = "".join([r.text async for r in requests])
        return pb2.EchoResponse(text=text, caller=_caller())

    async def Chat(self, requests: AsyncIterator[Any], context: Any) -> None:
        # the reader/writer style, as opposed to ServerStream's async generator
        async for r in requests:
            await context.write(pb2.EchoResponse(text=r.text, caller=_caller()))
