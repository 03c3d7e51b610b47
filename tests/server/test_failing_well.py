"""Start-up mistakes of ``authsvc``, run as an operator would: one line saying what to do, a
non-zero exit, never a traceback (issue 12, "failing well")."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

import authsvc
from tests.conftest import KEK
from tests.helpers import Command


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """A fresh home: no AUTHSVC_* variable from the caller leaks in."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("AUTHSVC_")}
    return {**base, "HOME": str(tmp_path), "XDG_DATA_HOME": str(tmp_path / "xdg"), "AUTHSVC_KEK": KEK}


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A port held by a listening socket of this test."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


def authsvc_cmd(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "authsvc.cli", *args],
        check=False,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def refused(result: subprocess.CompletedProcess[str], *expected: str) -> str:
    """The one error line of a refused command; asserts its shape and that it contains ``expected``.
    Log lines of the start-up before the mistake may come first; the error is the last line."""
    assert result.returncode != 0, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("authsvc")]
    assert len(errors) == 1 and result.stderr.splitlines()[-1] == errors[0], result.stderr
    assert " error: " in errors[0]
    for text in expected:
        assert text in errors[0], errors[0]
    return errors[0]


def test_version(env: dict[str, str]) -> None:
    result = authsvc_cmd(env, "--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"authsvc {authsvc.__version__}"


def test_grpc_port_in_use(env: dict[str, str], busy_port: int) -> None:
    refused(
        authsvc_cmd(env, "serve", "--listen", f"127.0.0.1:{busy_port}"), f"127.0.0.1:{busy_port}", "--listen"
    )


def test_http_port_in_use(env: dict[str, str], busy_port: int) -> None:
    result = authsvc_cmd(env, "serve", "--listen", "127.0.0.1:0", "--http-listen", f"127.0.0.1:{busy_port}")
    refused(result, str(busy_port), "--http-listen")


@pytest.mark.parametrize(
    ("var", "value", "flag"),
    [
        ("AUTHSVC_WORKERS", "abc", "--workers"),
        ("AUTHSVC_KEY_PUBLISH_DELAY", "soon", "--key-publish-delay"),
        ("AUTHSVC_KEY_ROTATION_PERIOD", "1d", "--key-rotation-period"),
        ("AUTHSVC_JWKS_MAX_AGE", "x", "--jwks-max-age"),
        ("AUTHSVC_CLIENT_CACHE_TTL", "two", "--client-cache-ttl"),
        ("AUTHSVC_GRACE_PERIOD", "5s", "--grace-period"),
        ("AUTHSVC_MAX_CONNECTIONS", "many", "--max-connections"),
    ],
)
def test_bad_environment_value_is_the_flags_usage_error(
    env: dict[str, str], var: str, value: str, flag: str
) -> None:
    from_env = authsvc_cmd({**env, var: value}, "serve")
    from_flag = authsvc_cmd(env, "serve", flag, value)
    line = refused(from_env, flag, repr(value))
    assert from_env.returncode == from_flag.returncode == 2
    assert line == refused(from_flag)  # the same message whichever way the value came


def test_no_flag_abbreviations(env: dict[str, str]) -> None:
    # --client-cache is not --client-cache-ttl (nor --client-ca): an unknown flag, refused
    refused(authsvc_cmd(env, "serve", "--client-cache", "2"), "unrecognized arguments: --client-cache")
    refused(authsvc_cmd(env, "clients", "create", "--scop", "a", "--audience", "b"), "--scop")


def test_positional_beginning_with_a_dash(env: dict[str, str], tmp_path: Path) -> None:
    # the kid reaches the command (which knows no such key) instead of being taken for a flag
    authsvc_cmd(env, "keys", "rotate", "--data-dir", str(tmp_path / "d"))  # a deployment to look in
    line = refused(authsvc_cmd(env, "keys", "revoke", "-abc", "--data-dir", str(tmp_path / "d")), "'-abc'")
    assert "required" not in line
    line = refused(authsvc_cmd(env, "clients", "show", "-x1", "--data-dir", str(tmp_path / "d")), "client_id")
    assert "required" not in line


def test_data_dir_that_is_a_file(env: dict[str, str], tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    refused(authsvc_cmd(env, "serve", "--data-dir", str(tmp_path / "file")), "--data-dir", "not a directory")
    refused(
        authsvc_cmd(env, "serve", "--data-dir", str(tmp_path / "file" / "sub")), "cannot create --data-dir"
    )
    refused(authsvc_cmd({**env, "AUTHSVC_DATA_DIR": str(tmp_path / "file")}, "clients", "create",
                        "--scope", "a", "--audience", "b"), "--data-dir")  # fmt: skip


NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


# root without the capabilities that let it write (and read) past file modes: still uid 0, so it
# reads a checkout only root may enter, where user nobody could not
NO_DAC_OVERRIDE = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search"]


def _runs_as(prefix: list[str]) -> bool:
    """Whether ``prefix`` can start the interpreter and import the package."""
    if shutil.which("setpriv") is None:
        return False
    probe = subprocess.run(
        [*prefix, sys.executable, "-c", "import authsvc.cli"], capture_output=True, cwd="/", check=False
    )
    return probe.returncode == 0


def _unprivileged_prefix() -> list[str]:
    """Root writes into any directory, so as root the command runs as nobody, which needs to read
    the interpreter and the package (not in a checkout nobody may enter, such as a 0700 temporary
    clone), or else as root without CAP_DAC_OVERRIDE."""
    if os.geteuid() != 0:
        return []
    for prefix in (NOBODY, NO_DAC_OVERRIDE):
        if _runs_as(prefix):
            return prefix
    message = "running as root, and neither user nobody nor root without CAP_DAC_OVERRIDE can run authsvc"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def test_data_dir_not_writable(env: dict[str, str]) -> None:
    prefix = _unprivileged_prefix()
    home = Path(tempfile.mkdtemp(prefix="authsvc-locked-"))
    try:
        home.chmod(0o755)  # nobody may enter it, not write in it
        locked = home / "locked"
        locked.mkdir(mode=0o500)
        result = subprocess.run(
            [*prefix, sys.executable, "-m", "authsvc.cli", "serve", "--data-dir", str(locked)],
            env={**env, "HOME": str(home), "XDG_DATA_HOME": str(home / "xdg")},
            capture_output=True,
            text=True,
            timeout=60,
            cwd=home,
            check=False,
        )
        refused(result, "not writable")
    finally:
        shutil.rmtree(home, ignore_errors=True)


def test_unreadable_tls_and_kek_files(env: dict[str, str], tmp_path: Path) -> None:
    missing = str(tmp_path / "missing.pem")
    (tmp_path / "key.pem").write_text("")
    line = refused(authsvc_cmd(env, "serve", "--tls-cert", missing, "--tls-key", str(tmp_path / "key.pem")))
    assert "--tls-cert" in line and missing in line
    no_kek = {k: v for k, v in env.items() if k != "AUTHSVC_KEK"}
    refused(authsvc_cmd(no_kek, "serve", "--kek-file", missing), "--kek-file", missing)
    refused(authsvc_cmd({**no_kek, "AUTHSVC_KEK_FILE": missing}, "clients", "list"), "--kek-file")
    refused(authsvc_cmd(env, "serve", "--tls-cert", str(tmp_path), "--tls-key", str(tmp_path)), "directory")


def test_empty_database_url(env: dict[str, str]) -> None:
    refused(authsvc_cmd(env, "serve", "--database-url", ""), "--database-url is empty")
    refused(authsvc_cmd(env, "clients", "list", "--database-url", " "), "--database-url is empty")


def test_read_only_command_creates_no_data_dir(env: dict[str, str], tmp_path: Path) -> None:
    data = tmp_path / "never"
    for args in (["clients", "list"], ["clients", "show", "c1"], ["keys", "list"]):
        refused(authsvc_cmd(env, *args, "--data-dir", str(data)), str(data), "--data-dir")
        # the development KEK is not generated either
        no_kek = {k: v for k, v in env.items() if k != "AUTHSVC_KEK"}
        refused(authsvc_cmd(no_kek, *args, "--data-dir", str(data)), str(data))
    assert not data.exists()
    assert not (tmp_path / "xdg").exists()


def test_bad_listen_address(env: dict[str, str]) -> None:
    refused(authsvc_cmd(env, "serve", "--listen", "50051"), "--listen", "HOST:PORT")
    refused(authsvc_cmd(env, "serve", "--http-listen", "localhost"), "--http-listen")
    refused(authsvc_cmd(env, "serve", "--listen", "unix:"), "unix:PATH")


def test_listen_on_a_unix_socket(env: dict[str, str], tmp_path: Path) -> None:
    import grpc

    from authsvc.v1 import token_pb2, token_pb2_grpc

    sock = tmp_path / "authsvc.sock"
    cmd = Command([sys.executable, "-m", "authsvc.cli", "serve", "--listen", f"unix:{sock}",
                   "--http-listen", "127.0.0.1:0"], env)  # fmt: skip
    try:
        with grpc.insecure_channel(f"unix:{sock}") as channel:
            jwks = token_pb2_grpc.TokenServiceStub(channel).GetJwks(token_pb2.GetJwksRequest(), timeout=10)
        assert '"keys"' in jwks.jwks_json
    finally:
        assert cmd.terminate() == 0
