"""The public API of each package is exactly what its ``__all__`` says (httpx's
``test_exported_members`` habit), and the packages resource servers and clients import stay lean."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys

import pytest

PUBLIC = {
    "authsvc.verify": {
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
    },
    "authsvc.client": {
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
    },
    "authsvc.authority": {
        "Authority",
        "ClientRegistry",
        "Deployment",
        "KeyInfo",
        "KeyManager",
        "open_authority",
        "open_deployment",
    },
}


@pytest.mark.parametrize("package", sorted(PUBLIC))
def test_exported_members(package: str) -> None:
    module = importlib.import_module(package)
    assert set(module.__all__) == PUBLIC[package], "a public name was added or removed: update the docs too"
    for name in module.__all__:
        assert getattr(module, name) is not None
    # every public name defined in the package is exported
    members = {
        n
        for n, v in vars(module).items()
        if not n.startswith("_") and getattr(v, "__module__", "").startswith(package)
    }
    assert members <= PUBLIC[package], f"public but not in __all__: {sorted(members - PUBLIC[package])}"


# What a resource server or a client must never load by importing what it needs; aiohttp, which a
# service imports only once it serves HTTP (a tenth of a second of every process's start); and
# cryptography.x509, which only mutual TLS needs (a third of every `authsvc clients` command's).
NOT_LOADED = {
    "authsvc.authority": ("aiohttp", "cryptography.x509"),
    "authsvc.cli": ("aiohttp",),
    "authsvc.server": ("aiohttp",),
    "payments_svc.app": ("aiohttp",),
    "payments_svc.cli": ("aiohttp",),
    "authsvc.verify": (
        "aiohttp",
        "authsvc.authority",
        "authsvc.store",
        "authsvc.server",
        "authsvc.core.grants",
        "authsvc.core.tokens",
    ),
    "authsvc.client": (
        "aiohttp",
        "authsvc.authority",
        "authsvc.store",
        "authsvc.server",
        "authsvc.verify",
        "authsvc.core.grants",
        "authsvc.core.tokens",
        "authsvc.core.keys",
    ),
}

_PROBE = """
import importlib, json, sys
importlib.import_module(sys.argv[1])
forbidden = json.loads(sys.argv[2])
print(json.dumps(sorted(m for m in sys.modules if any(m == f or m.startswith(f + ".") for f in forbidden))))
"""


@pytest.mark.parametrize("package", sorted(NOT_LOADED))
def test_importing_a_public_package_stays_lean(package: str) -> None:
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, package, json.dumps(NOT_LOADED[package])],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert json.loads(out.stdout) == []
