"""Start-up mistakes of ``payments-svc``: one line saying what to do, a non-zero exit, never a
traceback (issue 12, "failing well")."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import authsvc


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("PAYMENTS_")}
    return {**base, "HOME": str(tmp_path), "XDG_DATA_HOME": str(tmp_path / "xdg")}


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


def payments(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "payments_svc.cli", *args],
        check=False,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def refused(result: subprocess.CompletedProcess[str], *expected: str) -> str:
    """The one error line (the last line of stderr, after any start-up log lines)."""
    assert result.returncode != 0, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("payments-svc")]
    assert len(errors) == 1 and result.stderr.splitlines()[-1] == errors[0], result.stderr
    for text in (" error: ", *expected):
        assert text in errors[0], errors[0]
    return errors[0]


def test_version(env: dict[str, str]) -> None:
    result = payments(env, "--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"payments-svc {authsvc.__version__}"


def test_ports_in_use(env: dict[str, str], busy_port: int) -> None:
    refused(
        payments(env, "serve", "--listen", f"127.0.0.1:{busy_port}"), f"127.0.0.1:{busy_port}", "--listen"
    )
    result = payments(env, "serve", "--listen", "127.0.0.1:0", "--http-listen", f"127.0.0.1:{busy_port}")
    refused(result, str(busy_port), "--http-listen")


def test_bad_environment_value_names_the_flag(env: dict[str, str]) -> None:
    line = refused(payments({**env, "PAYMENTS_LEEWAY": "lots"}, "serve"), "--leeway", "'lots'")
    assert line == refused(payments(env, "serve", "--leeway", "lots"))


def test_no_flag_abbreviations(env: dict[str, str]) -> None:
    refused(payments(env, "serve", "--token-service-c", "ca.pem"), "unrecognized arguments")


def test_data_dir_that_is_a_file(env: dict[str, str], tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    refused(payments(env, "serve", "--data-dir", str(tmp_path / "file")), "--data-dir", "not a directory")
    refused(payments({**env, "PAYMENTS_DATA_DIR": str(tmp_path / "file" / "sub")}, "serve"), "--data-dir")


def test_unreadable_tls_files(env: dict[str, str], tmp_path: Path) -> None:
    missing = str(tmp_path / "missing.pem")
    refused(payments(env, "serve", "--tls-cert", missing, "--tls-key", missing), "--tls-cert", missing)
    refused(payments(env, "serve", "--token-service-ca", missing), "--token-service-ca")


def test_empty_database_url(env: dict[str, str]) -> None:
    refused(payments(env, "serve", "--database-url", ""), "--database-url is empty")


def test_bad_listen_address(env: dict[str, str]) -> None:
    refused(payments(env, "serve", "--listen", "nowhere"), "--listen", "HOST:PORT")
    refused(payments(env, "serve", "--http-listen", "unix:"), "--http-listen", "unix:PATH")
