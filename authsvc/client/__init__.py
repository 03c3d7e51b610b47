"""The Python SDK: fetch, cache and refresh access tokens, and attach them to gRPC calls.

::

    from authsvc.client import ClientCredentials, authorized_channel

    # TLS to any host but loopback and unix: (plaintext there); the secret never goes in the clear
    creds = ClientCredentials.for_target("auth.internal:50051", client_id="merchant-shop",
                                         client_secret=read_secret(env=os.environ),
                                         scopes=["payments:write"], audience=["payments"])
    channel = authorized_channel("payments.internal:50052", creds)

    # or, without a shared secret: private_key_jwt (RFC 7523), a fresh signed assertion per fetch
    key = PrivateKeyJwtCredentials.from_pem_file("shop-key.pem", issuer="https://auth.example", kid="shop-1")
    creds = ClientCredentials.for_target("auth.internal:50051", client_id="merchant-shop",
                                         private_key_jwt=key, scopes=["payments:write"])

Importable without the server or store packages.
"""

from authsvc.client.aio import (
    AioBearerInterceptor,
    AsyncClientCredentials,
    AsyncGrpcTokenFetcher,
    aio_insecure_loopback_channel,
)
from authsvc.client.channels import (
    BearerAuthPlugin,
    BearerInterceptor,
    authorized_channel,
    call_credentials,
    insecure_loopback_channel,
    local_channel,
)
from authsvc.client.credentials import (
    AccessToken,
    ClientCredentials,
    GrpcTokenFetcher,
    RetryPolicy,
    TokenFetchError,
    TokenState,
    read_secret,
)
from authsvc.client.private_key_jwt import PrivateKeyJwtCredentials

__all__ = [
    "AccessToken",
    "AioBearerInterceptor",
    "AsyncClientCredentials",
    "AsyncGrpcTokenFetcher",
    "BearerAuthPlugin",
    "BearerInterceptor",
    "ClientCredentials",
    "GrpcTokenFetcher",
    "PrivateKeyJwtCredentials",
    "RetryPolicy",
    "TokenFetchError",
    "TokenState",
    "aio_insecure_loopback_channel",
    "authorized_channel",
    "call_credentials",
    "insecure_loopback_channel",
    "local_channel",
    "read_secret",
]
