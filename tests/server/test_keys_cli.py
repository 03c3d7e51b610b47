"""``authsvc keys …`` and the key-related flags of ``authsvc serve``, run as the operator runs them:
``python -m authsvc.cli`` in a subprocess, the KEK in ``AUTHSVC_KEK``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from authsvc.authority import Authority, open_authority
from authsvc.core.keys import rfc7638_thumbprint
from authsvc.core.ports import SystemClock, SystemRandom
from tests.keypool import rsa_key as pooled_rsa_key

KEK = "11" * 32
NEW_KEK = "22" * 32


def cli_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUTHSVC_")}
    env["AUTHSVC_KEK"] = KEK
    env.update(extra)
    return env


def authsvc(*args: str, env: dict[str, str], check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "authsvc.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=check,
    )


def keys(data_dir: Path, *args: str, env: dict[str, str] | None = None, check: bool = True) -> str:
    """Run ``authsvc keys ARGS --data-dir D`` and return its standard output."""
    return authsvc("keys", *args, "--data-dir", str(data_dir), env=env or cli_env(), check=check).stdout


def keys_result(
    data_dir: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Like :func:`keys`, for a command expected to fail."""
    return authsvc("keys", *args, "--data-dir", str(data_dir), env=env or cli_env(), check=False)


def bootstrap(data_dir: Path, *, with_next: bool = False) -> list[str]:
    """Give the deployment an active key (as the first ``serve`` would), and a next key."""
    authority: Authority = open_authority(
        data_dir, kek=KEK, kek_file=None, clock=SystemClock(), random=SystemRandom()
    )
    try:
        kids = [authority.keys.ensure_signing_key().kid]
        if with_next:
            kids.append(authority.keys.rotate().kid)
        return kids
    finally:
        authority.store.close()


def test_rotate_then_list_shows_the_active_and_the_next_key(tmp_path: Path) -> None:
    (active,) = bootstrap(tmp_path)
    rotated = json.loads(keys(tmp_path, "rotate", "-o", "json"))
    assert isinstance(rotated, dict)
    assert (rotated["state"], rotated["origin"]) == ("next", "generated")
    assert rotated["kid"] != active

    listed = json.loads(keys(tmp_path, "list", "-o", "json"))
    assert {k["kid"]: k["state"] for k in listed} == {active: "active", rotated["kid"]: "next"}

    table = keys(tmp_path, "list").splitlines()
    assert table[0].split()[:3] == ["KID", "STATE", "ORIGIN"]
    assert {row.split()[0]: row.split()[1] for row in table[1:]} == {active: "active", rotated["kid"]: "next"}


@pytest.mark.parametrize("encrypted", [False, True], ids=["plain-pkcs8", "encrypted-with-password-file"])
def test_import_a_pem_as_the_next_key(tmp_path: Path, encrypted: bool) -> None:
    key = pooled_rsa_key()
    password = b"s3cret passphrase"
    encryption = (
        serialization.BestAvailableEncryption(password) if encrypted else serialization.NoEncryption()
    )
    pem = tmp_path / "key.pem"
    pem.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)
    )
    extra: list[str] = []
    if encrypted:
        pw = tmp_path / "password"
        pw.write_bytes(password + b"\n")  # as `echo` writes it: the newline is not part of it
        extra = ["--password-file", str(pw)]

    data = tmp_path / "data"
    imported = json.loads(keys(data, "import", "--pem", str(pem), *extra, "-o", "json"))
    assert (imported["state"], imported["origin"]) == ("next", "imported")
    assert imported["kid"] == rfc7638_thumbprint(key.public_key())

    again = keys_result(data, "import", "--pem", str(pem), *extra)
    assert again.returncode == 1
    assert again.stderr.startswith("authsvc: error:") and "known already" in again.stderr


def test_revoke_then_revoke_again_fails(tmp_path: Path) -> None:
    active, pending = bootstrap(tmp_path, with_next=True)
    revoked = json.loads(keys(tmp_path, "revoke", pending, "-o", "json"))
    assert (revoked["kid"], revoked["state"]) == (pending, "revoked")
    assert revoked["revoked_at"] is not None

    again = keys_result(tmp_path, "revoke", pending)
    assert again.returncode == 1
    assert again.stdout == ""
    assert again.stderr.startswith("authsvc: error:") and "Traceback" not in again.stderr

    listed = json.loads(keys(tmp_path, "list", "-o", "json"))
    assert {k["kid"]: k["state"] for k in listed} == {active: "active", pending: "revoked"}


@pytest.mark.parametrize("how", ["file", "env"], ids=["new-kek-file", "AUTHSVC_NEW_KEK"])
def test_rewrap_moves_the_deployment_to_the_new_kek(tmp_path: Path, how: str) -> None:
    data = tmp_path / "data"
    kids = bootstrap(data, with_next=True)
    if how == "file":
        kek_file = tmp_path / "new.kek"
        kek_file.write_text(NEW_KEK + "\n")
        kek_file.chmod(0o600)
        out = keys(data, "rewrap", "--new-kek-file", str(kek_file), "-o", "json")
    else:
        out = keys(data, "rewrap", "-o", "json", env=cli_env(AUTHSVC_NEW_KEK=NEW_KEK))
    result = json.loads(out)
    assert result["rewrapped"] == 3  # two private keys and the secret-hashing pepper

    old = keys_result(data, "list")
    assert old.returncode == 1
    assert "key-encryption key" in old.stderr and "Traceback" not in old.stderr

    listed = json.loads(keys(data, "list", "-o", "json", env=cli_env(AUTHSVC_KEK=NEW_KEK)))
    assert {k["kid"]: k["state"] for k in listed} == {kids[0]: "active", kids[1]: "next"}
    assert {k["kek_id"] for k in listed} == {result["kek_id"]}


