"""Rate limits of the TokenService, transport-free: what both edges get through
:class:`~authsvc.authority.tokens.TokenIssuer`.

Three kinds of bucket, each a GCRA (:mod:`authsvc.core.ratelimit`):

- **peer** (``--peer-rate-limit``): per source address, *before* authentication, so that a flood
  of requests from one address is refused before it costs a store read or a secret check. An
  IPv6 address counts by its /64 (one host usually holds the whole /64); an IPv4-mapped IPv6
  address as its IPv4 address. Behind a proxy every request comes from the proxy's address.
- **failed_auth** (``--failed-auth-limit``): per (client id, source address). Each failed client
  authentication takes one token; when none is left, further attempts of that pair are refused
  *without checking the secret*, so online guessing runs at the throttle's rate. The source is
  part of the key so that an attacker guessing from one address does not lock the real client
  out from its own. Unknown and registered client ids are throttled alike: the throttle tells
  nobody which ids exist.
- **client** (``--client-rate-limit``): per authenticated client. A request whose client's bucket
  is empty is refused only *after* its credentials check out (a wrong secret is answered as
  always), and before a token is signed; a successful request takes one token.

Buckets live in process by default (:class:`LocalBuckets`: at most ``max_keys`` of each kind, the
least recently used forgotten first, so that an attacker cycling addresses or client ids cannot
grow memory without bound). With ``--redis-url`` they are shared by every replica
(:class:`RedisBuckets`): one Lua script per decision, atomic, on Redis's own clock, so replicas
whose clocks differ still agree. When Redis does not answer within its short timeout, the
decision is made by the local buckets instead, a warning is logged once per outage, and Redis is
tried again a second later; it is used again as soon as it answers.

Keys never hold a secret: a client id (which may be a pasted secret) appears only as a SHA-256
prefix, an address as its normalized text.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import ipaddress
import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import unquote, urlsplit

from authsvc.core.errors import ConfigurationError, RateLimited
from authsvc.core.ratelimit import RateLimit, gcra, parse_rate_limit

__all__ = [
    "DEFAULT_FAILED_AUTH_LIMIT",
    "DEFAULT_FAILED_AUTH_LIMIT_TEXT",
    "DEFAULT_REDIS_PREFIX",
    "MAX_KEYS",
    "Admission",
    "Check",
    "LimitMetrics",
    "LocalBuckets",
    "RateLimits",
    "RedisBuckets",
    "check_redis_url",
    "source_key",
]

log = logging.getLogger("authsvc.ratelimit")

DEFAULT_FAILED_AUTH_LIMIT_TEXT = "10/m"
DEFAULT_FAILED_AUTH_LIMIT = parse_rate_limit(DEFAULT_FAILED_AUTH_LIMIT_TEXT)
"""Ten failed authentications at once per (client, address), then one every six seconds."""
DEFAULT_REDIS_PREFIX = "authsvc:rl"
MAX_KEYS = 50_000
"""Buckets of each kind one process keeps at most (a few megabytes each kind)."""
REDIS_TIMEOUT = 0.1
"""Seconds a decision waits for Redis before the local buckets decide it."""
REDIS_RETRY_INTERVAL = 1.0
"""Seconds between attempts to reach Redis again during an outage."""

KINDS = ("peer", "failed_auth", "client")


class LimitMetrics(Protocol):
    """What the limiter counts (``authsvc.metrics.RateLimitMetrics``; no prometheus import here)."""

    def rate_limited(self, limit: str) -> None: ...


# -- keys -------------------------------------------------------------------------------------


def _host_of(peer: str) -> str:
    """The address part of a gRPC peer (``ipv4:1.2.3.4:5678``, ``ipv6:[::1]:5678``, percent-encoded
    or not); an HTTP remote (``1.2.3.4``, ``::1``) as it is."""
    scheme, sep, rest = peer.partition(":")
    if not sep or scheme not in ("ipv4", "ipv6"):
        return peer
    if "%" in rest:
        rest = unquote(rest)
    host, sep, port = rest.rpartition(":")
    return host if sep and port.isdigit() else rest


@functools.lru_cache(maxsize=4096)
def _source_of_host(host: str) -> str:
    try:
        address = ipaddress.ip_address(host.removeprefix("[").removesuffix("]").partition("%")[0])
    except ValueError:
        return "other"
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if address.version == 4:
        return f"ipv4:{address}"
    return f"ipv6:{ipaddress.IPv6Network((address, 64), strict=False)}"


def source_key(peer: str | None) -> str:
    """The source address a per-peer bucket counts by, the same for a gRPC peer string and an
    HTTP remote address: ``ipv4:1.2.3.4``; ``ipv6:2001:db8:1:2::/64`` (the /64); ``local`` for a
    Unix socket or no address; ``other`` for anything unparseable. (Parsed once per address: the
    port is dropped before a bounded cache.)"""
    if not peer or peer.startswith("unix"):
        return "local"
    return _source_of_host(_host_of(peer))


def _client_tag(client_id: str) -> str:
    """A client id as it appears in a key: a SHA-256 prefix (128 bits), never the id itself,
    which may be a secret pasted into the wrong field, and whatever its length. Ids no longer
    than a valid one are remembered (every request hashes its client id: the same few ids,
    mostly); a longer one, which names no client, is hashed each time, so that made-up ids of up
    to a message's size cannot fill the cache with megabytes."""
    if len(client_id) <= _CACHED_ID_CHARS:
        return _cached_client_tag(client_id)
    return _tag_of(client_id)


