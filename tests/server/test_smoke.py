from __future__ import annotations

from authsvc.v1 import token_pb2, token_pb2_grpc
from tests.conftest import RegisteredClient


def test_issue_token_over_real_channel(stub: token_pb2_grpc.TokenServiceStub, client: RegisteredClient) -> None:
    response = stub.IssueToken(
        token_pb2.IssueTokenRequest(
            grant_type="client_credentials", client_id=client.client_id, client_secret=client.secret
        )
    )
    assert response.token_type == "Bearer"
    assert response.scope == "payments:read payments:write"
