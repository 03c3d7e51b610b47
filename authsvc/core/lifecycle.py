"""The signing-key life cycle: when a key is published, signs, stops signing and disappears.

::

    next ──(published for publish_delay)──> active ──(a successor activates)──> retiring
      retiring ──(every token it signed has expired, plus leeway)──> retired
    any state ──(operator revokes: compromise)──> revoked

Rotation never fails a valid token:

- a new key is published (state ``next``) for at least ``publish_delay`` before it signs, so a
  verifier that polls the JWKS every ``max_age`` seconds has it before the first token it signs
  arrives (``publish_delay`` must exceed the verifiers' cache age plus their refresh cooldown);
- the old key stays published (``retiring``) until every token it signed has expired:
  ``max_token_lifetime`` plus ``leeway`` after it stopped signing.

This module only decides; the store applies each transition atomically (compare-and-set on the
key's state), so several server processes may run it at once and exactly one key is active.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

from authsvc.core.keys import KeyState

__all__ = [
    "DEFAULT_JWKS_MAX_AGE",
    "DEFAULT_KEY_PUBLISH_DELAY",
    "KeyRecord",
    "LifecyclePolicy",
    "Transition",
    "TransitionKind",
    "due_transitions",
    "publication_time",
]


DEFAULT_JWKS_MAX_AGE = 60
"""Seconds a verifier may use a fetched JWK Set (GetJwks says so; authsvc.verify polls this often)."""
DEFAULT_KEY_PUBLISH_DELAY = 120
"""Seconds a new key is published before it signs: the JWKS max age (60 s), plus the verifiers'
unknown-kid refresh cooldown (5 s in authsvc.verify; 30 s in some JOSE libraries), plus margin."""


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """What the life cycle needs to know of a key (no key material)."""

    kid: str
    state: KeyState
    created_at: int  # when it was first published (keys are published on creation)
    activated_at: int | None = None
    deactivated_at: int | None = None
    retire_after: int | None = None


@dataclass(frozen=True, slots=True)
class LifecyclePolicy:
    """``publish_delay``: seconds a key is published before it may sign. ``max_token_lifetime``:
    the longest lifetime of any token (bounds how long a retiring key must stay published).
    ``leeway``: the verifiers' clock-skew allowance, plus a margin for processes that take a
    moment to notice a rotation. ``rotation_period``: rotate automatically this often (None:
    only when asked)."""

    publish_delay: int
    max_token_lifetime: int
    leeway: int = 90
    rotation_period: int | None = None

    def __post_init__(self) -> None:
        if self.publish_delay < 0 or self.max_token_lifetime <= 0 or self.leeway < 0:
            raise ValueError("lifecycle durations must not be negative")
        if self.rotation_period is not None and self.rotation_period <= self.publish_delay:
            raise ValueError("the rotation period must be longer than the publication delay")

    @property
    def retiring_for(self) -> int:
        """How long a key stays published after it stopped signing."""
        return self.max_token_lifetime + self.leeway


class TransitionKind(StrEnum):
    PROMOTE = "promote"  # next -> active; the active key (if any) -> retiring
    RETIRE = "retire"  # retiring -> retired
    CREATE_NEXT = "create_next"  # generate a key in state next (automatic rotation)
    CREATE_ACTIVE = "create_active"  # no key can sign: generate one and activate it at once


@dataclass(frozen=True, slots=True)
class Transition:
    kind: TransitionKind
    kid: str | None = None


def publication_time(now: float) -> int:
    """The ``created_at`` to record for a key published at ``now``: rounded up, so that
    ``created_at + publish_delay`` is never earlier than the real publication plus the delay."""
    return math.ceil(now)


def due_transitions(keys: Iterable[KeyRecord], now: float, policy: LifecyclePolicy) -> list[Transition]:
    """The transitions due at ``now``, in the order to apply them."""
    keys = list(keys)
    active = [k for k in keys if k.state == KeyState.ACTIVE]
    pending = sorted((k for k in keys if k.state == KeyState.NEXT), key=lambda k: (k.created_at, k.kid))
    out: list[Transition] = []
    ready = [k for k in pending if now >= k.created_at + policy.publish_delay]
    if ready:
        # the oldest ready key; a younger ready one follows on a later tick (two quick
        # `keys rotate` calls rotate twice), and each was published for the full delay
        out.append(Transition(TransitionKind.PROMOTE, ready[0].kid))
    elif not active:
        out.append(Transition(TransitionKind.CREATE_ACTIVE))
    for key in keys:
        if key.state == KeyState.RETIRING and key.retire_after is not None and now >= key.retire_after:
            out.append(Transition(TransitionKind.RETIRE, key.kid))
    if policy.rotation_period is not None and active and not pending:
        current = active[0]
        since = current.activated_at if current.activated_at is not None else current.created_at
        # create the successor early enough that it is published for the full delay
        if now >= since + policy.rotation_period - policy.publish_delay:
            out.append(Transition(TransitionKind.CREATE_NEXT))
    return out
