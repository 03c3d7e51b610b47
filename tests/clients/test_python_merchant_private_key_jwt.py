"""clients/python/merchant.py as a private_key_jwt client (``--private-key``, ``--key-id``,
``--signing-alg``, ``--issuer`` and their variables) against a real ``authsvc serve`` and
``payments-svc serve``: it pays with no secret anywhere, a key that was not registered gets no
token, and a confused configuration is one line and exit 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.assertions import ClientKeyPair, ec_key, jwks_json, rsa_key
from tests.conftest import KEK
from tests.helpers import authsvc_cli, token_and_payment_services

ROOT = Path(__file__).resolve().parents[2]
MERCHANT = str(ROOT / "clients" / "python" / "merchant.py")
SCOPES = "payments:read payments:write payments:refund"
EC = ec_key("merchant-ec")
RSA = rsa_key("merchant-rsa")
STRANGER = ec_key("merchant-stranger")


def _base_env(tmp_path: Path) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("AUTHSVC_", "PAYMENTS_", "MERCHANT_"))}
    return {
        **clean,
        "AUTHSVC_DATA_DIR": str(tmp_path / "auth"),
        "AUTHSVC_KEK": KEK,
        "PAYMENTS_DATA_DIR": str(tmp_path / "pay"),
    }


def _register(env: dict[str, str], tmp_path: Path, client_id: str, key: ClientKeyPair, *algs: str) -> None:
    jwks = tmp_path / f"{client_id}-jwks.json"
    jwks.write_text(jwks_json(key))
    signing = [a for alg in algs for a in ("--signing-alg", alg)]
    authsvc_cli(
        "clients", "create", "--client-id", client_id, "--scope", SCOPES, "--audience", "payments",
        "--auth-method", "private_key_jwt", "--jwks-file", str(jwks), *signing, env=env,
    )  # fmt: skip


def _merchant(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, MERCHANT, *args], env=env, capture_output=True, text=True, timeout=60, check=False
    )


def test_python_merchant_pays_with_private_key_jwt(tmp_path: Path) -> None:
    env = _base_env(tmp_path)
    _register(env, tmp_path, "merchant-ec", EC, "ES256")
    _register(env, tmp_path, "merchant-ps", RSA, "PS256")
    ec_pem, rsa_pem = EC.write_pem(tmp_path / "ec.pem"), RSA.write_pem(tmp_path / "rsa.pem")
    stranger_pem = STRANGER.write_pem(tmp_path / "stranger.pem")
    with token_and_payment_services(env) as (auth, gateway):
        targets = {"AUTHSVC_TARGET": auth.target, "PAYMENTS_TARGET": gateway.target}
        # by the environment, as a deployment sets it
        by_env = _merchant(
            {**env, **targets, "AUTHSVC_CLIENT_ID": "merchant-ec", "AUTHSVC_PRIVATE_KEY_FILE": str(ec_pem),
             "AUTHSVC_KEY_ID": EC.kid, "AUTHSVC_SIGNING_ALG": "ES256"},
        )  # fmt: skip
        # by flags, with an RSA key signing PS256 and the issuer named
        by_flags = _merchant(
            {**env, **targets},
            "--client-id", "merchant-ps", "--private-key", str(rsa_pem), "--key-id", RSA.kid,
            "--signing-alg", "PS256", "--issuer", "https://authsvc.local",
        )  # fmt: skip
        # a key the client was not registered with gets no token
        stranger = _merchant(
            {**env, **targets},
            "--client-id", "merchant-ec", "--private-key", str(stranger_pem), "--key-id", EC.kid,
        )  # fmt: skip
        server_log = auth.output()
    for run in (by_env, by_flags):
        assert run.returncode == 0, run.stderr + gateway.output()
        summary = json.loads(run.stdout.strip().splitlines()[-1])
        assert summary["ok"] and summary["replayed_same"] and summary["refunded_amount"] == "10.00"
        assert summary["token_fetches"] == 1
    assert stranger.returncode == 1
    assert "could not get a token" in stranger.stderr and "INVALID_CLIENT" in stranger.stderr
    assert "Traceback" not in stranger.stderr
    issued = [line for line in server_log.splitlines() if "token.issued" in line]
    assert any("client_id='merchant-ec'" in line and "private_key_jwt" in line for line in issued), issued
    assert any("client_id='merchant-ps'" in line for line in issued), issued
    everything = "".join(r.stdout + r.stderr for r in (by_env, by_flags, stranger)) + server_log
    for pem in (ec_pem, rsa_pem, stranger_pem):
        body = pem.read_text().splitlines()[1]  # a line of the private key itself
        assert body not in everything


@pytest.mark.parametrize(
    ("extra_env", "args", "said"),
    [
        ({"AUTHSVC_CLIENT_SECRET": "authsvc_cs_x"}, ["--private-key", "{pem}"], "not both"),
        ({}, ["--key-id", "k1"], "go with --private-key"),
        ({}, ["--private-key", "{missing}"], "cannot read"),
        ({}, ["--private-key", "{pem}", "--signing-alg", "RS256"], "not 'RS256'"),
        ({}, ["--private-key", "{jwks}"], "is not a PEM private key"),
        ({}, [], "AUTHSVC_CLIENT_SECRET_FILE, or give a private_key_jwt client's key with --private-key"),
    ],
    ids=["secret-and-key", "kid-without-key", "missing-file", "alg-for-another-key", "not-a-pem", "neither"],
)
def test_python_merchant_private_key_jwt_misconfigurations_are_one_line(
    tmp_path: Path, extra_env: dict[str, str], args: list[str], said: str
) -> None:
    pem = EC.write_pem(tmp_path / "ec.pem")
    jwks = tmp_path / "jwks.json"
    jwks.write_text(jwks_json(EC))
    files = {"{pem}": str(pem), "{missing}": str(tmp_path / "nope.pem"), "{jwks}": str(jwks)}
    run = _merchant(
        {**_base_env(tmp_path), **extra_env, "MERCHANT_WAIT": "0"},
        "--client-id", "merchant-ec", *[files.get(a, a) for a in args],
    )  # fmt: skip
    assert run.returncode == 2, run.stderr
    assert said in run.stderr and "Traceback" not in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1
    assert pem.read_text().splitlines()[1] not in run.stderr
