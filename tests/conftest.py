from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from authsvc.authority import Authority
from authsvc.core.keys import key_factory
from authsvc.server.app import RunningServer, open_authority, start_server
from authsvc.server.config import ServeConfig
from authsvc.v1 import token_pb2_grpc
from tests.helpers import ServerThread
from tests.keypool import POOL
from tests.pg import pg_database, pg_url  # noqa: F401 - fixtures for every test module
from tests.pki import Pki, pki  # noqa: F401 - the session's test CA and certificates (mutual TLS)
from tests.redisdb import redis_prefix, redis_url  # noqa: F401 - fixtures for every test module

ISSUER = "https://auth.test"
KEK = "11" * 32

_SEAMS = ExitStack()


_MEMORY_TMP = Path("/dev/shm")


def pytest_configure(config: pytest.Config) -> None:
    """Signing keys that servers in this process generate come from the test key pool
    (tests/keypool.py), from collection to the end of the run: each key at most once.

    Temporary directories (``tmp_path``, and those of the commands the tests start) go to memory
    when the machine has a tmpfs and TMPDIR is not set: every SQLite commit fsyncs, and on a
    shared disk that was half of the suite's time. TMPDIR set by the caller wins.
    """
    _SEAMS.enter_context(key_factory(POOL.factory))
    if "TMPDIR" not in os.environ and os.access(_MEMORY_TMP, os.W_OK | os.X_OK):
        os.environ["TMPDIR"] = str(_MEMORY_TMP)
        tempfile.tempdir = None  # forget the directory gettempdir() may have cached


def pytest_unconfigure(config: pytest.Config) -> None:
    _SEAMS.close()


@dataclass
class RegisteredClient:
    client_id: str
    secret: str


@dataclass
class TokenServer:
    """A real TokenService on a free port, with direct access to its deployment state."""

    running: RunningServer
    config: ServeConfig
    thread: ServerThread[RunningServer]

    def stop(self) -> None:
        """Stop the server now (e.g. to show that resource servers survive without it)."""
        self.thread.stop(grace=0)

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.running.port}"

    @property
    def http_url(self) -> str:
        """The base URL of the OAuth endpoints over HTTP (a server started with http_listen)."""
        return f"http://127.0.0.1:{self.running.http_port}"

    @property
    def authority(self) -> Authority:
        return self.running.authority

    def register(
        self,
        client_id: str = "shop",
        scopes: tuple[str, ...] = ("payments:read", "payments:write"),
        audiences: tuple[str, ...] = ("payments",),
        ttl: int = 300,
    ) -> RegisteredClient:
        client, secret = self.authority.clients.create_client(
            client_id=client_id, scopes=list(scopes), audiences=list(audiences), token_ttl=ttl
        )
        return RegisteredClient(client.client_id, secret)


def serve_config(data_dir: Path, **overrides: object) -> ServeConfig:
    """A TokenService's settings for a test: one process (whatever the default ``--workers``
    is), a free port, the test issuer and KEK; ``overrides`` as keyword arguments."""
    settings: dict[str, object] = {
        "data_dir": data_dir,
        "listen": "127.0.0.1:0",
        "issuer": ISSUER,
        "kek": KEK,
        "workers": 1,
    }
    settings.update(overrides)
    return ServeConfig(**settings)  # type: ignore[arg-type]


@pytest.fixture
def token_server(tmp_path: Path) -> Iterator[TokenServer]:
    config = serve_config(tmp_path / "data")
    thread: ServerThread[RunningServer] = ServerThread(
        lambda: start_server(config, authority=open_authority(config))
    )
    running = thread.start()
    try:
        yield TokenServer(running, config, thread)
    finally:
        thread.stop(grace=0)


@pytest.fixture
def channel(token_server: TokenServer) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(token_server.target) as ch:
        yield ch


@pytest.fixture
def stub(channel: grpc.Channel) -> token_pb2_grpc.TokenServiceStub:
    return token_pb2_grpc.TokenServiceStub(channel)


@pytest.fixture
def client(token_server: TokenServer) -> RegisteredClient:
    return token_server.register()


@pytest.fixture
def mtls_token_server(tmp_path: Path, pki: Pki) -> Iterator[TokenServer]:  # noqa: F811 - pki is the fixture
    """A TokenService over TLS on ``port``, mutual TLS on ``mtls_port``, HTTP (TLS) on
    ``http_port`` and HTTP over mutual TLS on ``mtls_http_port``; client certificates from
    ``pki.ca`` (tests/mtls.py)."""
    from tests.mtls import start_mtls_token_server  # here: tests.mtls imports this module

    server = start_mtls_token_server(tmp_path / "data", pki)
    try:
        yield server
    finally:
        server.stop()
