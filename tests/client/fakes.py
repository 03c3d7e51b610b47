"""Deterministic stand-ins for the client's seams: a clock, token fetchers, sleep recorders.

Nothing here sleeps on a live clock: a held fetch waits on an Event that the test sets, and every
wait has a timeout so a broken test fails instead of hanging.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

import grpc

from authsvc.client.credentials import TokenFetchError

__all__ = [
    "WAIT",
    "AsyncFakeFetcher",
    "AsyncSleepRecorder",
    "FakeClock",
    "FakeFetcher",
    "Outcome",
    "SleepRecorder",
    "failure",
]

WAIT = 5.0
"""Upper bound for any wait on another thread or task; never reached when the code is right."""

Outcome = tuple[str, float, str] | TokenFetchError


def failure(
    code: grpc.StatusCode, reason: str = "", message: str = "try later", *, retry_after: float | None = None
) -> TokenFetchError:
    return TokenFetchError(code, reason, message, retry_after=retry_after)


class SleepRecorder:
    """A ``time.sleep`` replacement that records the delay and moves ``clock`` by it."""

    def __init__(self, clock: FakeClock) -> None:
        self.delays: list[float] = []
        self._clock = clock

    def __call__(self, delay: float) -> None:
        self.delays.append(delay)
        self._clock.advance(delay)


class FakeClock:
    """A ``time.monotonic`` replacement that counts its readers, so a test can wait until N
    callers have looked at the time (i.e. have decided what state their token is in)."""

    def __init__(self, start: float = 1000.0) -> None:
        self.t = start
        self.calls = 0
        self._cond = threading.Condition()

    def __call__(self) -> float:
        with self._cond:
            self.calls += 1
            self._cond.notify_all()
            return self.t

    def advance(self, seconds: float) -> None:
        with self._cond:
            self.t += seconds

    def wait_calls(self, n: int, timeout: float = WAIT) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self.calls >= n, timeout)


class _Script:
    """The shared bookkeeping of the sync and async fakes: the next outcome of each call."""

    def __init__(self, outcomes: tuple[Outcome, ...], expires_in: float, scope: str) -> None:
        self.script = list(outcomes)
        self.expires_in = expires_in
        self.scope = scope
        self.calls = 0
        self.threads: list[threading.Thread] = []
        self.during: Callable[[], object] | None = None
        self._cond = threading.Condition()

    def _next(self) -> Outcome:
        with self._cond:
            self.calls += 1
            self.threads.append(threading.current_thread())
            self._cond.notify_all()
            if self.script:
                return self.script.pop(0)
            return (f"tok-{self.calls}", self.expires_in, self.scope)

    def wait_calls(self, n: int, timeout: float = WAIT) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self.calls >= n, timeout)

    def _finish(self, outcome: Outcome) -> tuple[str, float, str]:
        if self.during is not None:
            self.during()
        if isinstance(outcome, TokenFetchError):
            raise outcome
        return outcome


class FakeFetcher(_Script):
    """A :class:`~authsvc.client.credentials.TokenFetcher` that plays ``outcomes`` in order, then
    answers ``tok-<call number>``. Set ``hold`` to keep a fetch in flight until the test sets it;
    ``during`` runs inside the fetch (e.g. to move the clock, as a slow network would)."""

    def __init__(self, *outcomes: Outcome, expires_in: float = 300.0, scope: str = "payments:read") -> None:
        super().__init__(outcomes, expires_in, scope)
        self.hold: threading.Event | None = None

    def __call__(self) -> tuple[str, float, str]:
        outcome = self._next()
        hold = self.hold
        if hold is not None and not hold.wait(WAIT):
            raise AssertionError("the test never released a held fetch")
        return self._finish(outcome)


class AsyncFakeFetcher(_Script):
    """The asyncio twin of :class:`FakeFetcher`; ``entered`` is set when a fetch starts."""

    def __init__(self, *outcomes: Outcome, expires_in: float = 300.0, scope: str = "payments:read") -> None:
        super().__init__(outcomes, expires_in, scope)
        self.hold: asyncio.Event | None = None
        self.entered: asyncio.Event | None = None

    async def __call__(self) -> tuple[str, float, str]:
        outcome = self._next()
        if self.entered is not None:
            self.entered.set()
        hold = self.hold
        if hold is not None:
            await asyncio.wait_for(hold.wait(), WAIT)
        return self._finish(outcome)


class AsyncSleepRecorder:
    """An ``asyncio.sleep`` replacement that records the delay and returns at once."""

    def __init__(self, clock: FakeClock | None = None) -> None:
        self.delays: list[float] = []
        self._clock = clock

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)
        if self._clock is not None:
            self._clock.advance(delay)
