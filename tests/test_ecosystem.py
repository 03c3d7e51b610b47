"""The wider ecosystem (issue 10): protos every code generator accepts, server reflection v1 beside
v1alpha on both services, and ErrorInfo metadata a program can act on. Real servers, real sockets."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import grpc_tools
import pytest
from google.protobuf import descriptor_pb2
from google.rpc import error_details_pb2
from grpc_reflection.v1alpha import reflection_pb2
from grpc_status import rpc_status
from grpc_tools import protoc

from authsvc.v1 import token_pb2, token_pb2_grpc
from payments_svc.app import PaymentsConfig, RunningPayments, start_server
from payments_svc.v1 import payments_pb2, payments_pb2_grpc
from tests.conftest import ISSUER, TokenServer
from tests.helpers import ServerThread

ROOT = Path(__file__).resolve().parents[1]
GO_MODULE = "github.com/authsvc/authsvc/gen/go"
REFLECTION_V1 = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"
TOKEN_SERVICE = "authsvc.v1.TokenService"
PAYMENT_SERVICE = "payments_svc.v1.PaymentService"

# -- the protos, as every generator reads them ---------------------------------------------


def _our_proto_files() -> list[str]:
    """Every .proto file under protos/ but the vendored googleapis copy, relative to protos/."""
    relative = (p.relative_to(ROOT / "protos") for p in (ROOT / "protos").rglob("*.proto"))
    files = sorted(str(p) for p in relative if p.parts[0] != "google")
    assert "authsvc/v1/token.proto" in files and "payments_svc/v1/payments.proto" in files
    return files


@pytest.fixture(scope="module")
def descriptors(tmp_path_factory: pytest.TempPathFactory) -> dict[str, descriptor_pb2.FileDescriptorProto]:
    """protos/ compiled from source (not the generated Python, which could lag behind)."""
    out = tmp_path_factory.mktemp("descriptors") / "set.binpb"
    std = Path(grpc_tools.__file__).parent / "_proto"
    rc = protoc.main(
        ["protoc", f"-I{ROOT / 'protos'}", f"-I{std}", f"--descriptor_set_out={out}", *_our_proto_files()]
    )
    assert rc == 0, "protoc failed on protos/"
    files = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file
    return {f.name: f for f in files}


AUTHSVC_V1_OPTIONS = {
    "go_package": f"{GO_MODULE}/authsvc/v1;authsvcv1",
    "java_package": "dev.authsvc.v1",
    "java_multiple_files": True,
    "php_namespace": "Authsvc\\V1",
    "csharp_namespace": "Authsvc.V1",
    "ruby_package": "Authsvc::V1",
}


@pytest.mark.parametrize("name", ["authsvc/v1/options.proto", "authsvc/v1/token.proto"])
def test_authsvc_v1_files_carry_the_per_language_package_options(
    descriptors: dict[str, descriptor_pb2.FileDescriptorProto], name: str
) -> None:
    options = descriptors[name].options
    assert {field: getattr(options, field) for field in AUTHSVC_V1_OPTIONS} == AUTHSVC_V1_OPTIONS


@pytest.mark.parametrize("name", _our_proto_files())
def test_every_proto_file_has_a_go_package_under_the_module_matching_its_directory(
    descriptors: dict[str, descriptor_pb2.FileDescriptorProto], name: str
) -> None:
    """protoc-gen-go refuses a file without go_package; with paths=source_relative the import path
    must name the file's own directory, and Go wants one package per directory."""
    options = descriptors[name].options
    import_path, _, alias = options.go_package.partition(";")
    assert import_path == f"{GO_MODULE}/{name.rsplit('/', 1)[0]}"
    assert alias.isidentifier() and alias.islower()
    siblings = {f.options.go_package for f in descriptors.values() if f.package == descriptors[name].package}
    assert siblings == {options.go_package}
    assert options.java_multiple_files and options.java_package.startswith("dev.authsvc.")


def test_the_generated_python_carries_the_same_options() -> None:
    """make proto was run after the options changed (make lint's proto-check says the same)."""
    options = token_pb2.DESCRIPTOR.GetOptions()
    assert options.go_package == AUTHSVC_V1_OPTIONS["go_package"]
    assert options.java_package == AUTHSVC_V1_OPTIONS["java_package"]


# -- reflection v1 and v1alpha on both servers ---------------------------------------------


def _reflect(
    channel: grpc.Channel, path: str, *requests: reflection_pb2.ServerReflectionRequest
) -> list[reflection_pb2.ServerReflectionResponse]:
    """A reflection client on ``path``. v1 and v1alpha messages are the same bytes on the wire
    (same fields, same numbers), so the v1alpha classes encode v1 requests."""
    call = channel.stream_stream(
        path,
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )
    return list(call(iter(requests), timeout=10))


def _list_services(channel: grpc.Channel, path: str) -> set[str]:
    (response,) = _reflect(channel, path, reflection_pb2.ServerReflectionRequest(list_services="*"))
    return {s.name for s in response.list_services_response.service}


