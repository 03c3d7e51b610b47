"""A per-process read-through cache of client records for the token endpoint's hot path.

Every token request reads one client. Reading it from the database each time would put a query
on the path that should cost little more than one RSA signature, so records (and "no such
client" answers, so that a flood of made-up ids cannot bypass the cache) are kept for ``ttl``
seconds. A client created, disabled or given a new secret by another process is seen once its
entry expires: the default of 2 seconds keeps that well within the 5-second promise.

A SQL store decodes a found row (its JSON columns) but has nothing to decode for an unknown id,
which made a miss on an unknown id measurably cheaper than on a known one. On a SQL store the
cache decodes a decoy row of the same shape when the store finds nothing, so the two cost the same.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable

from authsvc.core.clients import CLIENT_CREDENTIALS, Client
from authsvc.core.grants import ClientLookup
from authsvc.store import sql

__all__ = ["CachedClientLookup"]

# shaped like a typical registration: three scopes, one audience
_DECOY_ROW = sql._client_row(  # the store's own row codec, on purpose
    Client(
        client_id="unknown-client-decoy",
        secret_hash="hmac-sha256$" + "A" * 43,
        allowed_scopes=("payments:read", "payments:write", "payments:refund"),
        default_scopes=("payments:read", "payments:write", "payments:refund"),
        allowed_audiences=("payments",),
        default_audience="payments",
        token_ttl=300,
        grant_types=(CLIENT_CREDENTIALS,),
        enabled=True,
        created_at=0,
        updated_at=0,
    )
)


class CachedClientLookup:
    """Wraps a :class:`~authsvc.core.grants.ClientLookup` with a bounded TTL cache."""

    def __init__(
        self,
        inner: ClientLookup,
        *,
        ttl: float = 2.0,
        max_entries: int = 10_000,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._inner = inner
        self._ttl = ttl
        self._max = max_entries
        self._now = monotonic
        self._entries: OrderedDict[str, tuple[float, Client | None]] = OrderedDict()
        self._lock = threading.Lock()
        self._decoy = isinstance(inner, sql.SqlStore)

    def get_client(self, client_id: str) -> Client | None:
        now = self._now()
        entry = self._entries.get(client_id)
        if entry is not None and entry[0] > now:
            return entry[1]
        client = self._inner.get_client(client_id)
        if client is None and self._decoy:
            sql._client_from_row(_DECOY_ROW)  # the work a found row costs
        with self._lock:
            self._entries[client_id] = (now + self._ttl, client)
            self._entries.move_to_end(client_id)
            while len(self._entries) > self._max:
                self._entries.popitem(last=False)
        return client

    def is_cached(self, client_id: str) -> bool:
        """True if ``get_client`` would answer from memory now (no store read)."""
        entry = self._entries.get(client_id)
        return entry is not None and entry[0] > self._now()

    def invalidate(self, client_id: str | None = None) -> None:
        """Forget one client, or all of them."""
        with self._lock:
            if client_id is None:
                self._entries.clear()
            else:
                self._entries.pop(client_id, None)
