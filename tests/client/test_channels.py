"""BearerAuthPlugin never blocks gRPC's thread; insecure_loopback_channel stays on loopback.

No server and no calls: the plugin is driven directly with a recording callback, and channels are
only built and closed.
"""

from __future__ import annotations

import threading

import grpc
import pytest

from authsvc.client.channels import BearerAuthPlugin, insecure_loopback_channel
from authsvc.client.credentials import ClientCredentials, TokenFetchError
from tests.client.fakes import WAIT, FakeClock, FakeFetcher, failure

START = 1000.0


class Context(grpc.AuthMetadataContext):
    service_url = "https://payments.test/payments.v1.PaymentService"
    method_name = "CreatePayment"


class Callback(grpc.AuthMetadataPluginCallback):
    """Records what the plugin hands to gRPC, and from which thread."""

    def __init__(self) -> None:
        self.calls: list[tuple[tuple[tuple[str, str | bytes], ...], Exception | None]] = []
        self.threads: list[threading.Thread] = []
        self.called = threading.Event()

    def __call__(self, metadata: tuple[tuple[str, str | bytes], ...], error: Exception | None) -> None:
        self.calls.append((tuple(metadata), error))
        self.threads.append(threading.current_thread())
        self.called.set()


def make(fetcher: FakeFetcher, clock: FakeClock) -> ClientCredentials:
    return ClientCredentials(fetcher, clock=clock, sleep=lambda _: None, jitter=lambda: 1.0)


def test_a_fresh_token_is_sent_before_the_plugin_returns() -> None:
    fetcher = FakeFetcher()
    creds = make(fetcher, FakeClock(START))
    creds.token()
    callback = Callback()
    BearerAuthPlugin(creds)(Context(), callback)
    assert callback.calls == [((("authorization", "Bearer tok-1"),), None)]
    assert callback.threads == [threading.current_thread()]
    assert fetcher.calls == 1


def test_a_stale_token_is_sent_at_once_and_a_refresh_starts() -> None:
    clock = FakeClock(START)
    fetcher = FakeFetcher()
    creds = make(fetcher, clock)
    creds.token()
    clock.advance(241.0)
    release = threading.Event()
    fetcher.hold = release
    callback = Callback()
    try:
        BearerAuthPlugin(creds)(Context(), callback)
        assert callback.calls == [((("authorization", "Bearer tok-1"),), None)]
        assert fetcher.wait_calls(2)
        future = creds.refresh_async()
    finally:
        release.set()
    assert future.result(WAIT).token == "tok-2"


def test_without_a_token_the_plugin_returns_and_answers_from_the_refresh() -> None:
    fetcher = FakeFetcher()
    release = threading.Event()
    fetcher.hold = release
    creds = make(fetcher, FakeClock(START))
    callback = Callback()
    try:
        BearerAuthPlugin(creds)(Context(), callback)  # returns while the fetch is held
        assert callback.calls == []
        assert fetcher.wait_calls(1)
        assert fetcher.threads[0] is not threading.current_thread()
    finally:
        release.set()
    assert callback.called.wait(WAIT)
    assert callback.calls == [((("authorization", "Bearer tok-1"),), None)]
    assert callback.threads[0] is not threading.current_thread()


def test_a_failed_fetch_reaches_the_callback_as_an_error() -> None:
    error = failure(grpc.StatusCode.UNAUTHENTICATED, "INVALID_CLIENT", "bad secret")
    creds = make(FakeFetcher(error), FakeClock(START))
    callback = Callback()
    BearerAuthPlugin(creds)(Context(), callback)
    assert callback.called.wait(WAIT)
    [(metadata, raised)] = callback.calls
    assert metadata == ()
    assert isinstance(raised, TokenFetchError)
    assert raised is error


REFUSED = [
    "10.0.0.1:50051",
    "example.com:443",
    "dns:///10.0.0.1:50051",
    "192.168.1.10:80",
    "[2001:db8::1]:443",
]
ACCEPTED = ["127.0.0.1:1", "localhost:1", "[::1]:1", "127.0.0.53:1", "dns:///localhost:1", "ipv6:[::1]:1"]


@pytest.mark.parametrize("target", REFUSED, ids=REFUSED)
def test_insecure_loopback_channel_refuses_other_hosts(target: str) -> None:
    creds = make(FakeFetcher(), FakeClock(START))
    with pytest.raises(ValueError, match="plaintext"):
        insecure_loopback_channel(target, creds)


@pytest.mark.parametrize("target", ACCEPTED, ids=ACCEPTED)
def test_insecure_loopback_channel_accepts_loopback(target: str) -> None:
    fetcher = FakeFetcher()
    channel = insecure_loopback_channel(target, make(fetcher, FakeClock(START)))
    channel.close()
    assert fetcher.calls == 0


@pytest.mark.parametrize("target", ["localhost", "unix"], ids=["no-port", "bare-word"])
def test_insecure_loopback_channel_says_what_a_target_looks_like(target: str) -> None:
    with pytest.raises(ValueError, match="HOST:PORT"):
        insecure_loopback_channel(target, make(FakeFetcher(), FakeClock(START)))


def test_insecure_loopback_channel_accepts_a_unix_socket() -> None:
    insecure_loopback_channel("unix:/tmp/authsvc-test.sock", make(FakeFetcher(), FakeClock(START))).close()
