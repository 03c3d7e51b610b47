"""clients/python/merchant.py, run as a newcomer would, against the real services."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import KEK
from tests.helpers import create_client, token_and_payment_services

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
