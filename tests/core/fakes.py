"""Deterministic stand-ins for the core's clock and randomness seams (:mod:`authsvc.core.ports`)."""

from __future__ import annotations

import hashlib

__all__ = ["CountingRandom", "FakeMonotonic", "FrozenClock"]


class FrozenClock:
    """A wall clock that only moves when a test moves it."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.t = now

    def now(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


class FakeMonotonic:
    """A ``time.monotonic`` replacement: call it for the time, ``advance`` to move it."""

    def __init__(self, start: float = 1000.0) -> None:
        self.t = start

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


class CountingRandom:
    """A deterministic :class:`~authsvc.core.ports.RandomSource`: every call returns fresh bytes
    derived from a seed and a call counter, so two calls never repeat and two runs agree."""

    def __init__(self, seed: bytes = b"authsvc-tests") -> None:
        self._seed = seed
        self.calls = 0

    def token_bytes(self, n: int) -> bytes:
        self.calls += 1
        out = b""
        block = 0
        while len(out) < n:
            out += hashlib.sha256(self._seed + f":{self.calls}:{block}".encode()).digest()
            block += 1
        return out[:n]
