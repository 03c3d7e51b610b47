"""The TokenService's application layer: what the gRPC edge, the HTTP edge and the ``authsvc``
command all call, transport-free.

- :mod:`~authsvc.authority.deployment`: bootstrap and wiring: the store, the key-encryption keys
  (and changing them), the secret-hashing pepper;
- :mod:`~authsvc.authority.keys`: signing-key management and the rule for what is published;
- :mod:`~authsvc.authority.clients`: the client registry;
- :mod:`~authsvc.authority.keyring`: the signer and the published JWK Set a running server serves;
- :mod:`~authsvc.authority.revocations`: the revocation list: adding entries, and the feed a
  running server streams to verifiers;
- :mod:`~authsvc.authority.tokens`: issuing tokens.

:class:`Authority` bundles the first three and the revocation registry for one deployment.
Importing this package loads no gRPC; the SDK and the verifier never import it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from authsvc.authority.clients import ClientRegistry
from authsvc.authority.deployment import Deployment, open_deployment
from authsvc.authority.keys import KeyInfo, KeyManager
from authsvc.authority.revocations import RevocationRegistry as _RevocationRegistry
from authsvc.core.clients import MAX_TOKEN_TTL
from authsvc.core.ports import Clock, RandomSource
from authsvc.store.base import Store

__all__ = [
    "Authority",
    "ClientRegistry",
    "Deployment",
    "KeyInfo",
    "KeyManager",
    "open_authority",
    "open_deployment",
]


class Authority:
    """One deployment's parts: :attr:`deployment` (store, KEKs, pepper), :attr:`keys`,
    :attr:`clients` and :attr:`revocations`, each using only the part of the store it needs."""

    def __init__(self, deployment: Deployment) -> None:
        self.deployment = d = deployment
        self.keys = KeyManager(d.store, d, clock=d.clock, random=d.random)
        self.clients = ClientRegistry(d.store, d.hasher, clock=d.clock, random=d.random)
        # imported from its module, as Keyring and RevocationFeed are
        self.revocations = _RevocationRegistry(d.store, d.clock, MAX_TOKEN_TTL)

    @property
    def store(self) -> Store:
        return self.deployment.store

    @property
    def clock(self) -> Clock:
        return self.deployment.clock

    @property
    def random(self) -> RandomSource:
        return self.deployment.random

    def close(self) -> None:
        self.deployment.store.close()


def open_authority(
    data_dir: Path,
    *,
    kek: str | None,
    kek_file: Path | Sequence[Path] | None,
    clock: Clock,
    random: RandomSource,
    database_url: str | None = None,
) -> Authority:
    """Open a deployment (see :func:`~authsvc.authority.deployment.open_deployment`) and its parts."""
    return Authority(
        open_deployment(
            data_dir, kek=kek, kek_file=kek_file, clock=clock, random=random, database_url=database_url
        )
    )
