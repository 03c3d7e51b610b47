"""clients/python/merchant.py, run as a newcomer would, against the real services (plaintext on
loopback, and TLS); its README's copy-paste sequence, as written, every time; and its rule that
any other host gets TLS."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import KEK
from tests.helpers import create_client, free_port, token_and_payment_services
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


def readme_block() -> str:
    """The shell block of clients/python/README.md's "Run it against local services"."""
    text = (ROOT / "clients" / "python" / "README.md").read_text()
    section = text.split("## Run it against local services", 1)[1].split("\n## ", 1)[0]
    match = re.search(r"```sh\n(.*?)```", section, re.S)
    assert match is not None, "no sh block in the README's run section"
    return match.group(1)


def stop_group(pgid: int) -> None:
    """Wait (bounded) for every process of the group to end after the block's own kill, then
    SIGKILL whatever is left: no service outlives the test."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)


def test_the_readme_sequence_works_every_time(tmp_path: Path) -> None:
    """The README's block, run literally by bash from a directory that has .venv and clients as
    the repository root has them, four times at once, each run starting its services and its
    merchant at once: every run must pay (the merchant waits for both to serve), and the four
    together load the machine as a busy laptop would. Free ports come through the variables
    the README names; nothing else is changed."""
    script = readme_block()
    assert "merchant.py" in script and "serve &" in script
    root = tmp_path / "root"
    root.mkdir()
    (root / ".venv").symlink_to(Path(sys.prefix))
    (root / "clients").symlink_to(ROOT / "clients")
    assert (root / ".venv" / "bin" / "authsvc").exists(), "run the tests from the project's venv"
    base = {k: v for k, v in os.environ.items() if not k.startswith(("AUTHSVC_", "PAYMENTS_", "MERCHANT_"))}
    runs: list[subprocess.Popen[str]] = []
    try:
        for run in range(4):
            auth_port, payments_port = free_port(), free_port()
            temp = tmp_path / f"run{run}"
            temp.mkdir()
            env = {
                **base,
                "TMPDIR": str(temp),  # where the block's mktemp -d puts the data dirs
                "AUTHSVC_LISTEN": f"127.0.0.1:{auth_port}",
                "PAYMENTS_LISTEN": f"127.0.0.1:{payments_port}",
                "PAYMENTS_TOKEN_SERVICE": f"127.0.0.1:{auth_port}",
                "AUTHSVC_TARGET": f"127.0.0.1:{auth_port}",
                "PAYMENTS_TARGET": f"127.0.0.1:{payments_port}",
            }
            runs.append(
                subprocess.Popen(
                    ["bash", "-c", script],
                    cwd=root,
                    env=env,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                    start_new_session=True,  # its own process group: its services are found and stopped
                )
            )
        for run, proc in enumerate(runs):
            out, err = proc.communicate(timeout=120)
            lines = out.strip().splitlines()
            assert lines, f"run {run}: no output\n{err}"
            summary = json.loads(lines[-1])
            assert summary["ok"] is True, f"run {run}:\n{err}"
            assert summary["token_fetches"] == 1
            assert "authsvc_cs_" not in out + err, "the secret reached the output"
    finally:
        for proc in runs:
            if proc.poll() is None:
                proc.kill()
        for proc in runs:
            stop_group(proc.pid)


def test_python_merchant_gives_up_waiting_with_one_line(tmp_path: Path) -> None:
    """Nothing serves: after --wait it names the service it waited for and exits 1, no traceback."""
    port = free_port()
    run = subprocess.run(
        [sys.executable, str(ROOT / "clients" / "python" / "merchant.py")],
        env={
            **os.environ,
            "AUTHSVC_TARGET": f"127.0.0.1:{port}",
            "AUTHSVC_CLIENT_ID": "merchant-py",
            "AUTHSVC_CLIENT_SECRET": "not-a-real-secret",
            "MERCHANT_WAIT": "1",
        },
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode == 1
    assert f"authsvc.v1.TokenService at 127.0.0.1:{port} is not serving after 1s" in run.stderr
    assert "Traceback" not in run.stderr
