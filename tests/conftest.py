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
from tests.store.contract import store  # noqa: F401 - each kind of store in turn, for every test module

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


# The markers (pyproject.toml), kept here rather than on each test so that they stay in one list:
# `integration` is every test of a module that runs the service's own commands (authsvc,
# payments-svc, the merchants, the deploy files' command lines) as processes; `slow` is those and
# the in-process tests that wait on the service's real intervals (caches, ticks, staleness bounds).
INTEGRATION_MODULES = frozenset(
    {
        "tests/clients/test_node_merchant.py",
        "tests/clients/test_python_merchant.py",
        "tests/clients/test_python_merchant_private_key_jwt.py",
        "tests/payments/test_failing_well.py",
        "tests/payments/test_http.py",
        "tests/payments/test_mtls.py",
        "tests/payments/test_replicas.py",
        "tests/payments/test_revocations.py",
        "tests/payments/test_serve.py",
        "tests/security/test_kek_and_files.py",
        "tests/server/test_audit.py",
        "tests/server/test_client_set_keys_e2e.py",
        "tests/server/test_clients_cli.py",
        "tests/server/test_failing_well.py",
        "tests/server/test_keys_cli.py",
        "tests/server/test_mtls.py",
        "tests/server/test_private_key_jwt.py",
        "tests/server/test_rate_limits.py",
        "tests/server/test_replicas.py",
        "tests/server/test_revocation_e2e.py",
        "tests/server/test_serve.py",
        "tests/server/test_workers_metrics.py",
        "tests/test_deploy_files.py",
    }
)
SLOW_TESTS = frozenset(
    {
        "tests/client/test_integration.py::test_short_lived_tokens_refresh_without_a_failed_call",
        "tests/payments/test_readiness.py::test_not_ready_while_keys_are_stale_and_ready_again_when_the_issuer_is_back",
        "tests/payments/test_store.py::test_database_outage_is_unavailable_then_recovers",
        "tests/security/test_rate_limit_attacks.py::test_cycling_addresses_and_client_ids_cannot_grow_the_limiters_memory",
        "tests/security/test_resource_limits.py::test_concurrent_streams_per_connection_capped",
        "tests/security/test_verifier_hardening.py::test_pushed_revocation_leaves_no_stale_cached_acceptance",
        "tests/server/test_key_rotation.py::test_two_rotations_under_load_fail_no_call",
        "tests/server/test_token_service.py::test_disabled_client_is_refused_within_5s_and_enabled_again",
        "tests/server/test_token_service.py::test_new_client_is_seen_within_5s",
        "tests/server/test_token_service.py::test_rotated_secret_replaces_the_old_one_within_5s",
        "tests/test_metrics_domain.py::test_key_states_follow_a_rotation_and_a_revocation",
    }
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark ``integration`` and ``slow`` tests (above); in a parallel run (pytest -n), hand the
    slow ones out first, so that no worker starts a long test when the others are done.

    pytest-xdist gives each of the N processes one contiguous stretch of the order to begin with
    (all of it under ``--dist worksteal``, pyproject.toml; a quarter of it under ``load``), so the
    order deals the tests out in turn (slow ones first) into N blocks: each process starts with
    its share of the slow tests, rather than one or two processes with all of them."""
    root = config.rootpath
    modules: set[str] = set()
    for item in items:
        module = item.path.relative_to(root).as_posix()
        modules.add(module)
        name = f"{module}::{item.originalname if isinstance(item, pytest.Function) else item.name}"
        if module in INTEGRATION_MODULES:
            item.add_marker(pytest.mark.integration)
            item.add_marker(pytest.mark.slow)
        elif name in SLOW_TESTS:
            item.add_marker(pytest.mark.slow)
    stale = [
        listed
        for listed in sorted(SLOW_TESTS)
        if (module := listed.split("::")[0]) in modules
        and f"def {listed.split('::')[1]}(" not in (root / module).read_text(encoding="utf-8")
    ]
    stale += [module for module in sorted(INTEGRATION_MODULES) if not (root / module).is_file()]
    if stale:
        raise pytest.UsageError(f"tests/conftest.py marks tests that no longer exist: {stale}")
    if hasattr(config, "workerinput"):  # a pytest-xdist worker: every worker sorts alike
        items.sort(key=lambda item: item.get_closest_marker("slow") is None)
        workers = int(config.workerinput.get("workercount", 1))
        items[:] = [item for block in range(workers) for item in items[block::workers]]


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
