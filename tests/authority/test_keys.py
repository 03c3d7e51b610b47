"""Signing-key management through :class:`authsvc.authority.Authority`, over every store.

Rotation, import, revocation, rewrapping and the life cycle applied on a fake clock: no test
sleeps. RSA keys are generated only where the operation under test generates them.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from authsvc.authority import Authority, Deployment, KeyInfo
from authsvc.core.errors import ConfigurationError, InvalidRequest, NotFound
from authsvc.core.keys import KeyEncryptionKey, KeyEncryptionKeys, KeyState
from authsvc.core.lifecycle import LifecyclePolicy, Transition, TransitionKind
from authsvc.core.ports import SystemRandom
from authsvc.store.base import StaleKek, Store, StoredKey
from authsvc.store.sqlite import SQLiteStore
from tests.core.fakes import FrozenClock
from tests.keypool import rsa_key as pooled_rsa_key

KEK = KeyEncryptionKey(b"\x11" * 32)
NEW_KEK = KeyEncryptionKey(b"\x22" * 32)
DELAY = 120
LIFETIME = 3600
LEEWAY = 90
POLICY = LifecyclePolicy(publish_delay=DELAY, max_token_lifetime=LIFETIME, leeway=LEEWAY)
T0 = 1_700_000_000.0


# -- fixtures and helpers -------------------------------------------------------------------------


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock(T0)


@pytest.fixture
def authority(store: Store, clock: FrozenClock) -> Authority:
    a = Authority(Deployment(store, KEK, clock=clock, random=SystemRandom()))
    a.deployment.check_kek()
    return a


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    """One operator key, imported into a fresh store by each test that needs it."""
    return pooled_rsa_key()


def states(authority: Authority) -> dict[str, str]:
    """kid -> state; also checks the invariant that at most one key is active."""
    infos = authority.keys.list_keys()
    assert sum(1 for k in infos if k.state == KeyState.ACTIVE) <= 1, infos
    return {k.kid: k.state for k in infos}


def info(authority: Authority, kid: str) -> KeyInfo:
    (found,) = [k for k in authority.keys.list_keys() if k.kid == kid]
    return found


def published(authority: Authority) -> set[str]:
    return {k["kid"] for k in json.loads(authority.keys.jwks_json())["keys"]}


def thumbprint(key: rsa.RSAPrivateKey) -> str:
    """RFC 7638 §3.3 for an RSA key, computed here independently of authsvc.core.keys."""
    numbers = key.public_key().public_numbers()

    def b64(value: int) -> str:
        raw = value.to_bytes((value.bit_length() + 7) // 8, "big")
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    canonical = f'{{"e":"{b64(numbers.e)}","kty":"RSA","n":"{b64(numbers.n)}"}}'
    return base64.urlsafe_b64encode(hashlib.sha256(canonical.encode()).digest()).rstrip(b"=").decode()


def transitions_of(applied: list[Transition]) -> list[tuple[TransitionKind, str | None]]:
    return [(t.kind, t.kid) for t in applied]


# -- rotation on the fake clock -------------------------------------------------------------------


def test_rotation_walk_publishes_first_signs_after_the_delay_and_unpublishes_after_the_tokens(
    authority: Authority, clock: FrozenClock
) -> None:
    old = authority.keys.ensure_signing_key().kid
    assert states(authority) == {old: KeyState.ACTIVE}
    assert authority.keys.apply_lifecycle(POLICY) == []  # no rotation period: nothing to do

    clock.advance(10.5)
    rotated = authority.keys.rotate()
    new = rotated.kid
    assert (rotated.state, rotated.origin) == (KeyState.NEXT, "generated")
    assert rotated.created_at == math.ceil(clock.now())
    assert states(authority) == {old: KeyState.ACTIVE, new: KeyState.NEXT}
    assert published(authority) == {old, new}  # verifiers learn the key before it signs
    assert authority.keys.ensure_signing_key().kid == old

    # one moment before the publication delay has passed: nothing happens
    clock.t = rotated.created_at + DELAY - 0.001
    assert authority.keys.apply_lifecycle(POLICY) == []
    assert states(authority) == {old: KeyState.ACTIVE, new: KeyState.NEXT}
    assert authority.keys.ensure_signing_key().kid == old

    # the old key signs until the promotion, late in a second
    clock.t = rotated.created_at + DELAY + 0.999
    deactivated = clock.now()
    assert transitions_of(authority.keys.apply_lifecycle(POLICY)) == [(TransitionKind.PROMOTE, new)]
    assert states(authority) == {old: KeyState.RETIRING, new: KeyState.ACTIVE}
    assert authority.keys.ensure_signing_key().kid == new
    assert published(authority) == {old, new}
    retiring = info(authority, old)
    assert retiring.deactivated_at == int(deactivated)
    assert retiring.retire_after == int(deactivated) + LIFETIME + LEEWAY
    assert info(authority, new).activated_at == int(deactivated)

    # The last token the old key signed (iat = int(now), the longest lifetime) stops verifying at
    # exp + leeway; the key must stay published until then.
    last_iat = int(deactivated - 0.001)
    last_exp = last_iat + LIFETIME
    assert retiring.retire_after is not None
    assert last_exp + LEEWAY <= retiring.retire_after

    clock.t = retiring.retire_after - 0.001
    assert authority.keys.apply_lifecycle(POLICY) == []
    assert published(authority) == {old, new}

    clock.t = retiring.retire_after
    assert transitions_of(authority.keys.apply_lifecycle(POLICY)) == [(TransitionKind.RETIRE, old)]
    assert states(authority) == {old: KeyState.RETIRED, new: KeyState.ACTIVE}
    assert info(authority, old).retired_at == retiring.retire_after
    assert published(authority) == {new}
    assert authority.keys.apply_lifecycle(POLICY) == []

    with pytest.raises(NotFound):  # a retired key is no longer revocable
        authority.keys.revoke(old)


class StaleReads:
    """Mixed into a second process's store on the same database: its next ``list_keys`` returns a
    snapshot taken earlier, so it decides on what it read before the other process wrote."""

    stale: list[StoredKey] | None = None

    def list_keys(self) -> list[StoredKey]:
        if self.stale is not None:
            keys, self.stale = self.stale, None
            return keys
        return super().list_keys()  # type: ignore[misc, no-any-return]


class StaleSQLite(StaleReads, SQLiteStore):
    pass


@pytest.fixture(params=["sqlite", "postgres"])
def two_processes(
    request: pytest.FixtureRequest, tmp_path: Path, clock: FrozenClock
) -> Iterator[tuple[Authority, Authority, StaleReads]]:
    store_a: Store
    store_b: Any
    if request.param == "sqlite":
        path = tmp_path / "shared.db"
        store_a, store_b = SQLiteStore(path), StaleSQLite(path)
    else:
        from authsvc.store.postgres import PostgresStore

        class StalePostgres(StaleReads, PostgresStore):
            pass

        url = request.getfixturevalue("pg_url")
        store_a, store_b = PostgresStore(url), StalePostgres(url)
    a = Authority(Deployment(store_a, KEK, clock=clock, random=SystemRandom()))
    b = Authority(Deployment(store_b, KEK, clock=clock, random=SystemRandom()))
    a.deployment.check_kek()
    b.deployment.check_kek()
    try:
        yield a, b, store_b
    finally:
        store_a.close()
        store_b.close()


PERIOD = 100_000
ROTATING = LifecyclePolicy(
    publish_delay=DELAY, max_token_lifetime=LIFETIME, leeway=LEEWAY, rotation_period=PERIOD
)


def test_two_processes_on_one_database_apply_each_transition_once(
    two_processes: tuple[Authority, Authority, StaleReads], clock: FrozenClock
) -> None:
    a, b, _ = two_processes
    first = a.keys.ensure_signing_key().kid
    assert b.keys.ensure_signing_key().kid == first

    def both() -> list[tuple[TransitionKind, str | None]]:
        return transitions_of(a.keys.apply_lifecycle(ROTATING) + b.keys.apply_lifecycle(ROTATING))

    clock.t = T0 + PERIOD - DELAY - 1
    assert both() == []
    clock.advance(1)
    created = both()
    assert [kind for kind, _ in created] == [TransitionKind.CREATE_NEXT]
    successor = created[0][1]
    assert states(a) == {first: KeyState.ACTIVE, successor: KeyState.NEXT}

    clock.t = info(a, successor or "").created_at + DELAY
    assert both() == [(TransitionKind.PROMOTE, successor)]
    assert states(b) == {first: KeyState.RETIRING, successor: KeyState.ACTIVE}

    clock.t = info(a, first).retire_after or 0
    assert both() == [(TransitionKind.RETIRE, first)]
    assert states(a) == {first: KeyState.RETIRED, successor: KeyState.ACTIVE}


def test_racing_processes_that_decided_on_the_same_state_apply_each_transition_once(
    two_processes: tuple[Authority, Authority, StaleReads], clock: FrozenClock
) -> None:
    """Both read the keys, then both write: the store's compare-and-set lets one win."""
    a, b, store_b = two_processes
    first = a.keys.ensure_signing_key().kid

    def race() -> list[tuple[TransitionKind, str | None]]:
        store_b.stale = store_b.list_keys()  # b reads ...
        applied = a.keys.apply_lifecycle(ROTATING)  # ... a reads and writes ...
        applied += b.keys.apply_lifecycle(ROTATING)  # ... b writes what it decided before
        assert store_b.stale is None, "b did not decide on the stale snapshot"
        return transitions_of(applied)

    clock.t = T0 + PERIOD - DELAY
    created = race()
    assert [kind for kind, _ in created] == [TransitionKind.CREATE_NEXT]
    successor = created[0][1] or ""
    assert states(a) == {first: KeyState.ACTIVE, successor: KeyState.NEXT}

    clock.t = info(a, successor).created_at + DELAY
    assert race() == [(TransitionKind.PROMOTE, successor)]
    assert states(a) == {first: KeyState.RETIRING, successor: KeyState.ACTIVE}

    clock.t = info(a, first).retire_after or 0
    assert race() == [(TransitionKind.RETIRE, first)]
    assert states(a) == {first: KeyState.RETIRED, successor: KeyState.ACTIVE}


