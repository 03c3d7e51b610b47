"""The TokenService's signing keys as it serves: the signer, and the published JWK Set that both
edges answer from memory (``GetJwks``, ``WatchJwks``, and the HTTP ``jwks_uri``).

Every ``tick_interval`` seconds a worker thread applies the key life cycle (promotions,
retirements, automatic rotation: :meth:`KeyManager.apply_lifecycle`, safe with several processes
on one store) and reloads the keys, so a rotation made by the CLI or another process takes effect
within a tick. What is published is decided by :func:`~authsvc.authority.keys.published_jwks`
alone. The active key's signer is swapped atomically; watchers are woken on every change of the
published set. While the store is unreachable, the keys last loaded keep serving.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import AsyncGenerator, Callable, Mapping
from types import MappingProxyType

from authsvc.authority.keys import KeyManager, published, published_jwks
from authsvc.core.keys import KeyState, jwks_json
from authsvc.core.lifecycle import LifecyclePolicy
from authsvc.core.tokens import TokenSigner
from authsvc.logsafe import LogRateLimiter
from authsvc.store.base import StoreError

__all__ = ["Keyring"]

log = logging.getLogger("authsvc.keys")
# a tick runs every second: an outage or a stale KEK must not write a line (or a traceback) each time
_TICK_ERRORS = LogRateLimiter(rate=1 / 30, burst=3)


class Keyring:
    def __init__(
        self,
        keys: KeyManager,
        policy: LifecyclePolicy,
        *,
        tick_interval: float = 1.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._keys = keys
        self.policy = policy
        self.tick_interval = tick_interval
        self._signers: dict[str, TokenSigner] = {}
        self._signer: TokenSigner | None = None
        self._published: tuple[tuple[str, str], ...] = ()
        self.jwks = jwks_json([])
        self.version = 0
        self._changed: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._now = monotonic
        self._store_ok = False  # the store answered the last load or tick
        self._answered_at: float | None = None  # when a load or tick last completed
        self.states: Mapping[str, int] = MappingProxyType({})
        """How many stored keys are in each state (``next``, ``active``, ...), as of the last load:
        what ``/metrics`` shows, without asking the store."""
        self.active_since: int | None = None
        """When (Unix time) the active key became active, as of the last load."""

    @property
    def signer(self) -> TokenSigner:
        if self._signer is None:
            raise RuntimeError("the keyring has not been loaded")
        return self._signer

    @property
    def healthy(self) -> bool:
        """True while a signing key is loaded and the store answered the last key tick (recently:
        a tick stuck on a store that never answers counts as not answering)."""
        if self._signer is None or not self._store_ok or self._answered_at is None:
            return False
        return self._now() - self._answered_at <= 3 * self.tick_interval + 5.0

    def fetch(self) -> str:
        """The published set: a Keyring is a JWKS source (:class:`~authsvc.verify.JwksSource`) for
        the issuer's own verifier (token introspection), with no network in between."""
        return self.jwks

    def load(self) -> bool:
        """Read the keys; swap the signer and the published set if they changed. True on change."""
        stored = self._keys.store.list_keys()
        self._store_ok, self._answered_at = True, self._now()
        self.states = MappingProxyType(dict(Counter(k.state for k in stored)))
        signing = [k for k in stored if k.state == KeyState.ACTIVE]
        self.active_since = (signing[0].activated_at or signing[0].created_at) if signing else None
        shown = published(stored)
        fingerprint = tuple(sorted((k.kid, k.state) for k in shown))
        if fingerprint == self._published and self._signer is not None:
            return False
        active = [k for k in stored if k.state == KeyState.ACTIVE]
        if active:
            kid = active[0].kid
            signer = self._signers.get(kid)
            if signer is None:
                signer = TokenSigner(self._keys.load_key(active[0]))
                self._signers = {kid: signer}  # a signer is only ever needed for the active key
            if self._signer is None or self._signer.key.kid != kid:
                log.info("signing with kid=%s", kid)
            self._signer = signer
        self.jwks = published_jwks(shown)
        self._published = fingerprint
        self.version += 1
        if self._loop is not None and self._changed is not None:
            self._loop.call_soon_threadsafe(self._notify)
        return True

    def tick(self) -> None:
        """Apply the life cycle, then reload. Runs in a worker thread (it may generate a key)."""
        self._keys.apply_lifecycle(self.policy)
        self.load()

    def _notify(self) -> None:
        if self._changed is None:  # stopped meanwhile
            return
        self._changed.set()
        self._changed = asyncio.Event()

    async def run(self) -> None:
        """Tick until cancelled. Errors are logged, and the keys already loaded keep serving.
        When cancelled (shutdown), open WatchJwks streams end."""
        self._loop = asyncio.get_running_loop()
        self._changed = asyncio.Event()
        try:
            while True:
                tick = asyncio.ensure_future(asyncio.to_thread(self.tick))
                try:
                    await asyncio.shield(tick)
                except asyncio.CancelledError:
                    # shutdown: the tick's thread goes on regardless, and the store is closed
                    # next, so wait for it rather than let it write to a closed connection
                    await asyncio.wait([tick])
                    raise
                except StoreError as exc:  # an outage: say so, without a traceback every second
                    self._store_ok = False
                    _TICK_ERRORS.log(
                        log,
                        logging.WARNING,
                        "key refresh skipped",
                        "key refresh skipped (%s); serving with the keys already loaded",
                        exc,
                    )
                except Exception:
                    self._answered_at = self._now()  # the tick ended, and not for want of the store
                    _TICK_ERRORS.log(
                        log,
                        logging.ERROR,
                        "key tick failed",
                        "key lifecycle tick failed; serving with the keys already loaded",
                        exc_info=True,
                    )
                await asyncio.sleep(self.tick_interval)
        finally:
            changed, self._changed = self._changed, None
            changed.set()

    async def watch(self) -> AsyncGenerator[str, None]:
        """The published JWK Set now, then after every change (for WatchJwks)."""
        last = -1
        while True:
            if self.version != last:
                last = self.version
                yield self.jwks
            changed = self._changed
            if changed is None:  # not running: nothing will change
                return
            if self.version == last:
                await changed.wait()
