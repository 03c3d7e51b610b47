"""Which channels may carry the client secret, the channels for_target builds, and
compare-and-drop of refused tokens. No server: channels are only built and closed, never
connected, and no name is resolved."""

from __future__ import annotations

import grpc
import pytest

from authsvc.client import AioBearerInterceptor, AsyncClientCredentials, ClientCredentials
from authsvc.client.transport import channel_target, is_local_target, token_service_channel
from tests.client.fakes import FakeClock, FakeFetcher

LOCAL = ["127.0.0.1:1", "localhost:1", "[::1]:1", "dns:///127.0.0.1:1", "ipv4:127.0.0.1:1,127.0.0.2:1"]
LOCAL += ["ipv6:[::1]:1", "unix:/tmp/x.sock", "unix-abstract:authsvc"]
REMOTE = ["auth.example:443", "dns:///auth.example:443", "10.0.0.1:1", "ipv4:127.0.0.1:1,10.0.0.1:1"]
REMOTE += ["dns://10.0.0.53/localhost:1", "localhost", "[2001:db8::1]:1", "xds:///auth", "localhost.:1"]


@pytest.mark.parametrize("target", LOCAL, ids=LOCAL)
def test_local_targets(target: str) -> None:
    assert is_local_target(target)


@pytest.mark.parametrize("target", REMOTE, ids=REMOTE)
def test_everything_else_is_remote(target: str) -> None:
    assert not is_local_target(target)


def test_channel_target_sees_through_grpc_channels() -> None:
    with grpc.insecure_channel("127.0.0.1:1") as channel:
        assert channel_target(channel) == "dns:///127.0.0.1:1"
    assert channel_target(object()) is None


@pytest.mark.parametrize(
    ("target", "secure"),
    [("127.0.0.1:1", False), ("unix:/tmp/x.sock", False), ("auth.example:443", True)],
    ids=["loopback", "unix", "remote"],
)
def test_token_service_channel_is_tls_for_any_host_but_loopback(target: str, secure: bool) -> None:
    channel, is_secure = token_service_channel(target)
    channel.close()
    assert is_secure is secure


def test_tls_material_means_tls_even_on_loopback() -> None:
    channel, is_secure = token_service_channel("127.0.0.1:1", root_certificates=b"not used until a call")
    channel.close()
    assert is_secure


def test_for_target_to_a_remote_host_builds_without_sending() -> None:
    creds = ClientCredentials.for_target("auth.example:443", client_id="shop", client_secret="s")
    assert creds.fetches == 0
    creds.close()


def test_for_channel_takes_the_callers_word_for_tls() -> None:
    with grpc.insecure_channel("auth.example:443") as channel:
        with pytest.raises(ValueError, match="secure=True"):
            ClientCredentials.for_channel(channel, client_id="shop", client_secret="s")
        ClientCredentials.for_channel(channel, client_id="shop", client_secret="s", secure=True)


def make(clock: FakeClock) -> ClientCredentials:
    return ClientCredentials(FakeFetcher(), clock=clock, sleep=lambda _: None, jitter=lambda: 1.0)


def test_drop_refused_drops_only_the_token_it_names() -> None:
    creds = make(FakeClock())
    first = creds.token()
    assert not creds.drop_refused("tok-other")
    assert creds.token() == first
    assert creds.drop_refused(first)
    assert creds.token() != first
    assert creds.fetches == 2


def test_drop_refused_at_most_once_per_cooldown() -> None:
    clock = FakeClock()
    creds = make(clock)
    assert creds.drop_refused(creds.token())
    second = creds.token()
    assert not creds.drop_refused(second)  # within the cooldown: kept
    clock.advance(creds.refusal_cooldown)
    assert creds.drop_refused(second)
    assert (creds.fetches, creds.refusals_dropped) == (2, 2)


def test_aio_interceptors_cover_every_call_kind() -> None:
    bearer = AioBearerInterceptor(AsyncClientCredentials(lambda: None))  # type: ignore[arg-type]
    kinds = (
        grpc.aio.UnaryUnaryClientInterceptor,
        grpc.aio.UnaryStreamClientInterceptor,
        grpc.aio.StreamUnaryClientInterceptor,
        grpc.aio.StreamStreamClientInterceptor,
    )
    for kind, interceptor in zip(kinds, bearer.interceptors(), strict=True):
        assert isinstance(interceptor, kind)
