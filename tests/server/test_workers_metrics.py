"""``authsvc serve --workers 2 --metrics-listen``: one scrape shows the whole process group, gRPC
and HTTP calls alike.

The workers count into one private directory (prometheus_client's multiprocess mode) and share
the management port; whichever worker answers a scrape reads every worker's files. Run as an
operator would: the real command, real channels, the real scrape."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

import grpc
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector

from authsvc.core.errors import ConfigurationError
from authsvc.v1 import token_pb2, token_pb2_grpc
from tests.conftest import KEK, serve_config
from tests.helpers import create_client, free_port
from tests.test_metrics import scrape, value

ISSUE = {"grpc_type": "unary", "grpc_service": "authsvc.v1.TokenService", "grpc_method": "IssueToken"}
HTTP_TOKEN = {
    "http_request_method": "POST",
    "http_route": "/oauth2/token",
    "http_response_status_code": "200",
}
CALLS = 40
HTTP_CALLS = 20


def wait_for(condition: object, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if callable(condition) and condition():
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise AssertionError("timed out")


def per_worker(metrics_dir: Path, name: str, **labels: str) -> list[float]:
    """``name`` as each worker counted it: its own counter file, read alone."""
    found = []
    for db in sorted(metrics_dir.glob("counter_*.db")):
        alone = Path(tempfile.mkdtemp(dir=metrics_dir.parent))
        shutil.copy(db, alone)
        registry = CollectorRegistry(auto_describe=False)
        MultiProcessCollector(registry, path=str(alone))  # type: ignore[no-untyped-call]
        found.append(registry.get_sample_value(name, labels) or 0.0)
        shutil.rmtree(alone)
    return found


def test_one_scrape_shows_every_workers_calls(tmp_path: Path) -> None:
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AUTHSVC_", "PROMETHEUS_"))}
    env.update({"AUTHSVC_KEK": KEK, "AUTHSVC_DATA_DIR": str(tmp_path / "data"), "TMPDIR": str(tmp)})
    secret = create_client(env, "shop", "payments:read")
    port, http_port, metrics_port = free_port(), free_port(), free_port()
    log = tmp_path / "serve.log"
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "authsvc.cli", "serve", "--workers", "2",
            "--listen", f"127.0.0.1:{port}", "--metrics-listen", f"127.0.0.1:{metrics_port}",
            "--http-listen", f"127.0.0.1:{http_port}",
        ],
        env=env,
        stderr=log.open("w"),
    )  # fmt: skip
    base = f"http://127.0.0.1:{metrics_port}"
    try:
        wait_for(lambda: len(list(tmp.glob("authsvc-metrics-*/counter_*.db"))) == 2)
        [metrics_dir] = list(tmp.iterdir())
        assert metrics_dir.stat().st_mode & 0o777 == 0o700
        wait_for(lambda: scrape(base) is not None)
        request = token_pb2.IssueTokenRequest(
            grant_type="client_credentials", client_id="shop", client_secret=secret
        )
        # a new connection per call: SO_REUSEPORT spreads connections, not calls, over the workers
        for _ in range(CALLS):
            with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                token_pb2_grpc.TokenServiceStub(channel).IssueToken(request, timeout=10)
        form = {"grant_type": "client_credentials", "client_id": "shop", "client_secret": secret}
        for _ in range(HTTP_CALLS):  # urllib: one connection per request
            with urllib.request.urlopen(
                f"http://127.0.0.1:{http_port}/oauth2/token",
                urllib.parse.urlencode(form).encode(),
                timeout=10,
            ) as answer:
                assert answer.status == 200
        shares = per_worker(metrics_dir, "authsvc_tokens_issued_total")
        assert len(shares) == 2 and sum(shares) == CALLS + HTTP_CALLS
        assert all(share > 0 for share in shares), f"one worker served every call: {shares}"
        for _ in range(6):  # each scrape may reach either worker: every one shows the whole group
            samples = scrape(base)
            assert value(samples, "grpc_server_handled_total", **ISSUE, grpc_code="OK") == CALLS
            assert value(samples, "grpc_server_started_total", **ISSUE) == CALLS
            assert value(samples, "grpc_server_handling_seconds_count", **ISSUE) == CALLS
            assert value(samples, "authsvc_tokens_issued_total") == CALLS + HTTP_CALLS
            assert value(samples, "http_server_request_duration_seconds_count", **HTTP_TOKEN) == HTTP_CALLS
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert proc.returncode == 0, log.read_text()
    assert not list(tmp.iterdir()), "the metrics directory outlived the server"


@pytest.mark.parametrize(
    ("metrics_listen", "expected"),
    [("127.0.0.1:0", "give --metrics-listen a fixed HOST:PORT, not port 0"), ("unix:/tmp/m.sock", "unix:")],
    ids=["port-0", "unix"],
)
def test_workers_need_a_shared_tcp_metrics_port(tmp_path: Path, metrics_listen: str, expected: str) -> None:
    with pytest.raises(ConfigurationError, match=expected):
        serve_config(tmp_path, listen="127.0.0.1:50999", workers=2, metrics_listen=metrics_listen)


def test_unwritable_tmpdir_is_one_line(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AUTHSVC_", "PROMETHEUS_"))}
    env.update({"AUTHSVC_KEK": KEK, "AUTHSVC_DATA_DIR": str(tmp_path / "data")})
    env["TMPDIR"] = str(tmp_path / "missing")
    result = subprocess.run(
        [
            sys.executable, "-m", "authsvc.cli", "serve", "--workers", "2",
            "--listen", f"127.0.0.1:{free_port()}", "--metrics-listen", f"127.0.0.1:{free_port()}",
        ],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr
    assert "TMPDIR" in result.stderr.splitlines()[-1], result.stderr
