"""The revocation list, transport-free: adding entries (:class:`RevocationRegistry`, what the
``authsvc`` command, the gRPC edge and the HTTP ``/oauth2/revoke`` call) and serving the list to
verifiers (:class:`RevocationFeed`, what a running server's ``WatchRevocations`` streams).

The list itself is :mod:`authsvc.core.revocation`; it is kept in the store
(:class:`~authsvc.store.base.RevocationStore`), shared by every replica, each entry numbered by
a sequence that is never reused. An entry expires with the longest token it can refuse, so the
list stays small without anyone cleaning it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncGenerator

from authsvc.core.clients import MAX_TOKEN_TTL, validate_client_id
from authsvc.core.errors import InvalidRequest
from authsvc.core.ports import Clock
from authsvc.core.revocation import Revocation, RevocationSet
from authsvc.logsafe import LogRateLimiter, loggable
from authsvc.logsetup import audit
from authsvc.store.base import RevocationStore, StoreError

__all__ = ["LEEWAY_MARGIN", "MAX_JTI_LENGTH", "RevocationFeed", "RevocationRegistry", "validate_jti"]

log = logging.getLogger("authsvc.admin")
feed_log = logging.getLogger("authsvc.revocations")
_TICK_ERRORS = LogRateLimiter(rate=1 / 30, burst=3)

LEEWAY_MARGIN = 300
"""Seconds an entry outlives the latest ``exp`` it can refuse: more than any verifier's leeway,
so a token a verifier would still accept (``exp`` + leeway) is still on the list."""

MAX_JTI_LENGTH = 256
_JTI = re.compile(rf"[\x21-\x7e]{{1,{MAX_JTI_LENGTH}}}")


def validate_jti(jti: str) -> str:
    """Return ``jti`` if it is 1 to 256 printable ASCII characters without spaces (every jti
    authsvc issues is; anything else names no token of ours)."""
    if not _JTI.fullmatch(jti):
        raise InvalidRequest(f"a jti is 1 to {MAX_JTI_LENGTH} printable ASCII characters without spaces")
    return jti


class RevocationRegistry:
    """Adds entries to the revocation list. ``max_token_lifetime`` is the longest lifetime a token
    can have (:data:`~authsvc.core.clients.MAX_TOKEN_TTL`): a token issued now expires by
    ``now + max_token_lifetime``, so an entry kept ``LEEWAY_MARGIN`` beyond that refuses it for as
    long as any verifier could accept it."""

    def __init__(self, store: RevocationStore, clock: Clock, max_token_lifetime: int = MAX_TOKEN_TTL) -> None:
        self.store = store
        self.clock = clock
        self.max_token_lifetime = max_token_lifetime

    def _now(self) -> int:
        return int(self.clock.now())

    def revoke_token(self, jti: str, *, expires_at: int | None = None) -> Revocation:
        """Refuse the one token whose ``jti`` is ``jti``. ``expires_at``: its ``exp`` if known
        (the entry is then forgotten sooner); never later than the default, ``now`` + the longest
        token lifetime + the margin, since no token issued before now can outlive that."""
        validate_jti(jti)
        now = self._now()
        latest = now + self.max_token_lifetime + LEEWAY_MARGIN
        if expires_at is None:
            expires_at = latest
        elif expires_at <= now:
            raise InvalidRequest("expires_at is in the past: a token expired then is refused already")
        entry = Revocation(expires_at=min(expires_at, latest), jti=jti)
        sequence = self.store.add_revocation(entry, now=now)
        log.info("token revoked: jti=%s expires_at=%d sequence=%d", loggable(jti), entry.expires_at, sequence)
        audit("token.revoked", {"jti": jti, "expires_at": entry.expires_at, "sequence": sequence})
        return entry

    def revoke_client(self, client_id: str, *, also_next: int = 0) -> Revocation:
        """Refuse every token of ``client_id`` issued until now (a disabled client, a forced
        logout). ``not_before`` is ``now + 1``: a token's ``iat`` is in whole seconds, so one issued
        in this same second is covered too. Tokens issued later are not refused by this entry
        (re-enabling a client needs no change to the list).

        ``also_next``: cover the tokens issued in that many seconds more. A disable made while
        servers hold the client in their cache (``client_cache_ttl``, at most 5 s) lets them issue
        tokens for that long; pass the cache lifetime so that those are refused too."""
        validate_client_id(client_id)
        if not 0 <= also_next <= LEEWAY_MARGIN:
            raise InvalidRequest(f"also_next must be between 0 and {LEEWAY_MARGIN} seconds")
        now = self._now()
        not_before = now + 1 + also_next
        entry = Revocation(
            expires_at=not_before + self.max_token_lifetime + LEEWAY_MARGIN,
            client_id=client_id,
            not_before=not_before,
        )
        sequence = self.store.add_revocation(entry, now=now)
        log.info(
            "client tokens revoked: client_id=%s not_before=%d sequence=%d",
            loggable(client_id),
            not_before,
            sequence,
        )
        audit(
            "client.tokens_revoked", {"client_id": client_id, "not_before": not_before, "sequence": sequence}
        )
        return entry


Batch = tuple[bool, int, list[Revocation]]
"""One message for a watcher: ``(snapshot, sequence, entries)``, as ``WatchRevocationsResponse``."""


class RevocationFeed:
    """The revocation list as a running server holds it, and the stream of its changes.

    Modelled on :class:`~authsvc.authority.keyring.Keyring`: :meth:`run` ticks every
    ``tick_interval`` seconds, reading from the store only the entries after the last sequence it
    holds (one indexed query), so an entry added by the ``authsvc`` command or by another replica
    reaches this server's watchers within a tick. :meth:`notify` makes the tick happen at once,
    for an entry this process added itself. :attr:`set` is the current
    :class:`~authsvc.core.revocation.RevocationSet` (the issuer's own verifier may use it), expired
    entries dropped. While the store is unreachable, the list last loaded keeps serving.

    :meth:`watch` is what ``WatchRevocations`` streams: a snapshot or a resume, then every batch
    of new entries. Entries are only ever added, and adding one twice changes nothing, so a
    watcher that gets an entry again (a resume that overlaps) stays right.

    Call :meth:`load` (or :meth:`tick`) once before serving; the lead's wiring does it in
    start-up, as for the keyring.
    """

    def __init__(self, store: RevocationStore, clock: Clock, *, tick_interval: float = 1.0) -> None:
        self._store = store
        self._clock = clock
        self.tick_interval = tick_interval
        self.set = RevocationSet()
        self._loaded = False
        # entries read after the initial snapshot, by sequence: what a resume is answered from
        self._base = 0  # the sequence of the snapshot the entries below came after
        self._recent: list[tuple[int, Revocation]] = []
        self._oldest = 0  # the lowest sequence the store still holds (0: none)
        self._changed: asyncio.Event | None = None
        self._wake: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def sequence(self) -> int:
        return self.set.sequence

    def _now(self) -> int:
        return int(self._clock.now())

    def load(self) -> None:
        """Take a fresh snapshot from the store (start-up). Blocking: call it from a thread on a
        running loop."""
        now = self._now()
        sequence, entries = self._store.revocation_snapshot(now)
        oldest = self._store.oldest_revocation_sequence()
        self.set = RevocationSet.of(entries, sequence=sequence)
        self._base, self._recent, self._oldest = sequence, [], oldest
        self._loaded = True
        self._wake_watchers()

    def tick(self) -> bool:
        """Read the entries added since the last sequence held; drop the expired ones. True if
        the list gained entries. Blocking (one query): the run loop calls it in a thread."""
        if not self._loaded:
            self.load()
            return True
        now = self._now()
        new = self._store.revocations_after(self.set.sequence)
        oldest = self._store.oldest_revocation_sequence()
        current = self.set.without_expired(now)
        recent = [(s, e) for s, e in self._recent if e.expires_at > now]
        if new:
            current = current.with_entries((e for _, e in new), sequence=new[-1][0])
            recent += new
        changed = bool(new)
        self.set, self._recent, self._oldest = current, recent, oldest
        if changed:
            self._wake_watchers()
        return changed

    def notify(self) -> None:
        """Reload now rather than at the next tick (this process added an entry). Safe from any
        thread; does nothing while :meth:`run` is not running."""
        loop, wake = self._loop, self._wake
        if loop is not None and wake is not None:
            loop.call_soon_threadsafe(wake.set)

    def _wake_watchers(self) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._signal)

    def _signal(self) -> None:
        if self._changed is None:  # stopped meanwhile
            return
        self._changed.set()
        self._changed = asyncio.Event()

    async def run(self) -> None:
        """Tick until cancelled. Errors are logged, and the list already loaded keeps serving.
        When cancelled (shutdown), a tick in flight is waited for and open watches end."""
        self._loop = asyncio.get_running_loop()
        self._changed = asyncio.Event()
        self._wake = asyncio.Event()
        try:
            while True:
                self._wake.clear()
                tick = asyncio.ensure_future(asyncio.to_thread(self.tick))
                try:
                    await asyncio.shield(tick)
                except asyncio.CancelledError:
                    # the tick's thread goes on regardless, and the store is closed next
                    await asyncio.wait([tick])
                    raise
                except StoreError as exc:
                    _TICK_ERRORS.log(
                        feed_log,
                        logging.WARNING,
                        "revocation refresh skipped",
                        "revocation refresh skipped (%s); serving the list already loaded",
                        exc,
                    )
                except Exception:
                    _TICK_ERRORS.log(
                        feed_log,
                        logging.ERROR,
                        "revocation tick failed",
                        "revocation tick failed; serving the list already loaded",
                        exc_info=True,
                    )
                if not self._wake.is_set():
                    with contextlib.suppress(TimeoutError):  # the tick interval has passed
                        await asyncio.wait_for(self._wake.wait(), self.tick_interval)
        finally:
            changed, self._changed = self._changed, None
            self._wake = None
            changed.set()

    def _covers(self, after_sequence: int) -> bool:
        """True if the entries after ``after_sequence`` are all known: it is not ahead of the
        list (another database, or a reset one) and nothing after it has been purged."""
        if not 0 < after_sequence <= self.set.sequence:
            return False
        if self._oldest == 0:  # nothing stored: fine only if nothing came after it
            return after_sequence == self.set.sequence
        return after_sequence >= self._oldest - 1

    async def _resume(self, after_sequence: int) -> Batch:
        """The first message of a watch: the entries after ``after_sequence`` if they are all
        known, else a snapshot."""
        current = self.set
        if not self._covers(after_sequence):
            return True, current.sequence, current.entries()
        if after_sequence >= self._base:
            entries = [e for s, e in self._recent if after_sequence < s <= current.sequence]
            return False, current.sequence, entries
        # older than this process's snapshot: ask the store, up to what the set holds
        try:
            rows = await asyncio.to_thread(self._store.revocations_after, after_sequence)
        except StoreError:
            return True, current.sequence, current.entries()
        now = self._now()
        entries = [e for s, e in rows if s <= current.sequence and e.expires_at > now]
        return False, current.sequence, entries

    async def watch(self, after_sequence: int = 0) -> AsyncGenerator[Batch, None]:
        """``(snapshot, sequence, entries)``: first the whole list (``snapshot`` True), or, when
        ``after_sequence`` is still covered by the store, only the entries after it; then each
        batch of new entries as the list gains them. Ends when :meth:`run` stops (or at once
        after the first message, if it is not running: nothing will change)."""
        first = await self._resume(after_sequence)
        last = first[1]
        yield first
        while True:
            changed = self._changed
            if changed is None:
                return
            if self.set.sequence == last:
                await changed.wait()
                continue
            current = self.set
            if last < self._base:  # a reload replaced the list underneath: start over
                last = current.sequence
                yield True, current.sequence, current.entries()
                continue
            entries = [e for s, e in self._recent if last < s <= current.sequence]
            last = current.sequence
            if entries:
                yield False, last, entries
