"""Log lines that a hostile caller can neither forge, nor fill with a secret, nor use to fill the disk.

Three helpers, shared by the TokenService, the verifier interceptors and the PaymentService
(no grpc here, nothing of the server, so :mod:`authsvc.verify` and ``payments_svc`` may import it):

- :func:`loggable`: a caller-supplied string escaped (``repr``) and truncated, so that it stays on
  one line and cannot pose as another log line.
- :func:`client_id_for_log`: a client id as it may be logged. A *known* id (a registered client)
  is logged in full; an *unknown* one only as a short prefix and a SHA-256 tag, because callers
  paste secrets into the id field (a client secret sent as ``client_id`` must never reach a log).
- :class:`LogRateLimiter`: a token bucket per key, so that a flood of refused requests writes a
  bounded number of lines per second, then one ``suppressed K similar lines`` summary.

Typical use at an edge::

    refusals = LogRateLimiter(rate=10, burst=20)
    ...
    refusals.log(log, logging.INFO, "token refused",
                 "token refused: client_id=%s error=%s", client_id_for_log(cid, known=False), code)
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["DEFAULT_MAX_CHARS", "LogRateLimiter", "client_id_for_log", "loggable"]

DEFAULT_MAX_CHARS = 64
_UNKNOWN_PREFIX_CHARS = 8
_TAG_HEX_CHARS = 12


def loggable(value: str, max_chars: int = DEFAULT_MAX_CHARS) -> str:
    """``value`` (caller-supplied) made safe for one log line: at most ``max_chars`` characters of
    it, escaped with ``repr`` (quotes, control characters and newlines become visible escapes),
    with ``…`` when something was cut.

    Truncation is not redaction: a secret shorter than ``max_chars`` survives it whole. Pass
    anything that may hold a secret through :func:`client_id_for_log` (or do not log it).
    """
    return repr(value[:max_chars]) + ("…" if len(value) > max_chars else "")


def client_id_for_log(client_id: str, *, known: bool) -> str:
    """A client id as it may appear in a log line.

    ``known=True`` (the id names a registered client, as the core decided): the id in full,
    escaped and truncated by :func:`loggable`. ``known=False`` (unknown, or not yet looked up):
    only the first 8 characters and a 12-hex-digit SHA-256 tag of the whole value, e.g.
    ``'authsvc_'…#5b0e3c4a1f9d``; the tag lets an operator tell repeated attempts apart, or
    match a suspected value, without the log ever holding it. Give ``known=True`` only for an id
    the store confirmed: a wrong ``True`` writes a pasted secret to the log.
    """
    if known:
        return loggable(client_id)
    if not client_id:
        return "''"
    tag = hashlib.sha256(client_id.encode("utf-8", "surrogatepass")).hexdigest()[:_TAG_HEX_CHARS]
    return f"{loggable(client_id, _UNKNOWN_PREFIX_CHARS)}#{tag}"


@dataclass
class _Bucket:
    tokens: float
    updated: float
    suppressed: int = 0


class LogRateLimiter:
    """At most ``burst`` lines at once and ``rate`` lines per second on average, per key.

    Each key (a fixed name chosen by the code, such as ``"token refused"``: never a value from
    the caller, or the keys themselves become the flood) has a token bucket of ``burst`` tokens
    refilled at ``rate`` per second. :meth:`log` writes the line if a token is left and counts it
    otherwise; the next line written for that key is preceded by one summary,
    ``suppressed K similar lines (KEY)``, at the same level. Lines suppressed at the end of a
    flood are reported by the next line of that key, or by :meth:`flush`.

    ``clock`` is a monotonic clock in seconds (inject a fake one in tests). At most ``max_keys``
    keys are tracked; beyond that, unknown keys share one bucket, so memory stays bounded even if
    a caller misuses the API. Thread-safe: sync gRPC servers log from many threads.
    """

    _OVERFLOW_KEY = "(other)"

    def __init__(
        self,
        *,
        rate: float,
        burst: int,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = 256,
    ) -> None:
        if not rate > 0:
            raise ValueError("rate must be positive")
        if burst < 1:
            raise ValueError("burst must be at least 1")
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._max_keys = max_keys
        self._buckets: dict[str, _Bucket] = {}
        self._lock = threading.Lock()

    def acquire(self, key: str) -> tuple[bool, int]:
        """Take a token for ``key``. Returns ``(allowed, suppressed)``: whether a line may be written
        now and, if so, how many lines of this key were suppressed since the last one written
        (the caller reports them). A refused call counts itself as suppressed."""
        now = self._clock()
        with self._lock:
            bucket = self._bucket(key, now)
            # a clock that stepped back refills nothing
            bucket.tokens = min(float(self.burst), bucket.tokens + max(0.0, now - bucket.updated) * self.rate)
            bucket.updated = max(bucket.updated, now)
            if bucket.tokens < 1.0:
                bucket.suppressed += 1
                return False, 0
            bucket.tokens -= 1.0
            suppressed, bucket.suppressed = bucket.suppressed, 0
            return True, suppressed

    def log(
        self, logger: logging.Logger, level: int, key: str, msg: str, *args: object, exc_info: bool = False
    ) -> bool:
        """``logger.log(level, msg, *args)`` unless ``key`` is over its rate; True if written.
        ``exc_info=True`` adds the traceback of the exception being handled (as ``log.exception``).

        Format arguments are not rendered for a suppressed line, so a flood costs little CPU too.
        Arguments must already be safe for a log line (:func:`loggable`, :func:`client_id_for_log`).
        """
        if not logger.isEnabledFor(level):
            return False
        allowed, suppressed = self.acquire(key)
        if not allowed:
            return False
        if suppressed:
            logger.log(level, "suppressed %d similar lines (%s)", suppressed, key)
        logger.log(level, msg, *args, exc_info=exc_info)
        return True

    def flush(self, logger: logging.Logger, level: int = logging.INFO) -> int:
        """Write the pending ``suppressed K similar lines`` summaries now (e.g. at shutdown or from a
        periodic task), whatever the rate; returns how many lines they stood for."""
        with self._lock:
            pending = [(key, b.suppressed) for key, b in self._buckets.items() if b.suppressed]
            for key, _ in pending:
                self._buckets[key].suppressed = 0
        for key, count in pending:
            logger.log(level, "suppressed %d similar lines (%s)", count, key)
        return sum(count for _, count in pending)

    def _bucket(self, key: str, now: float) -> _Bucket:
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self._max_keys:
                key = self._OVERFLOW_KEY
                bucket = self._buckets.get(key)
            if bucket is None:
                bucket = self._buckets[key] = _Bucket(tokens=float(self.burst), updated=now)
        return bucket