def _describe(channel: grpc.Channel, path: str, symbol: str) -> dict[str, descriptor_pb2.FileDescriptorProto]:
    (response,) = _reflect(
        channel, path, reflection_pb2.ServerReflectionRequest(file_containing_symbol=symbol)
    )
    assert not response.HasField("error_response"), response.error_response
    files = (
        descriptor_pb2.FileDescriptorProto.FromString(b)
        for b in response.file_descriptor_response.file_descriptor_proto
    )
    return {f.name: f for f in files}


@pytest.fixture
def payments_channel(token_server: TokenServer, tmp_path: Path) -> Iterator[grpc.Channel]:
    config = PaymentsConfig(
        data_dir=tmp_path / "payments", listen="127.0.0.1:0", token_service=token_server.target, issuer=ISSUER
    )
    thread: ServerThread[RunningPayments] = ServerThread(lambda: start_server(config))
    running = thread.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            yield channel
    finally:
        thread.stop(0)


BOTH_REFLECTIONS = {"grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection"}


@pytest.mark.parametrize(
    "path", [REFLECTION_V1, "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"]
)
def test_reflection_lists_the_token_service(channel: grpc.Channel, path: str) -> None:
    assert _list_services(channel, path) == {TOKEN_SERVICE, "grpc.health.v1.Health", *BOTH_REFLECTIONS}


@pytest.mark.parametrize(
    "path", [REFLECTION_V1, "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"]
)
def test_reflection_lists_the_payment_service_without_a_token(
    payments_channel: grpc.Channel, path: str
) -> None:
    assert _list_services(payments_channel, path) == {
        PAYMENT_SERVICE,
        "grpc.health.v1.Health",
        *BOTH_REFLECTIONS,
    }


def test_reflection_v1_describes_the_token_service_with_its_policy(channel: grpc.Channel) -> None:
    files = _describe(channel, REFLECTION_V1, TOKEN_SERVICE)
    assert {"authsvc/v1/token.proto", "authsvc/v1/options.proto"} <= files.keys()
    (service,) = files["authsvc/v1/token.proto"].service
    assert {m.name for m in service.method} >= {"IssueToken", "GetJwks", "WatchJwks"}
    assert files["authsvc/v1/token.proto"].options.go_package == AUTHSVC_V1_OPTIONS["go_package"]


def test_reflection_v1_describes_the_payment_service(payments_channel: grpc.Channel) -> None:
    files = _describe(payments_channel, REFLECTION_V1, PAYMENT_SERVICE)
    (service,) = files["payments_svc/v1/payments.proto"].service
    assert {m.name for m in service.method} >= {
        "CreatePayment",
        "GetPayment",
        "ListPayments",
        "RefundPayment",
    }


def test_reflection_v1_describes_itself_as_grpc_reflection_v1(channel: grpc.Channel) -> None:
    """grpcurl's `describe` walks every listed service, the reflection service included."""
    files = _describe(channel, REFLECTION_V1, "grpc.reflection.v1.ServerReflection")
    file = files["grpc/reflection/v1/reflection.proto"]
    assert file.package == "grpc.reflection.v1"
    (method,) = file.service[0].method
    assert (method.name, method.input_type, method.output_type) == (
        "ServerReflectionInfo",
        ".grpc.reflection.v1.ServerReflectionRequest",
        ".grpc.reflection.v1.ServerReflectionResponse",
    )
    assert method.client_streaming and method.server_streaming
    type_names = {f.type_name for m in file.message_type for f in m.field if f.type_name}
    assert type_names and all(t.startswith(".grpc.reflection.v1.") for t in type_names)
    assert not file.options.deprecated, "v1 is the current version; only v1alpha is deprecated"


# -- ErrorInfo.metadata --------------------------------------------------------------------


def _token(token_server: TokenServer, scopes: list[str]) -> str:
    client_id = f"merchant-{len(scopes)}"
    _, secret = token_server.authority.clients.create_client(
        client_id=client_id, scopes=scopes, audiences=["payments"]
    )
    with grpc.insecure_channel(token_server.target) as ch:
        answer = token_pb2_grpc.TokenServiceStub(ch).IssueToken(
            token_pb2.IssueTokenRequest(
                grant_type="client_credentials", client_id=client_id, client_secret=secret
            ),
            timeout=10,
        )
    return str(answer.access_token)


def error_info(err: grpc.RpcError) -> error_details_pb2.ErrorInfo:
    status = rpc_status.from_call(err)
    assert status is not None, f"no rich status: {err}"
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    return info


def test_insufficient_scope_carries_the_required_scope_in_error_info_metadata(
    token_server: TokenServer, payments_channel: grpc.Channel
) -> None:
    token = _token(token_server, ["payments:read"])
    stub = payments_pb2_grpc.PaymentServiceStub(payments_channel)
    with pytest.raises(grpc.RpcError) as refused:
        stub.CreatePayment(
            payments_pb2.CreatePaymentRequest(
                amount="1.00", currency="USD", payment_method="pm_card_visa", idempotency_key="k1"
            ),
            metadata=(("authorization", f"Bearer {token}"),),
            timeout=10,
        )
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    info = error_info(refused.value)
    assert (info.domain, info.reason) == ("authsvc", "INSUFFICIENT_SCOPE")
    assert dict(info.metadata) == {"scope": "payments:write"}
