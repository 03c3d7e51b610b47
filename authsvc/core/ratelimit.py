"""Rate limits as the Generic Cell Rate Algorithm (GCRA): a token bucket kept as one number.

A limit is a sustained ``rate`` (requests per second) and a ``burst`` (requests at once from a
full bucket). GCRA keeps, per bucket, only its *theoretical arrival time* (TAT): the moment the
bucket would be full again. A request at ``now`` conforms when, after adding one emission
interval ``T = 1 / rate`` to ``max(TAT, now)``, the bucket is no more than ``burst`` intervals in
debt: ``max(TAT, now) + T - now <= burst * T``. A full bucket (no TAT, or one in the past) thus
admits exactly ``burst`` requests at once, then one every ``T``; a refused caller may retry after
``max(TAT, now) + T - now - burst * T`` seconds, which is what ``Retry-After`` says.

Pure: the clock value comes from the caller (a monotonic clock in process; Redis's own clock for
buckets shared by replicas, so that they never disagree on time). The same arithmetic runs in the
Lua script of :mod:`authsvc.authority.ratelimit`, in microseconds.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from authsvc.core.errors import ConfigurationError

__all__ = ["RateLimit", "Verdict", "gcra", "parse_rate_limit"]

MAX_RATE = 1_000_000.0
MAX_BURST = 1_000_000
_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}
_SYNTAX = re.compile(
    r"\s*(?P<count>\d+(?:\.\d+)?)\s*/\s*(?P<unit>[smh])\s*(?:,\s*burst\s*=\s*(?P<burst>\d+)\s*)?",
    re.IGNORECASE,
)
SYNTAX_HELP = "RATE/UNIT[,burst=N] with UNIT s, m or h (e.g. 100/s, 600/m,burst=50), or off"


@dataclass(frozen=True, slots=True)
class RateLimit:
    """A sustained ``rate`` in requests per second and a ``burst``: how many requests a full
    bucket admits at once. Build one from flag text with :func:`parse_rate_limit`."""

    rate: float
    burst: int

    def __post_init__(self) -> None:
        if not (math.isfinite(self.rate) and 0 < self.rate <= MAX_RATE):
            raise ConfigurationError(f"a rate must be above 0 and at most {MAX_RATE:g} per second")
        if not 1 <= self.burst <= MAX_BURST:
            raise ConfigurationError(f"a burst must be between 1 and {MAX_BURST}")

    @property
    def interval(self) -> float:
        """Seconds between two requests at the sustained rate (GCRA's emission interval T)."""
        return 1.0 / self.rate

    @property
    def tolerance(self) -> float:
        """How far ahead of ``now`` a bucket's TAT may be after a request: ``burst`` intervals."""
        return self.burst * self.interval

    def __str__(self) -> str:
        """The limit in flag syntax, in the largest unit that gives a whole count."""
        for unit, seconds in (("s", 1.0), ("m", 60.0), ("h", 3600.0)):
            count = self.rate * seconds
            if abs(count - round(count)) < 1e-9 and round(count) >= 1:
                return f"{round(count)}/{unit},burst={self.burst}"
        return f"{self.rate:g}/s,burst={self.burst}"


@dataclass(frozen=True, slots=True)
class Verdict:
    """One decision: ``allowed``, else ``retry_after`` seconds until a request would be; ``tat``
    is the bucket's state after the decision (unchanged when refused or only peeked)."""

    allowed: bool
    retry_after: float
    tat: float


def gcra(tat: float | None, now: float, limit: RateLimit, *, consume: bool = True) -> Verdict:
    """Decide one request at ``now`` against a bucket whose TAT is ``tat`` (None: full).

    ``consume=False`` only asks whether a request would conform, and changes nothing: what the
    failed-authentication throttle does before it checks a secret (a failure is recorded with
    ``consume=True`` afterwards)."""
    start = now if tat is None or tat < now else tat
    next_tat = start + limit.interval
    over = next_tat - now - limit.tolerance
    if over > 1e-9:  # a float margin: exactly ``burst`` requests at one instant always conform
        return Verdict(False, over, start)
    return Verdict(True, 0.0, next_tat if consume else start)


def parse_rate_limit(text: str) -> RateLimit | None:
    """``RATE/UNIT[,burst=N]`` (UNIT ``s``, ``m`` or ``h``; RATE may have decimals) as a
    :class:`RateLimit`, or None for ``off``. Without ``burst`` the bucket holds one unit's worth
    of requests (``100/s`` bursts to 100, ``5/m`` to 5, ``0.5/s`` to 1). A malformed value raises
    :class:`~authsvc.core.errors.ConfigurationError` with a one-line message."""
    if text.strip().lower() == "off":
        return None
    match = _SYNTAX.fullmatch(text)
    if match is None:
        raise ConfigurationError(f"{text!r} is not {SYNTAX_HELP}")
    count = float(match["count"])
    if count <= 0:
        raise ConfigurationError(f"{text!r}: the rate must be above 0 (or say off)")
    rate = count / _UNITS[match["unit"].lower()]
    burst = int(match["burst"]) if match["burst"] is not None else max(1, math.ceil(count))
    try:
        return RateLimit(rate=rate, burst=burst)
    except ConfigurationError as exc:
        raise ConfigurationError(f"{text!r}: {exc}") from None
