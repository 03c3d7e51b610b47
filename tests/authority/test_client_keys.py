"""The keys of private_key_jwt clients: the registered set, and a jwks_uri fetched over real HTTPS
and cached by the verifier's rules (a fake monotonic clock: nothing sleeps), behind a guard that
keeps the server from connecting to internal addresses."""

from __future__ import annotations

import ipaddress
import json
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest

from authsvc.authority.client_keys import ClientKeys, InternalAddress, guarded_connection, is_internal_address
from authsvc.core.client_assertion import ClientKeysUnavailable
from authsvc.core.clients import AuthRegistration, Client, ClientAuthMethod, new_client
from tests.assertions import ec_key, jwks_json, rsa_key
from tests.core.fakes import FakeMonotonic
from tests.server.test_serve import self_signed
from tests.verify.http_servers import JwksServer, Reply, serving


def _client(*, jwks: str | None = None, jwks_uri: str | None = None) -> Client:
    return new_client(
        client_id="signer",
        secret_hash="",
        scopes=["a"],
        audiences=["b"],
        now=0,
        auth=AuthRegistration(method=ClientAuthMethod.PRIVATE_KEY_JWT, jwks=jwks, jwks_uri=jwks_uri),
    )


class ScriptedSource:
    """A jwks_uri that answers what the test says, counting fetches."""

    def __init__(self, document: str) -> None:
        self.document = document
        self.fetches = 0
        self.fail = False
        self.max_age: float | None = None

    def fetch(self) -> str:
        self.fetches += 1
        if self.fail:
            raise OSError("connection refused")
        return self.document


@pytest.fixture
def clock() -> FakeMonotonic:
    return FakeMonotonic()


@pytest.fixture
def source() -> ScriptedSource:
    return ScriptedSource(jwks_json(rsa_key("k1")))


@pytest.fixture
def keys(source: ScriptedSource, clock: FakeMonotonic) -> ClientKeys:
    return ClientKeys(source_for=lambda uri: source, monotonic=clock, max_age=60, cooldown=5)


URI_CLIENT = _client(jwks_uri="https://shop.example/jwks.json")


def test_a_registered_set_is_parsed_once_and_needs_no_fetch() -> None:
    keys = ClientKeys(source_for=lambda uri: pytest.fail("fetched"))
    client = _client(jwks=jwks_json(rsa_key("k1"), ec_key("e1")))
    first = keys.keys_for(client, "k1")
    assert set(first.keys) == {"k1", "e1"}
    assert keys.keys_for(client, None) is first


def test_a_fetched_set_is_kept_for_its_max_age(
    keys: ClientKeys, source: ScriptedSource, clock: FakeMonotonic
) -> None:
    assert set(keys.keys_for(URI_CLIENT, "k1").keys) == {"k1"}
    clock.advance(59)
    keys.keys_for(URI_CLIENT, "k1")
    assert source.fetches == 1
    clock.advance(1)
    keys.keys_for(URI_CLIENT, "k1")
    assert source.fetches == 2


def test_cache_control_shortens_the_max_age(
    keys: ClientKeys, source: ScriptedSource, clock: FakeMonotonic
) -> None:
    source.max_age = 10.0
    keys.keys_for(URI_CLIENT, "k1")
    clock.advance(10)
    keys.keys_for(URI_CLIENT, "k1")
    assert source.fetches == 2


def test_the_client_rotates_its_keys_without_re_registering(
    keys: ClientKeys, source: ScriptedSource, clock: FakeMonotonic
) -> None:
    keys.keys_for(URI_CLIENT, "k1")
    source.document = jwks_json(rsa_key("k2"))  # the client publishes its new key
    clock.advance(5)  # one cooldown after the last fetch: an unknown kid refreshes the set
    assert set(keys.keys_for(URI_CLIENT, "k2").keys) == {"k2"}
    assert source.fetches == 2


def test_unknown_kids_refresh_at_most_once_per_cooldown(
    keys: ClientKeys, source: ScriptedSource, clock: FakeMonotonic
) -> None:
    keys.keys_for(URI_CLIENT, "k1")
    for i in range(50):
        keys.keys_for(URI_CLIENT, f"forged-{i}")
    assert source.fetches == 1
    clock.advance(5)
    for i in range(50):
        keys.keys_for(URI_CLIENT, f"forged-again-{i}")
    assert source.fetches == 2


def test_a_failed_fetch_keeps_the_last_good_set(
    keys: ClientKeys, source: ScriptedSource, clock: FakeMonotonic
) -> None:
    keys.keys_for(URI_CLIENT, "k1")
    source.fail = True
    clock.advance(120)
    assert set(keys.keys_for(URI_CLIENT, "k1").keys) == {"k1"}
    assert source.fetches == 2


