"""The Node.js merchant (clients/node/merchant.js) against the real TokenService and PaymentService."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import KEK
from tests.helpers import Command, create_client, token_and_payment_services
from tests.server.test_serve import self_signed

NODE_DIR = Path(__file__).resolve().parents[2] / "clients" / "node"
SCOPES = "payments:read payments:write payments:refund"
ISSUER = "https://node.test"
CLIENT_ID = "merchant-node"


def _node() -> str:
    node = shutil.which("node")
    if node is None:
        if os.environ.get("CI"):
            pytest.fail("node is not on PATH, and CI is set: the Node.js client must be tested in CI")
        pytest.skip("node is not on PATH: the Node.js merchant client is not tested")
    return node


@pytest.fixture(scope="module")
def node_client() -> str:
    """The node binary, with clients/node's dependencies installed (`npm ci` when missing)."""
    node = _node()
    # test processes running at once (pytest -n) install once: the others wait, then find it
    with _locked(NODE_DIR):
        if not (NODE_DIR / "node_modules").is_dir():
            npm = shutil.which("npm")
            if npm is None:
                if os.environ.get("CI"):
                    pytest.fail("npm is not on PATH, and CI is set")
                pytest.skip("npm is not on PATH: cannot install the Node.js client's dependencies")
            out = subprocess.run(
                [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
                cwd=NODE_DIR,
                capture_output=True,
                text=True,
                timeout=600,
                check=False,
            )
            assert out.returncode == 0, f"npm ci failed:\n{out.stdout}\n{out.stderr}"
    return node


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """An exclusive flock on ``directory`` itself while the block runs."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


@pytest.fixture(scope="module")
def running_services(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[dict[str, str], str, Command]]:
    """A TokenService and a PaymentService as processes, once for the tests of this module that
    run the merchant against them (each run pays with its own random idempotency key, and the
    one with a wrong secret changes nothing); yields the merchant's env, its secret and the
    PaymentService."""
    tmp_path = tmp_path_factory.mktemp("services")
    env = {
        **os.environ,
        "AUTHSVC_DATA_DIR": str(tmp_path / "auth"),
        "AUTHSVC_KEK": KEK,
        "AUTHSVC_ISSUER": ISSUER,
        "PAYMENTS_ISSUER": ISSUER,
        "PAYMENTS_DATA_DIR": str(tmp_path / "pay"),
    }
    secret = create_client(env, CLIENT_ID, SCOPES)
    with token_and_payment_services(env) as (auth, gateway):
        yield (
            {
                "PATH": os.environ.get("PATH", ""),
                "HOME": os.environ.get("HOME", str(Path.home())),
                "AUTHSVC_TARGET": auth.target,
                "PAYMENTS_TARGET": gateway.target,
                "AUTHSVC_CLIENT_ID": CLIENT_ID,
                "AUTHSVC_CLIENT_SECRET": secret,
                "ISSUER": ISSUER,
                "AUDIENCE": "payments",
                # not read by the merchant: where the jwks_uri test points it
                "TEST_JWKS_URL": auth.http_url + "/.well-known/jwks.json",
            },
            secret,
            gateway,
        )


@pytest.fixture
def services(running_services: tuple[dict[str, str], str, Command]) -> Iterator[tuple[dict[str, str], str]]:
    """The merchant's env and its secret; after the test, the PaymentService must still run."""
    env, secret, gateway = running_services
    yield env, secret
    assert gateway.proc.poll() is None, "the PaymentService died during the test:\n" + gateway.output()


def test_merchant_flow(node_client: str, services: tuple[dict[str, str], str]) -> None:
    env, secret = services
    out = subprocess.run(
        [node_client, "merchant.js"],
        cwd=NODE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert out.returncode == 0, f"merchant.js exited {out.returncode}:\n{out.stdout}\n{out.stderr}"
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert summary["ok"] is True
    assert summary["replayed_same"] is True
    assert summary["refunded_amount"] == "10.00"
    assert summary["verified_sub"] == CLIENT_ID
    assert str(summary["transaction_id"]).startswith("txn_")
    assert secret not in out.stdout and secret not in out.stderr


def test_merchant_verifies_with_jose_create_remote_jwkset(
    node_client: str, services: tuple[dict[str, str], str]
) -> None:
    """The token verifies against the TokenService's jwks_uri, fetched by jose itself."""
    env, _ = services
    out = subprocess.run(
        [node_client, "merchant.js"],
        cwd=NODE_DIR,
        env={**env, "AUTHSVC_JWKS_URL": env["TEST_JWKS_URL"]},
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert out.returncode == 0, f"merchant.js exited {out.returncode}:\n{out.stdout}\n{out.stderr}"
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert summary["ok"] is True and summary["verified_with"] == "jwks_uri"
    assert summary["verified_sub"] == CLIENT_ID


def test_merchant_refuses_a_plaintext_jwks_url_to_another_host(node_client: str) -> None:
    out = subprocess.run(
        [node_client, "merchant.js", "--jwks-url", "http://keys.example.com/.well-known/jwks.json"],
        cwd=NODE_DIR,
        env={
            "PATH": os.environ.get("PATH", ""),
            "AUTHSVC_CLIENT_ID": CLIENT_ID,
            "AUTHSVC_CLIENT_SECRET": "x",
        },
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert out.returncode != 0
    assert "refusing to fetch signing keys" in out.stderr


def test_wrong_secret_fails_clearly(node_client: str, services: tuple[dict[str, str], str]) -> None:
    env, secret = services
    wrong = "authsvc_cs_wrong"
    out = subprocess.run(
        [node_client, "merchant.js"],
        cwd=NODE_DIR,
        env={**env, "AUTHSVC_CLIENT_SECRET": wrong},
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert out.returncode == 1
    assert "IssueToken failed: UNAUTHENTICATED INVALID_CLIENT" in out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1])["ok"] is False
    assert secret not in out.stdout + out.stderr and wrong not in out.stdout + out.stderr


def test_token_cache_unit_tests(node_client: str) -> None:
    """clients/node/test/*.test.js (`npm test`): refresh window, one fetch in flight, no cached errors,
    compare-and-invalidate, and TLS for every host but loopback and unix:."""
    out = subprocess.run(
        [node_client, "--test", "test/"],
        cwd=NODE_DIR,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, f"node --test failed:\n{out.stdout}\n{out.stderr}"


def test_merchant_flow_over_tls(node_client: str, tmp_path: Path) -> None:
    """Both services behind TLS; the merchant trusts them through --ca (AUTHSVC_CA)."""
    cert, key = self_signed(tmp_path)
    env = {
        **os.environ,
        "AUTHSVC_DATA_DIR": str(tmp_path / "auth"),
        "AUTHSVC_KEK": KEK,
        "AUTHSVC_ISSUER": ISSUER,
        "AUTHSVC_TLS_CERT": str(cert),
        "AUTHSVC_TLS_KEY": str(key),
        "PAYMENTS_ISSUER": ISSUER,
        "PAYMENTS_DATA_DIR": str(tmp_path / "pay"),
        "PAYMENTS_TLS_CERT": str(cert),
        "PAYMENTS_TLS_KEY": str(key),
        "PAYMENTS_TOKEN_SERVICE_CA": str(cert),
    }
    secret = create_client(env, CLIENT_ID, SCOPES)
    with token_and_payment_services(env) as (auth, gateway):
        out = subprocess.run(
            [node_client, "merchant.js", "--ca", str(cert)],
            cwd=NODE_DIR,
            env={
                "PATH": os.environ.get("PATH", ""),
                "HOME": os.environ.get("HOME", str(Path.home())),
                "AUTHSVC_TARGET": f"localhost:{auth.port}",
                "PAYMENTS_TARGET": f"localhost:{gateway.port}",
                "AUTHSVC_CLIENT_ID": CLIENT_ID,
                "AUTHSVC_CLIENT_SECRET": secret,
                "ISSUER": ISSUER,
                "AUDIENCE": "payments",
            },
            capture_output=True,
            text=True,
            timeout=90,
            check=False,
        )
    assert out.returncode == 0, f"merchant.js exited {out.returncode}:\n{out.stdout}\n{out.stderr}"
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert summary["ok"] is True and summary["refunded_amount"] == "10.00"
    assert secret not in out.stdout + out.stderr
