"""The narrow seams through which the core meets the outside world.

The core never reads the clock, draws randomness or touches storage by itself: each function or
class that needs one of these takes it as an argument. Tests pass fakes (a frozen clock, a
seeded random source, the in-memory store); the process wiring passes the system ones below.
"""

from __future__ import annotations

import secrets
import time
from typing import Protocol

__all__ = ["Clock", "RandomSource", "SystemClock", "SystemRandom"]


class Clock(Protocol):
    """Wall-clock time in seconds since the Unix epoch."""

    def now(self) -> float: ...


class RandomSource(Protocol):
    """Cryptographically secure random bytes."""

    def token_bytes(self, n: int) -> bytes: ...


class SystemClock:
    """The real clock (``time.time``)."""

    def now(self) -> float:
        return time.time()


class SystemRandom:
    """The operating system's CSPRNG (``secrets.token_bytes``)."""

    def token_bytes(self, n: int) -> bytes:
        return secrets.token_bytes(n)