def test_no_set_at_all_is_unavailable_and_retried_after_the_cooldown(
    keys: ClientKeys, source: ScriptedSource, clock: FakeMonotonic
) -> None:
    source.fail = True
    with pytest.raises(ClientKeysUnavailable):
        keys.keys_for(URI_CLIENT, "k1")
    with pytest.raises(ClientKeysUnavailable):
        keys.keys_for(URI_CLIENT, "k1")
    assert source.fetches == 1
    source.fail = False
    clock.advance(5)
    assert set(keys.keys_for(URI_CLIENT, "k1").keys) == {"k1"}


def test_a_set_without_a_usable_key_never_replaces_the_last_good_one(
    keys: ClientKeys, source: ScriptedSource, clock: FakeMonotonic
) -> None:
    keys.keys_for(URI_CLIENT, "k1")
    source.document = jwks_json(rsa_key("small", bits=1024))
    clock.advance(60)
    assert set(keys.keys_for(URI_CLIENT, "k1").keys) == {"k1"}


def test_a_set_publishing_private_key_material_drops_the_cached_keys(
    keys: ClientKeys, source: ScriptedSource, clock: FakeMonotonic
) -> None:
    keys.keys_for(URI_CLIENT, "k1")
    source.document = json.dumps({"keys": [rsa_key("k1").private_jwk]})
    clock.advance(60)
    with pytest.raises(ClientKeysUnavailable):
        keys.keys_for(URI_CLIENT, "k1")


# -- the address guard -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254", "100.64.0.1", "0.0.0.0",  # noqa: S104
        "224.0.0.1", "255.255.255.255", "192.0.2.1", "::1", "::", "fe80::1", "fd00::1", "::ffff:127.0.0.1",
        "::ffff:169.254.169.254", "ff02::1",
    ],
)  # fmt: skip
def test_internal_addresses_are_recognised(address: str) -> None:
    assert is_internal_address(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "::ffff:8.8.8.8"])
def test_public_addresses_are_not_internal(address: str) -> None:
    assert not is_internal_address(ipaddress.ip_address(address))


@pytest.fixture
def listener() -> Iterator[int]:
    with socket.create_server(("127.0.0.1", 0)) as server:
        yield int(server.getsockname()[1])


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::ffff:127.0.0.1"])
def test_the_guard_refuses_a_host_that_resolves_to_loopback(host: str, listener: int) -> None:
    with pytest.raises(InternalAddress):
        guarded_connection(allow_internal=False)((host, listener), 2.0)


def test_the_guard_connects_when_internal_hosts_are_allowed(listener: int) -> None:
    sock = guarded_connection(allow_internal=True)(("127.0.0.1", listener), 2.0)
    try:
        assert sock.getpeername()[1] == listener
    finally:
        sock.close()


# -- over real HTTPS -----------------------------------------------------------------------------------


@pytest.fixture
def https_jwks(tmp_path: Path) -> Iterator[tuple[JwksServer, Path]]:
    cert, key = self_signed(tmp_path)
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert, key)
    with JwksServer(serving(jwks_json(rsa_key("k1"))), tls=tls) as server:
        yield server, cert


def test_a_jwks_uri_on_an_internal_host_is_refused_by_default(https_jwks: tuple[JwksServer, Path]) -> None:
    server, cert = https_jwks
    keys = ClientKeys(ca_file=cert)
    with pytest.raises(ClientKeysUnavailable):
        keys.keys_for(_client(jwks_uri=server.url()), "k1")
    assert server.requests == []  # not even connected to


def test_a_jwks_uri_is_fetched_over_https_when_internal_hosts_are_allowed(
    https_jwks: tuple[JwksServer, Path], clock: FakeMonotonic
) -> None:
    server, cert = https_jwks
    keys = ClientKeys(ca_file=cert, allow_internal=True, monotonic=clock)
    client = _client(jwks_uri=server.url())
    assert set(keys.keys_for(client, "k1").keys) == {"k1"}
    # the client rotates: its server publishes the new key, the next unknown kid after a cooldown fetches it
    server.answer = serving(jwks_json(rsa_key("k1"), rsa_key("k2")))
    clock.advance(5)
    assert set(keys.keys_for(client, "k2").keys) == {"k1", "k2"}
    assert len(server.requests) == 2


def test_a_jwks_uri_whose_certificate_is_not_trusted_gives_no_keys(
    https_jwks: tuple[JwksServer, Path],
) -> None:
    server, _ = https_jwks
    keys = ClientKeys(allow_internal=True)  # the system's trust store: it knows no test CA
    with pytest.raises(ClientKeysUnavailable):
        keys.keys_for(_client(jwks_uri=server.url()), "k1")


def test_a_jwks_uri_answering_too_much_gives_no_keys(https_jwks: tuple[JwksServer, Path]) -> None:
    server, cert = https_jwks
    server.answer = lambda path, headers: Reply(body=b'{"keys": [], "pad": "' + b"x" * 70_000 + b'"}')
    keys = ClientKeys(ca_file=cert, allow_internal=True)
    with pytest.raises(ClientKeysUnavailable):
        keys.keys_for(_client(jwks_uri=server.url()), "k1")