_CACHED_ID_CHARS = 128  # the longest valid client id (authsvc.core.clients.validate_client_id)


def _tag_of(client_id: str) -> str:
    return hashlib.sha256(client_id.encode("utf-8", "surrogatepass")).hexdigest()[:32]


_cached_client_tag = functools.lru_cache(maxsize=4096)(_tag_of)


# -- buckets ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Check:
    """One bucket to decide: its ``kind`` (one of :data:`KINDS`), ``key`` (within the kind),
    limit, and whether a conforming request takes a token (``consume``) or is only looked at."""

    kind: str
    key: str
    limit: RateLimit
    consume: bool = True


class LocalBuckets:
    """In-process GCRA buckets, at most ``max_keys`` of each kind; when one more is needed the
    least recently used is forgotten (its bucket is then full again). Thread-safe."""

    def __init__(self, *, max_keys: int = MAX_KEYS, clock: Callable[[], float] = time.monotonic) -> None:
        if max_keys < 1:
            raise ValueError("max_keys must be at least 1")
        self.max_keys = max_keys
        self._clock = clock
        self._tats: dict[str, OrderedDict[str, float]] = {kind: OrderedDict() for kind in KINDS}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return sum(len(t) for t in self._tats.values())

    def size(self, kind: str) -> int:
        return len(self._tats[kind])

    def untouched(self, kind: str, key: str) -> bool:
        """Whether ``key`` has no bucket of ``kind``: a full one, which every check conforms to
        (a dict lookup, no lock: the answer is as of one instant, as a check's is)."""
        return key not in self._tats[kind]

    def check(self, checks: Sequence[Check]) -> tuple[int, float]:
        """Decide ``checks`` in order; stops at the first that refuses. Returns its index and
        its retry-after, or ``(-1, 0.0)`` when all conform."""
        with self._lock:
            now = self._clock()
            for index, check in enumerate(checks):
                tats = self._tats[check.kind]
                verdict = gcra(tats.get(check.key), now, check.limit, consume=check.consume)
                if not verdict.allowed:
                    return index, verdict.retry_after
                if check.consume:
                    tats[check.key] = verdict.tat
                    tats.move_to_end(check.key)
                    self._trim(tats, now)
            return -1, 0.0

    def _trim(self, tats: OrderedDict[str, float], now: float) -> None:
        while len(tats) > self.max_keys:
            tats.popitem(last=False)
        for _ in range(2):  # a full bucket is as good as none: let memory shrink after a flood
            oldest = next(iter(tats.items()), None)
            if oldest is None or oldest[1] > now:
                break
            tats.popitem(last=False)


# All times in microseconds on Redis's clock (TIME), so that replicas never disagree on "now".
# KEYS: the buckets; ARGV, three per key: emission interval, tolerance (burst * interval), consume.
# A bucket expires when it would be full again: Redis holds only buckets in use.
_GCRA_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
for i = 1, #KEYS do
  local interval = tonumber(ARGV[3 * i - 2])
  local tolerance = tonumber(ARGV[3 * i - 1])
  local tat = tonumber(redis.call('GET', KEYS[i])) or now
  if tat < now then tat = now end
  local next_tat = tat + interval
  local over = next_tat - now - tolerance
  if over > 0 then return {i, over} end
  if ARGV[3 * i] == '1' then
    redis.call('SET', KEYS[i], string.format('%.0f', next_tat), 'PX',
      math.max(1, math.ceil((next_tat - now) / 1000)))
  end
