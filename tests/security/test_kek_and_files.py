"""Attacks on keys at rest (issue 9, items 4 and 6): a KEK change on a live deployment that leaves
a store no KEK opens, and database files that other local users can read.

Each test fails on the commit the hardening started from (3ab331e): there a rewrap left rows
written meanwhile under the old KEK, servers and commands took exactly one KEK, and SQLite files
took the umask's mode (0644) whatever the data dir.
"""

from __future__ import annotations

import os
import sqlite3
import stat
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from authsvc.authority import Authority, Deployment, open_authority
from authsvc.core.errors import ConfigurationError
from authsvc.core.keys import KeyEncryptionKey
from authsvc.core.ports import SystemClock, SystemRandom
from authsvc.server.app import RunningServer, start_server
from authsvc.store.base import Store
from authsvc.store.sqlite import SQLiteStore
from payments_svc.store import PaymentStore
from tests.conftest import serve_config
from tests.helpers import ServerThread, authsvc_cli

OLD = "11" * 32
NEW = "22" * 32
OTHER = "33" * 32
OLD_KEK = KeyEncryptionKey.from_text(OLD)
NEW_KEK = KeyEncryptionKey.from_text(NEW)


class SteppingClock:
    """A wall clock that jumps ``step`` seconds each time it is read, so that a server's key life
    cycle finds a rotation due on every tick without anything waiting on real time."""

    def __init__(self, step: float) -> None:
        self._lock = threading.Lock()
        self.t = SystemClock().now()  # from the present: the bootstrap key was made on the system clock
        self.step = step
        self.reads = 0

    def now(self) -> float:
        with self._lock:
            self.t += self.step
            self.reads += 1
            return self.t


def cli_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUTHSVC_")}
    env.update(extra)
    return env


def bootstrap(data_dir: Path, kek: str) -> None:
    """A deployment as the first ``serve`` leaves it: pepper and active key, under ``kek``."""
    authority = open_authority(data_dir, kek=kek, kek_file=None, clock=SystemClock(), random=SystemRandom())
    try:
        authority.keys.ensure_signing_key()
    finally:
        authority.store.close()


def assert_opens_under_new_kek_alone(data_dir: Path) -> int:
    """Every stored key and the pepper decrypt under NEW alone; returns how many keys there are."""
    store = SQLiteStore(data_dir / "authsvc.db")
    try:
        authority = Authority(Deployment(store, NEW_KEK, clock=SystemClock(), random=SystemRandom()))
        authority.deployment.check_kek()
        stored = store.list_keys()
        assert {k.kek_id for k in stored} == {NEW_KEK.kek_id}
        for key in stored:
            assert authority.keys.load_key(key).kid == key.kid
        return len(stored)
    finally:
        store.close()


def wait_until(condition: Any, what: str, *, attempts: int = 6000) -> None:
    """Poll ``condition`` (cheap reads) until it holds; an event, not a timed assertion: the bound
    only keeps a broken build from hanging."""
    done = threading.Event()
    for _ in range(attempts):
        if condition():
            return
        done.wait(0.01)
    raise AssertionError(f"never happened: {what}")


