"""The protocol core: pure OAuth 2.0 logic, free of gRPC, SQL, the environment, the clock and
randomness (the last two are injected through :mod:`authsvc.core.ports`)."""

from authsvc.core.clients import Client, new_client
from authsvc.core.errors import OAuthError
from authsvc.core.grants import (
    ClientAuthMethod,
    ClientCredentialsGrant,
    IssuedToken,
    TokenEndpoint,
    TokenRequest,
    client_credentials_endpoint,
)
from authsvc.core.keys import KeyEncryptionKey, KeyState, SigningKey
from authsvc.core.secrets import SecretHasher, generate_client_secret
from authsvc.core.tokens import TokenSigner

__all__ = [
    "Client",
    "ClientAuthMethod",
    "ClientCredentialsGrant",
    "IssuedToken",
    "KeyEncryptionKey",
    "KeyState",
    "OAuthError",
    "SecretHasher",
    "SigningKey",
    "TokenEndpoint",
    "TokenRequest",
    "TokenSigner",
    "client_credentials_endpoint",
    "generate_client_secret",
    "new_client",
]
