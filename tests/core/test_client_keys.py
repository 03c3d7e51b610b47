"""The public keys of private_key_jwt clients: what a JWK Set must be, and how signatures are
checked with them (RFC 7517, RFC 7518 §3.3-3.5)."""

from __future__ import annotations

import base64
import json
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from authsvc.core.client_keys import (
    MAX_JWKS_BYTES,
    PrivateKeyMaterial,
    decoy_key,
    parse_client_jwks,
    validate_client_jwks,
    verify_signature,
)
from authsvc.core.errors import InvalidRequest
from tests.assertions import ClientKeyPair, ec_key, jwks_json, rsa_key


def _set(*entries: dict[str, Any]) -> str:
    return json.dumps({"keys": list(entries)})


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def test_rsa_and_ec_keys_are_registered_in_compact_form() -> None:
    stored = validate_client_jwks(jwks_json(rsa_key(), ec_key("ec-a")), ["RS256", "PS256", "ES256"])
    assert " " not in stored
    assert [k["kid"] for k in json.loads(stored)["keys"]] == ["rsa-1", "ec-a"]


def _rsa_with(**changes: Any) -> dict[str, Any]:
    return {**rsa_key().public_jwk, **changes}


@pytest.mark.parametrize(
    "entry",
    [
        rsa_key("small", bits=1024).public_jwk,
        _rsa_with(e="Aw"),  # e = 3
        rsa_key().private_jwk,
        ec_key().private_jwk,
        {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"},
        {k: v for k, v in rsa_key().public_jwk.items() if k != "kid"},
        _rsa_with(kid=""),
        _rsa_with(use="enc"),
        _rsa_with(key_ops=["encrypt"]),
        _rsa_with(alg="HS256"),
        _rsa_with(alg="ES256"),
        _rsa_with(n="AA" + rsa_key().public_jwk["n"]),  # a leading zero octet
        _rsa_with(n=rsa_key().public_jwk["n"] + "="),  # padded
        {**ec_key().public_jwk, "crv": "P-384"},
        {**ec_key().public_jwk, "x": _b64(b"\x01" * 31)},
        {**ec_key().public_jwk, "y": _b64(b"\x01" * 32)},  # not on the curve
        {"kty": "OKP", "kid": "ed", "crv": "Ed25519", "x": _b64(b"\x01" * 32)},
        "not an object",
    ],
    ids=[
        "rsa-1024",
        "rsa-exponent-3",
        "rsa-private",
        "ec-private",
        "symmetric",
        "no-kid",
        "empty-kid",
        "use-enc",
        "key-ops-encrypt",
        "alg-hs256",
        "alg-of-another-type",
        "leading-zero",
        "padded-base64",
        "p-384",
        "short-coordinate",
        "off-the-curve",
        "okp",
        "not-an-object",
    ],
)
def test_an_unusable_key_refuses_the_registration(entry: Any) -> None:
    with pytest.raises(InvalidRequest):
        validate_client_jwks(json.dumps({"keys": [rsa_key("good").public_jwk, entry]}), ["RS256"])


@pytest.mark.parametrize(
    "document",
    [
        "not json",
        "[]",
        '{"keys": {}}',
        '{"keys": []}',
        _set(rsa_key().public_jwk, rsa_key().public_jwk),
        json.dumps({"keys": [rsa_key().public_jwk] * 40}),
        json.dumps({"keys": [rsa_key().public_jwk], "pad": "x" * MAX_JWKS_BYTES}),
    ],
    ids=["not-json", "not-an-object", "keys-not-a-list", "no-keys", "shared-kid", "too-many", "too-large"],
)
def test_a_document_that_is_no_usable_jwk_set_is_refused(document: str) -> None:
    with pytest.raises(InvalidRequest):
        validate_client_jwks(document, ["RS256"])


def test_a_pinned_algorithm_needs_a_key_that_fits_it() -> None:
    with pytest.raises(InvalidRequest):
        validate_client_jwks(jwks_json(rsa_key()), ["RS256", "ES256"])
    with pytest.raises(InvalidRequest):
        validate_client_jwks(_set(_rsa_with(alg="RS256")), ["PS256"])


def test_a_fetched_set_keeps_its_usable_keys_and_says_why_it_ignored_the_others() -> None:
    keys, problems = parse_client_jwks(
        _set(rsa_key().public_jwk, rsa_key("small", bits=1024).public_jwk, ec_key("dup").public_jwk,
             ec_key("dup").public_jwk)
    )  # fmt: skip
    assert set(keys.keys) == {"rsa-1"}
    assert len(problems) == 2 and any("dup" in p for p in problems)


def test_a_fetched_set_with_private_key_material_is_refused_whole() -> None:
    with pytest.raises(PrivateKeyMaterial):
        parse_client_jwks(_set(rsa_key().public_jwk, ec_key().private_jwk))


def test_select_takes_the_kid_or_else_the_one_key_that_fits() -> None:
    rsa, ec_pair = rsa_key(), ec_key("ec-a")
    keys, _ = parse_client_jwks(jwks_json(rsa, ec_pair))
    assert (found := keys.select("rsa-1", "RS256")) is not None and found.kid == "rsa-1"
    assert keys.select("rsa-1", "ES256") is None  # the kid's key does not fit the alg
    assert keys.select("nobody", "RS256") is None
    assert (only := keys.select(None, "ES256")) is not None and only.kid == "ec-a"
    two, _ = parse_client_jwks(jwks_json(rsa, rsa_key("rsa-2")))
    assert two.select(None, "RS256") is None  # ambiguous: the token would choose


def _signed(key: ClientKeyPair, alg: str) -> tuple[bytes, bytes]:
    token = jwt.encode({"a": 1}, key.private_key, algorithm=alg)
    head, payload, signature = token.split(".")
    return f"{head}.{payload}".encode(), base64.urlsafe_b64decode(signature + "==")


@pytest.mark.parametrize("alg", ["RS256", "PS256", "ES256"])
def test_signatures_of_each_algorithm_verify_and_a_changed_one_does_not(alg: str) -> None:
    pair = ec_key() if alg == "ES256" else rsa_key()
    keys, _ = parse_client_jwks(jwks_json(pair))
    key = keys.select(pair.kid, alg)
    assert key is not None
    data, signature = _signed(pair, alg)
    assert verify_signature(key, alg, data, signature)
    assert not verify_signature(key, alg, data + b"x", signature)
    assert not verify_signature(key, alg, data, signature[:-1] + bytes([signature[-1] ^ 1]))
    assert not verify_signature(decoy_key(alg), alg, data, signature)


def test_a_pss_signature_is_not_accepted_as_pkcs1_nor_the_reverse() -> None:
    keys, _ = parse_client_jwks(jwks_json(rsa_key()))
    key = keys.select("rsa-1", "RS256")
    assert key is not None
    pss_data, pss = _signed(rsa_key(), "PS256")
    pkcs_data, pkcs = _signed(rsa_key(), "RS256")
    assert not verify_signature(key, "RS256", pss_data, pss)
    assert not verify_signature(key, "PS256", pkcs_data, pkcs)


def test_an_es256_signature_must_be_raw_r_and_s_not_der() -> None:
    pair = ec_key()
    keys, _ = parse_client_jwks(jwks_json(pair))
    key = keys.select(pair.kid, "ES256")
    assert key is not None
    data = b"header.payload"
    assert isinstance(pair.private_key, ec.EllipticCurvePrivateKey)
    der = pair.private_key.sign(data, ec.ECDSA(hashes.SHA256()))
    r, s = decode_dss_signature(der)
    assert verify_signature(key, "ES256", data, r.to_bytes(32, "big") + s.to_bytes(32, "big"))
    assert not verify_signature(key, "ES256", data, der)