@pytest.fixture
def live_server(
    tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[tuple[RunningServer, SteppingClock]]:
    """A TokenService rotating its key on every tick (tiny rotation period, stepping clock), over a
    deployment bootstrapped under OLD; the server is given the KEK list ``request.param``."""
    data = tmp_path / "data"
    bootstrap(data, OLD)
    clock = SteppingClock(step=5.0)
    config = serve_config(
        data,
        kek=request.param,
        key_publish_delay=1,
        jwks_max_age=1,
        key_rotation_period=3,  # longer than the delay plus one tick
        key_tick_interval=0.01,
    )
    authority = open_authority(data, kek=request.param, kek_file=None, clock=clock, random=SystemRandom())
    thread: ServerThread[RunningServer] = ServerThread(lambda: start_server(config, authority=authority))
    running = thread.start()
    try:
        yield running, clock
    finally:
        thread.stop(grace=0)  # waits for the tick in flight before closing the store


def key_count(running: RunningServer) -> int:
    return len(running.authority.store.list_keys())


# -- item 4: a KEK change on a live deployment ---------------------------------------------------


@pytest.mark.parametrize("live_server", [f"{NEW},{OLD}"], indirect=True, ids=["server-given-new,old"])
def test_rewrap_while_a_live_server_keeps_rotating_leaves_every_key_under_the_new_kek(
    live_server: tuple[RunningServer, SteppingClock], tmp_path: Path
) -> None:
    """Step 1 (servers restarted with ``new,old``) and step 2 (``authsvc keys rewrap``) of the KEK
    change, while the server generates a key every other tick: afterwards NEW alone opens every
    key, including those the server wrote during and after the rewrap."""
    running, _ = live_server
    start = key_count(running)
    wait_until(lambda: key_count(running) >= start + 2, "the server generating keys before the rewrap")

    out = authsvc_cli(
        "keys", "rewrap", "--data-dir", str(tmp_path / "data"), env=cli_env(AUTHSVC_KEK=f"{NEW},{OLD}")
    )
    assert "re-encrypted" in out.stdout

    after = key_count(running)
    wait_until(lambda: key_count(running) >= after + 2, "the server generating keys after the rewrap")
    running_keys = key_count(running)
    assert running_keys >= start + 4
    assert assert_opens_under_new_kek_alone(tmp_path / "data") >= running_keys  # step 3 can drop OLD


@pytest.mark.parametrize("live_server", [OLD], indirect=True, ids=["server-given-old-only"])
def test_a_server_left_on_the_old_kek_cannot_write_keys_after_a_rewrap(
    live_server: tuple[RunningServer, SteppingClock], tmp_path: Path
) -> None:
    """An operator rewraps while a server still runs with the old KEK alone (step 1 skipped). That
    server must not go on writing keys under OLD, which a deployment restarted with NEW could never
    open: the store refuses its key writes, and signing goes on with the keys it has."""
    running, clock = live_server
    start = key_count(running)
    wait_until(lambda: key_count(running) >= start + 2, "the server generating keys before the rewrap")
    new_file = tmp_path / "new.kek"
    new_file.write_text(NEW + "\n")
    new_file.chmod(0o600)

    out = authsvc_cli(
        "keys", "rewrap", "--new-kek-file", str(new_file), "--data-dir", str(tmp_path / "data"),
        env=cli_env(AUTHSVC_KEK=OLD), check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr

    reads = clock.reads
    wait_until(lambda: clock.reads >= reads + 40, "twenty more life-cycle ticks of the server")
    assert running.keyring.signer is not None
    assert_opens_under_new_kek_alone(tmp_path / "data")


class InterleavingStore:
    """A store proxy that runs ``interloper`` once, just before the first rewrap transaction:
    the moment between a rewrap's read of the rows and its write."""

    def __init__(self, inner: Store, interloper: Any) -> None:
        self._inner = inner
        self._interloper = interloper
        self.interleaved = False

    def rewrap(self, *args: Any, **kwargs: Any) -> Any:
        if not self.interleaved:
            self.interleaved = True
            self._interloper()
        return self._inner.rewrap(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def test_rewrap_does_not_leave_a_key_written_between_its_read_and_its_write_under_the_old_kek(
    tmp_path: Path,
) -> None:
    """A server still on OLD rotates after ``keys rewrap`` read the rows but before it wrote them.
    Before the fix the rewrap reported success and left that key under OLD: a deployment moved to
    NEW alone could not open it."""
    store = SQLiteStore(tmp_path / "authsvc.db")
    try:
        server = Authority(Deployment(store, OLD_KEK, clock=SystemClock(), random=SystemRandom()))
        server.deployment.check_kek()
        server.keys.ensure_signing_key()
        interleaving = InterleavingStore(store, server.keys.rotate)
        cli = Authority(Deployment(interleaving, OLD_KEK, clock=SystemClock(), random=SystemRandom()))
        cli.deployment.check_kek()

        cli.deployment.rewrap(NEW_KEK)

        assert interleaving.interleaved
        assert len(store.list_keys()) == 2
    finally:
        store.close()
    assert assert_opens_under_new_kek_alone(tmp_path) == 2


def test_start_up_refuses_a_kek_list_that_lacks_a_stored_kek_and_names_only_kek_ids(tmp_path: Path) -> None:
    """``check_kek`` refuses when some ciphertext is under a KEK none of the given keys has, and says
    which by kek id; the message carries no key material."""
    bootstrap(tmp_path, OLD)
    with pytest.raises(ConfigurationError) as refused:
        open_authority(
            tmp_path, kek=f"{NEW},{OTHER}", kek_file=None, clock=SystemClock(), random=SystemRandom()
        )
    message = str(refused.value)
    assert OLD_KEK.kek_id in message
    assert NEW_KEK.kek_id in message
    for secret in (OLD, NEW, OTHER):
        assert secret not in message


def test_a_kek_list_opens_a_store_under_any_of_its_keys_and_writes_under_the_first(tmp_path: Path) -> None:
    """Step 1 of the change: a process given ``new,old`` opens the old deployment and writes every
    new key under NEW."""
    bootstrap(tmp_path, OLD)
    authority = open_authority(
        tmp_path, kek=f"{NEW},{OLD}", kek_file=None, clock=SystemClock(), random=SystemRandom()
    )
    try:
        authority.keys.ensure_signing_key()
        rotated = authority.keys.rotate()
        assert rotated.kek_id == NEW_KEK.kek_id
        assert {k.kek_id for k in authority.keys.list_keys()} == {OLD_KEK.kek_id, NEW_KEK.kek_id}
        for key in authority.store.list_keys():
            assert authority.keys.load_key(key).kid == key.kid
    finally:
        authority.store.close()


def test_rewrap_with_the_development_kek_replaces_kek_key_so_the_data_dir_still_opens(tmp_path: Path) -> None:
    """With no KEK given the data dir's ``kek.key`` is the KEK. Before the fix a rewrap left it
    holding the old key: the next command (or server start) could not open the deployment."""
    data = tmp_path / "data"
    env = cli_env()
    authsvc_cli("keys", "rotate", "--data-dir", str(data), env=env)
    new_file = tmp_path / "new.kek"
    new_file.write_text(NEW + "\n")
    new_file.chmod(0o600)

    authsvc_cli("keys", "rewrap", "--new-kek-file", str(new_file), "--data-dir", str(data), env=env)

    dev = data / "kek.key"
    assert KeyEncryptionKey.from_text(dev.read_text()).kek_id == NEW_KEK.kek_id
    assert stat.S_IMODE(dev.stat().st_mode) == 0o600
    assert not [p.name for p in data.iterdir() if p.name.endswith(".tmp")]
    listed = authsvc_cli("keys", "list", "--data-dir", str(data), env=env, check=False)
    assert listed.returncode == 0, listed.stderr
    assert assert_opens_under_new_kek_alone(data) == 1  # the key `keys rotate` made


# -- item 6: database files readable by other local users -----------------------------------------


def _authsvc_db(path: Path) -> dict[str, int]:
    """Open the authsvc store at ``path``, write, and return the file modes while it is open."""
    store = SQLiteStore(path)
    try:
        store.get_or_create_secret("probe", b"\x00ciphertext", "kek-1")  # a write: -wal and -shm exist
        return _modes(path)
    finally:
        store.close()


def _payments_db(path: Path) -> dict[str, int]:
    store = PaymentStore(path)
    try:
        with store._write() as conn:
            conn.execute("CREATE TABLE IF NOT EXISTS probe (x INTEGER)")
        return _modes(path)
    finally:
        store.close()


DATABASES = [("authsvc.db", _authsvc_db), ("payments.db", _payments_db)]


def _modes(path: Path) -> dict[str, int]:
    return {
        p.name: stat.S_IMODE(p.stat().st_mode)
        for p in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm"))
        if p.exists()
    }


@pytest.mark.parametrize(("name", "open_db"), DATABASES, ids=["authsvc", "payments"])
def test_database_files_are_created_0600_in_a_world_readable_data_dir(
    tmp_path: Path, name: str, open_db: Any
) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o755)
    data.chmod(0o755)
    old_umask = os.umask(0o022)
    try:
        modes = open_db(data / name)
    finally:
        os.umask(old_umask)
    assert len(modes) == 3, modes  # the database, its -wal and its -shm
    assert modes == dict.fromkeys(modes, 0o600)


@pytest.mark.parametrize(("name", "open_db"), DATABASES, ids=["authsvc", "payments"])
def test_an_existing_world_readable_database_file_is_tightened_to_0600(
    tmp_path: Path, name: str, open_db: Any, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / name
    sqlite3.connect(path).close()
    path.touch()
    path.chmod(0o644)
    modes = open_db(path)
    assert len(modes) == 3, modes
    assert modes == dict.fromkeys(modes, 0o600)
    assert any("0600" in r.getMessage() for r in caplog.records)
