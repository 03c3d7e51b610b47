"""The Python SDK: fetch, cache and refresh access tokens, and attach them to gRPC calls.

::

    from authsvc.client import ClientCredentials, authorized_channel

    # TLS to any host but loopback and unix: (plaintext there); the secret never goes in the clear
    creds = ClientCredentials.for_target("auth.internal:50051", client_id="merchant-shop",
                                         client_secret=read_secret(env=os.environ),
                                         scopes=["payments:write"], audience=["payments"])
    channel = authorized_channel("payments.internal:50052", creds)

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

__all__ = [
    "AccessToken",
    "AioBearerInterceptor",
    "AsyncClientCredentials",
    "AsyncGrpcTokenFetcher",
    "BearerAuthPlugin",
    "BearerInterceptor",
    "ClientCredentials",
    "GrpcTokenFetcher",
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
