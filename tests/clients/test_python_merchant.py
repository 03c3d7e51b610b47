"""clients/python/merchant.py, run as a newcomer would, against the real services (plaintext on
loopback, and TLS); and its rule that any other host gets TLS."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import KEK
from tests.helpers import create_client, token_and_payment_services
from tests.server.test_serve import self_signed

ROOT = Path(__file__).resolve().parents[2]


def test_python_merchant_pays_reads_and_refunds(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "AUTHSVC_DATA_DIR": str(tmp_path / "auth"),
        "AUTHSVC_KEK": KEK,
        "PAYMENTS_DATA_DIR": str(tmp_path / "pay"),
    }
    secret = create_client(env, "merchant-py", "payments:read payments:write payments:refund")
    with token_and_payment_services(env) as (auth, gateway):
        secret_file = tmp_path / "secret"
        secret_file.write_text(secret + "\n")
        run = subprocess.run(
            [sys.executable, str(ROOT / "clients" / "python" / "merchant.py")],
            env={
                **env,
                "AUTHSVC_TARGET": auth.target,
                "PAYMENTS_TARGET": gateway.target,
                "AUTHSVC_CLIENT_ID": "merchant-py",
                "AUTHSVC_CLIENT_SECRET_FILE": str(secret_file),
            },
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert run.returncode == 0, run.stderr
        summary = json.loads(run.stdout.strip().splitlines()[-1])
        assert summary["ok"] and summary["replayed_same"]
        assert summary["refunded_amount"] == "10.00"
        assert summary["token_fetches"] == 1
        assert secret not in run.stdout + run.stderr


def test_python_merchant_without_secret_says_how_to_give_one() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUTHSVC_")}
    run = subprocess.run(
        [sys.executable, str(ROOT / "clients" / "python" / "merchant.py"), "--client-id", "x"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode == 2
    assert "AUTHSVC_CLIENT_SECRET" in run.stderr


def _merchant_module() -> Any:
    spec = importlib.util.spec_from_file_location("merchant", ROOT / "clients" / "python" / "merchant.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


TRANSPORT = [
    ("127.0.0.1:50051", False, False),
    ("localhost:50051", False, False),
    ("[::1]:50051", False, False),
    ("unix:/run/authsvc.sock", False, False),
    ("127.0.0.1:50051", True, True),
    ("payments.example.com:443", False, True),
    ("dns:///payments.example.com:443", False, True),
    ("10.0.0.7:50052", False, True),
    ("ipv4:127.0.0.1:1,10.0.0.1:1", False, True),
    ("no-port-given", False, True),
]


@pytest.mark.parametrize(
    ("target", "with_ca", "tls"), TRANSPORT, ids=[f"{t}-ca" if c else t for t, c, _ in TRANSPORT]
)
def test_python_merchant_uses_tls_for_any_host_but_loopback(target: str, with_ca: bool, tls: bool) -> None:
    assert _merchant_module().uses_tls(target, b"CA" if with_ca else None) is tls


def test_python_merchant_over_tls(tmp_path: Path) -> None:
    """Both services behind TLS; the merchant trusts them through --ca (AUTHSVC_CA)."""
    cert, key = self_signed(tmp_path)
    env = {
        **os.environ,
        "AUTHSVC_DATA_DIR": str(tmp_path / "auth"),
        "AUTHSVC_KEK": KEK,
        "AUTHSVC_TLS_CERT": str(cert),
        "AUTHSVC_TLS_KEY": str(key),
        "PAYMENTS_DATA_DIR": str(tmp_path / "pay"),
        "PAYMENTS_TLS_CERT": str(cert),
        "PAYMENTS_TLS_KEY": str(key),
        "PAYMENTS_TOKEN_SERVICE_CA": str(cert),
    }
    secret = create_client(env, "merchant-tls", "payments:read payments:write payments:refund")
    with token_and_payment_services(env) as (auth, gateway):
        run = subprocess.run(
            [sys.executable, str(ROOT / "clients" / "python" / "merchant.py"), "--ca", str(cert)],
            env={
                **env,
                "AUTHSVC_TARGET": f"localhost:{auth.port}",
                "PAYMENTS_TARGET": f"localhost:{gateway.port}",
                "AUTHSVC_CLIENT_ID": "merchant-tls",
                "AUTHSVC_CLIENT_SECRET": secret,
            },
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert run.returncode == 0, run.stderr + gateway.output()
        summary = json.loads(run.stdout.strip().splitlines()[-1])
        assert summary["ok"] and summary["refunded_amount"] == "10.00"
        assert secret not in run.stdout + run.stderr
