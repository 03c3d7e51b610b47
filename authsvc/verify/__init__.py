"""What a resource server imports to accept authsvc access tokens, offline.

::

    from authsvc.verify import AuthInterceptor, GrpcJwksSource, TokenVerifier, current_principal

    keys = GrpcJwksSource("auth.internal:50051", credentials=grpc.ssl_channel_credentials())
    verifier = TokenVerifier(issuer="https://auth.example", audience="payments", jwks=keys)
    server = grpc.server(pool, interceptors=[AuthInterceptor(verifier)])

or, for an HTTP resource server on ASGI, with the keys from the issuer's jwks_uri::

    keys = HttpJwksSource("https://auth.example/.well-known/jwks.json")
    verifier = TokenVerifier(issuer="https://auth.example", audience="payments", jwks=keys)
    app = BearerAuthMiddleware(app, verifier, routes={("POST", "/api/v1/payments"): ["payments:write"]})

With the revocation list (WatchRevocations; the resource server registers its own client with
the scope ``authsvc:revocations``)::

    revocations = RevocationCache(
        GrpcRevocationSource("auth.internal:50051", client_id="payments", client_secret=secret,
                             credentials=grpc.ssl_channel_credentials()),
        max_staleness=60, fail_closed=False,
    )
    verifier = TokenVerifier(issuer=..., audience="payments", jwks=keys, revocations=revocations)

or, where only HTTP reaches the TokenService, polling its ``GET /oauth2/revocations``::

    HttpRevocationSource("https://auth.example/oauth2/revocations", client_id="payments",
                         client_secret=secret, poll_interval=5)

Importable without the server or store packages.
"""

from authsvc.verify.asgi import BearerAuthMiddleware
from authsvc.verify.interceptor import AioAuthInterceptor, AuthInterceptor
from authsvc.verify.jwks import (
    FileJwksSource,
    GrpcJwksSource,
    HttpJwksSource,
    JwksCache,
    JwksSource,
    StaticJwksSource,
)
from authsvc.verify.policy import PUBLIC, MethodPolicy
from authsvc.verify.principal import (
    bearer_token,
    bound_principal,
    current_principal,
    http_bearer_token,
    verify_on_event_loop,
)
from authsvc.verify.revocations import (
    GrpcRevocationSource,
    HttpRevocationSource,
    RevocationCache,
    RevocationSource,
)
from authsvc.verify.verifier import Principal, TokenVerifier

__all__ = [
    "PUBLIC",
    "AioAuthInterceptor",
    "AuthInterceptor",
    "BearerAuthMiddleware",
    "FileJwksSource",
    "GrpcJwksSource",
    "GrpcRevocationSource",
    "HttpJwksSource",
    "HttpRevocationSource",
    "JwksCache",
    "JwksSource",
    "MethodPolicy",
    "Principal",
    "RevocationCache",
    "RevocationSource",
    "StaticJwksSource",
    "TokenVerifier",
    "bearer_token",
    "bound_principal",
    "current_principal",
    "http_bearer_token",
    "verify_on_event_loop",
]