end
return {0, 0}
"""


def check_redis_url(url: str) -> str:
    """``url`` if it is a ``redis://``, ``rediss://`` or ``unix://`` URL naming a server, else a
    ConfigurationError. Returns where it points, without credentials, for log lines."""
    parts = urlsplit(url.strip())
    if parts.scheme == "unix" and parts.path:
        return f"unix:{parts.path}"
    if parts.scheme not in ("redis", "rediss") or not parts.hostname:
        raise ConfigurationError(
            "--redis-url must be redis://HOST[:PORT][/DB], rediss://… (TLS) or unix:///PATH, e.g. "
            "redis://127.0.0.1:6379/0"
        )
    try:
        port = parts.port or 6379
    except ValueError:
        raise ConfigurationError("--redis-url has a port that is not a number") from None
    return f"{parts.hostname}:{port}"


class RedisBuckets:
    """GCRA buckets in Redis, shared by every replica pointed at it, one atomic script call
    (EVALSHA) per decision, never blocking the event loop (``redis.asyncio``, ``timeout``).

    :meth:`check` answers None when Redis cannot decide (down, slow, refusing): the caller then
    decides with its local buckets. The first such failure of an outage is logged, as a warning;
    until ``retry_interval`` has passed no request waits on Redis again, then one request tries
    it (the others keep deciding locally) and the recovery is logged when it answers.
    """

    def __init__(
        self,
        url: str,
        *,
        prefix: str = DEFAULT_REDIS_PREFIX,
        timeout: float = REDIS_TIMEOUT,
        retry_interval: float = REDIS_RETRY_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.where = check_redis_url(url)
        try:
            import redis.asyncio  # noqa: F401, PLC0415 - the optional extra, needed only here
        except ImportError:
            raise ConfigurationError(
                "--redis-url needs the redis package: pip install 'authsvc[redis]'"
            ) from None
        self._url = url.strip()
        self.prefix = prefix
        self.timeout = timeout
        self.retry_interval = retry_interval
        self._clock = clock
        self._client: Any = None
        self._script: Any = None
        self._down_until: float | None = None  # during an outage: when to try Redis again
        self._probing = False
        self.outages = 0

    @property
    def available(self) -> bool:
        """False during an outage (between a failure and the next answer)."""
        return self._down_until is None

    def _connect(self) -> Any:
        if self._client is None:
            from redis.asyncio import Redis  # noqa: PLC0415
            from redis.asyncio.retry import Retry  # noqa: PLC0415
            from redis.backoff import NoBackoff  # noqa: PLC0415

            self._client = Redis.from_url(
                self._url,
                socket_timeout=self.timeout,
                socket_connect_timeout=self.timeout,
                retry=Retry(NoBackoff(), 0),  # the local buckets are the fallback, not a retry
                client_name="authsvc-ratelimit",
            )
            self._script = self._client.register_script(_GCRA_LUA)
        return self._client

    def _key(self, check: Check) -> str:
        return f"{self.prefix}:{check.kind}:{check.key}"

    async def check(self, checks: Sequence[Check]) -> tuple[int, float] | None:
        """As :meth:`LocalBuckets.check`, in Redis; None when Redis cannot decide now."""
        if self._down_until is not None:
            if self._probing or self._clock() < self._down_until:
                return None
            self._probing = True
        args: list[int] = []
        for check in checks:
            interval = max(1, round(check.limit.interval * 1_000_000))
            args += [interval, interval * check.limit.burst, 1 if check.consume else 0]
        try:
            self._connect()
            async with asyncio.timeout(self.timeout):
                index, over = await self._script(keys=[self._key(c) for c in checks], args=args)
        except Exception as exc:  # any failure of Redis: decide locally, say so once per outage
            self._failed(exc)
            return None
        finally:
            self._probing = False
        if self._down_until is not None:
            self._down_until = None
            log.info("rate limits: Redis at %s answers again; limits are shared again", self.where)
        return (int(index) - 1, int(over) / 1_000_000) if int(index) else (-1, 0.0)

    def _failed(self, exc: Exception) -> None:
        first = self._down_until is None
        self._down_until = self._clock() + self.retry_interval
        if first:
            self.outages += 1
            log.warning(
                "rate limits: Redis at %s does not answer (%s: %s); each process limits on its own "
                "until it does",
                self.where,
                type(exc).__name__,
                str(exc)[:200] or "timed out",
            )

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                await client.aclose()


# -- the limiter ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Admission:
    """A request that passed the checks before authentication: its keys, and whether its claimed
    client's bucket was empty (``client_over``: the retry-after), which is refused only once the
    client has authenticated."""

    source: str
    client_key: str | None
    failed_key: str
    client_over: float | None = None


def _seconds(retry_after: float) -> int:
    return max(1, math.ceil(retry_after))


class RateLimits:
    """The peer, failed-authentication and client limits of one process (any of them None: off),
    on ``shared`` Redis buckets when given, else (and during a Redis outage) ``local`` ones."""

    def __init__(
        self,
        *,
        client: RateLimit | None = None,
        peer: RateLimit | None = None,
        failed_auth: RateLimit | None = DEFAULT_FAILED_AUTH_LIMIT,
        shared: RedisBuckets | None = None,
        local: LocalBuckets | None = None,
        metrics: LimitMetrics | None = None,
    ) -> None:
        self.client = client
        self.peer = peer
        self.failed_auth = failed_auth
        self.shared = shared
        self.local = local if local is not None else LocalBuckets()
        self.metrics = metrics
        self._failed_auth_only = shared is None and client is None and peer is None

    @property
    def enabled(self) -> bool:
        return any(limit is not None for limit in (self.client, self.peer, self.failed_auth))

    @property
    def counts_successes(self) -> bool:
        """Whether :meth:`succeeded` does anything (a client limit is on)."""
        return self.client is not None

    def describe(self) -> str:
        """One line for the start-up log."""
        where = "per process" if self.shared is None else f"shared in Redis at {self.shared.where}"
        return (
            f"rate limits ({where}): client {self.client or 'off'}, peer {self.peer or 'off'}, "
            f"failed authentications {self.failed_auth or 'off'}"
        )

    async def _check(self, checks: Sequence[Check]) -> tuple[int, float]:
        if not checks:
            return -1, 0.0
        if self.shared is not None:
            decided = await self.shared.check(checks)
            if decided is not None:
                return decided
        return self.local.check(checks)

    def _refusal(self, limit: str, retry_after: float) -> RateLimited:
        if self.metrics is not None:
            self.metrics.rate_limited(limit)
        wait = _seconds(retry_after)
        text = {
            "peer": f"too many requests from this address; retry in {wait} s",
            "failed_auth": "too many failed authentications of this client from this address; "
            f"retry in {wait} s",
            "client": f"this client is over its rate limit; retry in {wait} s",
        }[limit]
        return RateLimited(text, retry_after=retry_after, limit=limit)

    async def admit(self, client_id: str, peer: str | None) -> Admission:
        """Before authentication: take a token from the peer's bucket, and look (without taking)
        at the failed-authentication bucket of (client, peer) and at the claimed client's bucket.
        Raises :class:`RateLimited` (``peer``, ``failed_auth``) when one of the first two is empty."""
        source = source_key(peer)
        tag = _client_tag(client_id)
        failed_key = f"{source}:{tag}"
        client_key = tag if client_id else None
        if self._failed_auth_only and self.local.untouched("failed_auth", failed_key):
            # the default (only the failed-authentication limit, in process) for a (client, source)
            # that has not failed lately: its bucket is full, so nothing to decide
            return Admission(source, client_key, failed_key)
        checks: list[Check] = []
        if self.peer is not None:
            checks.append(Check("peer", source, self.peer))
        if self.failed_auth is not None:
            checks.append(Check("failed_auth", failed_key, self.failed_auth, consume=False))
        if self.client is not None and client_key is not None:
            checks.append(Check("client", client_key, self.client, consume=False))
        index, retry_after = await self._check(checks)
        if index < 0:
            return Admission(source, client_key, failed_key)
        refused = checks[index].kind
        if refused == "client":  # refused only after the credentials check out
            return Admission(source, client_key, failed_key, client_over=retry_after)
        raise self._refusal(refused, retry_after)

    def client_refusal(self, admission: Admission) -> RateLimited | None:
        """The refusal of an authenticated client whose bucket :meth:`admit` found empty."""
        if admission.client_over is None:
            return None
        return self._refusal("client", admission.client_over)

    async def succeeded(self, admission: Admission) -> None:
        """The client authenticated and was served: take one token from its bucket. (Requests
        admitted at the same moment may together go over the burst by their number.)"""
        if self.client is not None and admission.client_key is not None:
            await self._check([Check("client", admission.client_key, self.client)])

    async def failed(self, admission: Admission) -> None:
        """The client's authentication failed: take one token from the (client, peer) bucket."""
        if self.failed_auth is not None:
            await self._check([Check("failed_auth", admission.failed_key, self.failed_auth)])

    async def close(self) -> None:
        if self.shared is not None:
            await self.shared.close()