def test_racing_processes_with_no_active_key_create_one_active_key_once(
    two_processes: tuple[Authority, Authority, StaleReads],
) -> None:
    a, b, store_b = two_processes
    store_b.stale = store_b.list_keys()  # both see an empty deployment
    applied = a.keys.apply_lifecycle(ROTATING) + b.keys.apply_lifecycle(ROTATING)
    assert len(states(a)) == 1
    assert [t.kind for t in applied] == [TransitionKind.CREATE_ACTIVE], (
        "a process that lost the race reports a key it did not create"
    )


# -- import ---------------------------------------------------------------------------------------

PASSWORD = b"correct horse battery staple"


def _pkcs8(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _pkcs1(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )


def _encrypted(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(PASSWORD),
    )


@pytest.mark.parametrize(
    ("encode", "password"),
    [(_pkcs8, None), (_pkcs1, None), (_encrypted, PASSWORD)],
    ids=["pkcs8", "pkcs1", "encrypted-pkcs8"],
)
def test_import_makes_a_next_key_named_by_its_thumbprint(
    authority: Authority,
    clock: FrozenClock,
    rsa_key: rsa.RSAPrivateKey,
    encode: Callable[[rsa.RSAPrivateKey], bytes],
    password: bytes | None,
) -> None:
    imported = authority.keys.import_key(encode(rsa_key), password=password)
    assert (imported.state, imported.origin) == (KeyState.NEXT, "imported")
    assert imported.kid == thumbprint(rsa_key)
    assert imported.created_at == math.ceil(clock.now())
    assert imported.kek_id == KEK.kek_id
    assert published(authority) == {imported.kid}
    (stored,) = authority.store.list_keys()
    assert PASSWORD not in stored.private_key_enc
    loaded = authority.keys.load_key(stored)
    assert loaded.private_key.private_numbers() == rsa_key.private_numbers()


def test_importing_the_same_key_twice_is_refused(authority: Authority, rsa_key: rsa.RSAPrivateKey) -> None:
    authority.keys.import_key(_pkcs8(rsa_key))
    with pytest.raises(InvalidRequest):
        authority.keys.import_key(_pkcs1(rsa_key))  # another encoding of the same key
    assert len(authority.keys.list_keys()) == 1


def _small_rsa() -> bytes:
    return _pkcs8(rsa.generate_private_key(public_exponent=65537, key_size=1024))  # noqa: S505 - must be refused


def _ec() -> bytes:
    return ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _exponent_3() -> bytes:
    """A key every verifier of ours refuses (RSA_EXPONENT): importing it would publish a key
    whose tokens never verify."""
    return _pkcs8(rsa.generate_private_key(public_exponent=3, key_size=2048))


def _public_only() -> bytes:
    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


@pytest.mark.parametrize(
    "make",
    [
        _small_rsa,
        _exponent_3,
        _ec,
        lambda: b"junk",
        lambda: b"",
        _public_only,
        lambda: b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
    ],
    ids=["rsa-1024", "rsa-exponent-3", "ec-p256", "junk", "empty", "public-key", "truncated-pem"],
)
def test_import_refuses_what_cannot_sign(authority: Authority, make: Callable[[], bytes]) -> None:
    with pytest.raises(InvalidRequest):
        authority.keys.import_key(make())
    assert authority.keys.list_keys() == []


@pytest.mark.parametrize(
    ("encrypted", "password"),
    [(True, None), (True, b"wrong"), (False, PASSWORD)],
    ids=["encrypted-without-password", "wrong-password", "password-for-plain-key"],
)
def test_import_refuses_a_wrong_password(
    authority: Authority, rsa_key: rsa.RSAPrivateKey, encrypted: bool, password: bytes | None
) -> None:
    pem = _encrypted(rsa_key) if encrypted else _pkcs8(rsa_key)
    with pytest.raises(InvalidRequest):
        authority.keys.import_key(pem, password=password)
    assert authority.keys.list_keys() == []


# -- revocation -----------------------------------------------------------------------------------


def test_revoking_a_retiring_key_unpublishes_it_at_once(authority: Authority, clock: FrozenClock) -> None:
    old = authority.keys.ensure_signing_key().kid
    new = authority.keys.rotate().kid
    clock.advance(DELAY + 1)
    authority.keys.apply_lifecycle(POLICY)
    assert states(authority) == {old: KeyState.RETIRING, new: KeyState.ACTIVE}

    clock.advance(5)
    revoked = authority.keys.revoke(old)
    assert (revoked.state, revoked.revoked_at) == (KeyState.REVOKED, int(clock.now()))
    assert published(authority) == {new}
    assert states(authority) == {old: KeyState.REVOKED, new: KeyState.ACTIVE}
    assert authority.keys.ensure_signing_key().kid == new
    clock.advance(LIFETIME + LEEWAY)
    assert authority.keys.apply_lifecycle(POLICY) == []  # a revoked key is never "retired" later


def test_revoking_the_active_key_promotes_the_oldest_next_key_at_once(
    authority: Authority, clock: FrozenClock, rsa_key: rsa.RSAPrivateKey
) -> None:
    compromised = authority.keys.ensure_signing_key().kid
    clock.advance(1)
    oldest = authority.keys.rotate().kid
    clock.advance(1)
    younger = authority.keys.import_key(_pkcs8(rsa_key)).kid
    clock.advance(1)  # well before the publication delay has passed

    authority.keys.revoke(compromised)
    assert states(authority) == {
        compromised: KeyState.REVOKED,
        oldest: KeyState.ACTIVE,
        younger: KeyState.NEXT,
    }
    assert authority.keys.ensure_signing_key().kid == oldest
    assert published(authority) == {oldest, younger}
    assert info(authority, oldest).activated_at == int(clock.now())


def test_revoking_the_only_key_generates_a_new_active_key(authority: Authority) -> None:
    compromised = authority.keys.ensure_signing_key().kid
    authority.keys.revoke(compromised)
    signing = authority.keys.ensure_signing_key().kid
    assert signing != compromised
    assert states(authority) == {compromised: KeyState.REVOKED, signing: KeyState.ACTIVE}
    assert published(authority) == {signing}

    with pytest.raises(NotFound):
        authority.keys.revoke(compromised)  # already revoked
    assert states(authority) == {compromised: KeyState.REVOKED, signing: KeyState.ACTIVE}


def test_revoking_a_next_key_unpublishes_it_and_it_is_never_promoted(
    authority: Authority, clock: FrozenClock, rsa_key: rsa.RSAPrivateKey
) -> None:
    active = authority.keys.ensure_signing_key().kid
    pending = authority.keys.import_key(_pkcs8(rsa_key)).kid
    authority.keys.revoke(pending)
    assert published(authority) == {active}
    clock.advance(DELAY * 10)
    assert authority.keys.apply_lifecycle(POLICY) == []
    assert states(authority) == {active: KeyState.ACTIVE, pending: KeyState.REVOKED}


@pytest.mark.parametrize("kid", ["no-such-kid", ""], ids=["unknown", "empty"])
def test_revoking_an_unknown_kid_is_not_found(authority: Authority, kid: str) -> None:
    with pytest.raises(NotFound):
        authority.keys.revoke(kid)
    assert authority.keys.list_keys() == []


# -- rewrapping under a new key-encryption key ----------------------------------------------------


def test_rewrap_moves_every_key_and_secret_to_the_new_kek(
    authority: Authority, store: Store, clock: FrozenClock
) -> None:
    active = authority.keys.ensure_signing_key().kid
    pending = authority.keys.rotate().kid
    client, secret = authority.clients.create_client(client_id="shop", scopes=["a"], audiences=["payments"])

    changed = authority.deployment.rewrap(NEW_KEK)
    assert changed == 3  # two private keys and the secret-hashing pepper
    assert {k.kek_id for k in authority.keys.list_keys()} == {NEW_KEK.kek_id}

    fresh = Authority(Deployment(store, NEW_KEK, clock=clock, random=SystemRandom()))
    fresh.deployment.check_kek()
    assert {fresh.keys.load_key(k).kid for k in store.list_keys()} == {active, pending}
    assert fresh.keys.ensure_signing_key().kid == active
    assert fresh.deployment.hasher().verify(secret, fresh.clients.get_client("shop").secret_hash)
    assert client.secret_hash == fresh.clients.get_client("shop").secret_hash

    stale = Authority(Deployment(store, KEK, clock=clock, random=SystemRandom()))
    with pytest.raises(ConfigurationError, match="key-encryption key"):
        stale.deployment.check_kek()
    with pytest.raises(ConfigurationError):
        stale.keys.load_key(store.list_keys()[0])


def test_rewrap_survives_reopening_the_database(tmp_path: Path, clock: FrozenClock) -> None:
    path = tmp_path / "authsvc.db"
    store = SQLiteStore(path)
    try:
        authority = Authority(Deployment(store, KEK, clock=clock, random=SystemRandom()))
        authority.deployment.check_kek()
        kid = authority.keys.ensure_signing_key().kid
        authority.deployment.rewrap(NEW_KEK)
    finally:
        store.close()
    reopened = SQLiteStore(path)
    try:
        fresh = Authority(Deployment(reopened, NEW_KEK, clock=clock, random=SystemRandom()))
        fresh.deployment.check_kek()
        assert fresh.keys.ensure_signing_key().kid == kid
        with pytest.raises(ConfigurationError, match="key-encryption key"):
            Authority(Deployment(reopened, KEK, clock=clock, random=SystemRandom())).deployment.check_kek()
    finally:
        reopened.close()


# -- a KEK list: the first encrypts, any decrypts -------------------------------------------------


def test_a_kek_list_reads_rows_under_either_key_and_rewrap_moves_all_to_the_first(
    authority: Authority, store: Store, clock: FrozenClock
) -> None:
    old_kid = authority.keys.ensure_signing_key().kid
    both = Authority(Deployment(store, KeyEncryptionKeys([NEW_KEK, KEK]), clock=clock, random=SystemRandom()))
    both.deployment.check_kek()
    new_kid = both.keys.rotate().kid
    assert {k.kid: k.kek_id for k in both.keys.list_keys()} == {old_kid: KEK.kek_id, new_kid: NEW_KEK.kek_id}
    assert {both.keys.load_key(k).kid for k in store.list_keys()} == {old_kid, new_kid}

    assert both.deployment.rewrap() == 2  # the old key and the pepper; the new key is under NEW already
    assert both.deployment.rewrap() == 0  # nothing left to do: an interrupted rewrap can be run again

    alone = Authority(Deployment(store, NEW_KEK, clock=clock, random=SystemRandom()))
    alone.deployment.check_kek()
    assert {alone.keys.load_key(k).kid for k in store.list_keys()} == {old_kid, new_kid}


def test_a_process_without_the_kek_of_a_stored_row_may_not_write_keys(
    authority: Authority, store: Store, clock: FrozenClock
) -> None:
    """After a rewrap to NEW, a process still on KEK alone (a server not restarted) is refused
    key writes instead of leaving rows a NEW-only deployment cannot open."""
    authority.keys.ensure_signing_key()
    Deployment(store, KeyEncryptionKeys([NEW_KEK, KEK]), clock=clock, random=SystemRandom()).rewrap()
    with pytest.raises(StaleKek, match=NEW_KEK.kek_id):
        authority.keys.rotate()
    clock.advance(DELAY * 10)  # automatic rotation due
    with pytest.raises(StaleKek):
        authority.keys.apply_lifecycle(
            LifecyclePolicy(publish_delay=DELAY, max_token_lifetime=LIFETIME, rotation_period=DELAY + 1)
        )
    assert {k.kek_id for k in store.list_keys()} == {NEW_KEK.kek_id}


def test_check_kek_names_every_missing_kek_id(authority: Authority, store: Store, clock: FrozenClock) -> None:
    authority.keys.ensure_signing_key()
    other = KeyEncryptionKey(b"\x33" * 32)
    with pytest.raises(ConfigurationError) as refused:
        Deployment(store, KeyEncryptionKeys([NEW_KEK, other]), clock=clock, random=SystemRandom()).check_kek()
    assert KEK.kek_id in str(refused.value)
    assert {NEW_KEK.kek_id, other.kek_id} <= set(
        str(refused.value).replace(",", " ").replace(")", " ").split()
    )


def test_rewrap_without_a_new_kek_needs_a_list(authority: Authority) -> None:
    authority.keys.ensure_signing_key()
    with pytest.raises(ConfigurationError, match="AUTHSVC_NEW_KEK"):
        authority.deployment.rewrap()
    assert {k.kek_id for k in authority.keys.list_keys()} == {KEK.kek_id}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "neither"),
        (f"{'22' * 32},not-a-key", "second key-encryption key"),
        (f"{'22' * 32},{'22' * 32}", "given twice"),
    ],
    ids=["empty", "bad-second", "duplicate"],
)
def test_a_malformed_kek_list_is_refused_without_echoing_it(text: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message) as refused:
        KeyEncryptionKeys.from_text(text)
    assert "22" * 32 not in str(refused.value)