def test_rewrap_without_a_new_kek_is_a_clear_error(tmp_path: Path) -> None:
    bootstrap(tmp_path)
    out = keys_result(tmp_path, "rewrap")
    assert out.returncode == 1
    assert "--new-kek-file" in out.stderr and "AUTHSVC_NEW_KEK" in out.stderr
    assert "Traceback" not in out.stderr
    keys(tmp_path, "list")  # nothing changed: the old KEK still opens the deployment


@pytest.mark.parametrize(
    "args",
    [
        ["import", "--pem", "{missing}"],
        ["import", "--pem", "{pem}", "--password-file", "{missing}"],
        ["rewrap", "--new-kek-file", "{missing}"],
    ],
    ids=["missing-pem", "missing-password-file", "missing-new-kek-file"],
)
def test_a_missing_input_file_is_a_one_line_error(tmp_path: Path, args: list[str]) -> None:
    pem = tmp_path / "key.pem"
    pem.write_text("-----BEGIN PRIVATE KEY-----\n-----END PRIVATE KEY-----\n")
    argv = [a.format(missing=tmp_path / "no-such-file", pem=pem) for a in args]
    out = keys_result(tmp_path / "data", *argv)
    assert out.returncode == 1
    assert out.stderr.startswith("authsvc: error:"), out.stderr
    assert "Traceback" not in out.stderr


def test_serve_help_lists_the_key_flags() -> None:
    out = authsvc("serve", "--help", env=cli_env()).stdout
    for flag in ("--key-publish-delay", "--key-rotation-period", "--jwks-max-age"):
        assert flag in out


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--key-publish-delay", "10", "--jwks-max-age", "60"], "--key-publish-delay"),
        (["--key-publish-delay", "120", "--key-rotation-period", "120"], "--key-rotation-period"),
        (["--jwks-max-age", "0"], "max age"),
    ],
    ids=["delay-below-max-age", "period-not-above-delay", "zero-max-age"],
)
def test_serve_refuses_inconsistent_key_timing(tmp_path: Path, flags: list[str], named: str) -> None:
    out = authsvc(
        "serve",
        "--data-dir",
        str(tmp_path),
        "--listen",
        "127.0.0.1:0",
        *flags,
        env=cli_env(),
        check=False,
    )
    assert out.returncode == 1
    assert out.stderr.startswith("authsvc: error:") and named in out.stderr


def _kek_file(path: Path, key: str) -> Path:
    path.write_text(key + "\n")
    path.chmod(0o600)
    return path


def test_kek_lists_from_a_repeated_flag_from_the_environment_and_rewrap_to_the_first(tmp_path: Path) -> None:
    """The three spellings of a KEK list, then step 2 of the KEK change: ``keys rewrap`` with no
    new KEK moves every row to the list's first key; NEW alone opens the deployment afterwards."""
    data = tmp_path / "data"
    kids = bootstrap(data, with_next=True)
    new_file, old_file = _kek_file(tmp_path / "new.kek", NEW_KEK), _kek_file(tmp_path / "old.kek", KEK)
    no_kek = {k: v for k, v in cli_env().items() if k != "AUTHSVC_KEK"}

    flags = json.loads(
        keys(data, "list", "-o", "json", "--kek-file", str(new_file), "--kek-file", str(old_file), env=no_kek)
    )
    listed = json.loads(
        keys(data, "list", "-o", "json", env={**no_kek, "AUTHSVC_KEK_FILE": f"{new_file},{old_file}"})
    )
    assert {k["kid"] for k in flags} == {k["kid"] for k in listed} == set(kids)

    out = json.loads(keys(data, "rewrap", "-o", "json", env=cli_env(AUTHSVC_KEK=f"{NEW_KEK},{KEK}")))
    assert out["rewrapped"] == 3

    alone = json.loads(keys(data, "list", "-o", "json", "--kek-file", str(new_file), env=no_kek))
    assert {k["kek_id"] for k in alone} == {out["kek_id"]}
    refused = keys_result(data, "list")  # the old KEK alone no longer opens it, and says why
    assert refused.returncode == 1 and out["kek_id"] in refused.stderr and "Traceback" not in refused.stderr


def test_help_says_how_to_give_a_kek_list(tmp_path: Path) -> None:
    for command in (["serve"], ["keys", "rewrap"], ["clients", "list"]):
        text = " ".join(authsvc(*command, "--help", env=cli_env()).stdout.split())
        assert "Repeat it to give a list: the first encrypts" in text
        assert "AUTHSVC_KEK, comma-separated" in text
