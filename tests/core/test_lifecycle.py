"""The signing-key life cycle as a pure decision: which transitions are due at a given time.

Time is a plain number here (a fake "now"); nothing reads the clock. How the transitions are
applied to a store, and the ``retire_after`` they stamp, is tested in ``tests/authority/test_keys.py``.
"""

from __future__ import annotations

import pytest

from authsvc.core.keys import KeyState
from authsvc.core.lifecycle import (
    KeyRecord,
    LifecyclePolicy,
    Transition,
    TransitionKind,
    due_transitions,
    publication_time,
)

T0 = 1_700_000_000
DELAY = 120
LIFETIME = 3600
LEEWAY = 90
PERIOD = 1000

POLICY = LifecyclePolicy(publish_delay=DELAY, max_token_lifetime=LIFETIME, leeway=LEEWAY)
ROTATING = LifecyclePolicy(
    publish_delay=DELAY, max_token_lifetime=LIFETIME, leeway=LEEWAY, rotation_period=PERIOD
)

PROMOTE = TransitionKind.PROMOTE
RETIRE = TransitionKind.RETIRE
CREATE_NEXT = TransitionKind.CREATE_NEXT
CREATE_ACTIVE = TransitionKind.CREATE_ACTIVE


def active(kid: str = "active", *, at: int = T0 - 10_000) -> KeyRecord:
    return KeyRecord(kid, KeyState.ACTIVE, created_at=at - DELAY, activated_at=at)


def pending(kid: str = "next", *, created_at: int = T0) -> KeyRecord:
    return KeyRecord(kid, KeyState.NEXT, created_at=created_at)


def retiring(kid: str = "old", *, retire_after: int) -> KeyRecord:
    return KeyRecord(
        kid,
        KeyState.RETIRING,
        created_at=T0 - 50_000,
        activated_at=T0 - 40_000,
        deactivated_at=retire_after - LIFETIME - LEEWAY,
        retire_after=retire_after,
    )


def kinds(transitions: list[Transition]) -> list[TransitionKind]:
    return [t.kind for t in transitions]


# -- promotion: next -> active after the publication delay ----------------------------------------

PROMOTION_OFFSETS = [
    (0.0, False),
    (60.0, False),
    (DELAY - 1.0, False),
    (DELAY - 0.001, False),
    (float(DELAY), True),
    (DELAY + 0.001, True),
    (DELAY + 1.0, True),
    (DELAY * 100.0, True),
]


@pytest.mark.parametrize(
    ("offset", "promoted"),
    PROMOTION_OFFSETS,
    ids=[
        "at-creation",
        "half-way",
        "delay-1s",
        "delay-1ms",
        "exactly-delay",
        "delay+1ms",
        "delay+1s",
        "long-after",
    ],
)
def test_next_key_is_promoted_only_once_published_for_the_delay(offset: float, promoted: bool) -> None:
    keys = [active(), pending("k1", created_at=T0)]
    due = due_transitions(keys, T0 + offset, POLICY)
    assert due == ([Transition(PROMOTE, "k1")] if promoted else [])


@pytest.mark.parametrize("offset", [0.0, 1.0, 86_400.0, 10 * 365 * 86_400.0], ids=["now", "1s", "1d", "10y"])
def test_an_active_key_alone_stays_active_without_a_rotation_period(offset: float) -> None:
    assert due_transitions([active(at=T0)], T0 + offset, POLICY) == []


@pytest.mark.parametrize(
    "keys",
    [
        [active(), pending("young", created_at=T0 + 5), pending("old", created_at=T0)],
        [pending("old", created_at=T0), active(), pending("young", created_at=T0 + 5)],
        # same publication second: the kid breaks the tie, deterministically
        [active(), pending("zz", created_at=T0), pending("old", created_at=T0)],
    ],
    ids=["given-youngest-first", "given-oldest-first", "tie-on-created-at"],
)
def test_of_two_next_keys_only_the_oldest_is_promoted(keys: list[KeyRecord]) -> None:
    due = due_transitions(keys, T0 + DELAY + 10, POLICY)
    assert due == [Transition(PROMOTE, "old")]


def test_a_younger_next_key_that_is_not_ready_does_not_block_the_oldest() -> None:
    keys = [active(), pending("old", created_at=T0), pending("young", created_at=T0 + 100)]
    assert due_transitions(keys, T0 + DELAY, POLICY) == [Transition(PROMOTE, "old")]


# -- retirement: retiring -> retired at retire_after -----------------------------------------------

RETIRE_AFTER = T0 + 5000


@pytest.mark.parametrize(
    ("offset", "retired"),
    [(-LIFETIME, False), (-1.0, False), (-0.001, False), (0.0, True), (0.5, True), (86_400.0, True)],
    ids=["lifetime-before", "1s-before", "1ms-before", "exactly", "0.5s-after", "1d-after"],
)
def test_retiring_key_retires_only_at_or_after_retire_after(offset: float, retired: bool) -> None:
    keys = [active(), retiring("old", retire_after=RETIRE_AFTER)]
    due = due_transitions(keys, RETIRE_AFTER + offset, POLICY)
    assert due == ([Transition(RETIRE, "old")] if retired else [])


def test_every_due_retiring_key_retires_and_only_those() -> None:
    keys = [
        active(),
        retiring("a", retire_after=T0 - 1),
        retiring("b", retire_after=T0),
        retiring("c", retire_after=T0 + 1),
    ]
    due = due_transitions(keys, T0, POLICY)
    assert sorted(t.kid or "" for t in due if t.kind == RETIRE) == ["a", "b"]
    assert kinds(due) == [RETIRE, RETIRE]


@pytest.mark.parametrize("state", [KeyState.RETIRED, KeyState.REVOKED], ids=["retired", "revoked"])
def test_unpublished_keys_cause_no_transition(state: KeyState) -> None:
    gone = KeyRecord("gone", state, created_at=T0 - 9000, activated_at=T0 - 8000, retire_after=T0 - 10)
    assert due_transitions([active(), gone], T0 + 86_400, POLICY) == []


def test_promotion_is_ordered_before_retirement() -> None:
    keys = [active(), pending("k1", created_at=T0), retiring("old", retire_after=T0)]
    assert due_transitions(keys, T0 + DELAY, POLICY) == [
        Transition(PROMOTE, "k1"),
        Transition(RETIRE, "old"),
    ]


def test_retiring_for_is_the_longest_token_lifetime_plus_leeway() -> None:
    assert POLICY.retiring_for == LIFETIME + LEEWAY


# -- automatic rotation ---------------------------------------------------------------------------

CREATE_AT = PERIOD - DELAY  # after activation: the successor must be published for the full delay


@pytest.mark.parametrize(
    ("offset", "created"),
    [
        (0.0, False),
        (CREATE_AT - 1.0, False),
        (CREATE_AT - 0.001, False),
        (float(CREATE_AT), True),
        (CREATE_AT + 0.5, True),
        (float(PERIOD), True),
        (PERIOD * 10.0, True),
    ],
    ids=["at-activation", "1s-early", "1ms-early", "exactly", "0.5s-after", "at-period", "long-overdue"],
)
def test_rotation_creates_the_next_key_a_publish_delay_before_the_period_ends(
    offset: float, created: bool
) -> None:
    due = due_transitions([active(at=T0)], T0 + offset, ROTATING)
    assert due == ([Transition(CREATE_NEXT)] if created else [])


def test_the_created_successor_can_sign_exactly_when_the_period_ends() -> None:
    now = T0 + CREATE_AT
    assert kinds(due_transitions([active(at=T0)], now, ROTATING)) == [CREATE_NEXT]
    successor = pending("succ", created_at=publication_time(now))
    keys = [active(at=T0), successor]
    assert due_transitions(keys, T0 + PERIOD - 0.001, ROTATING) == []
    assert due_transitions(keys, T0 + PERIOD, ROTATING) == [Transition(PROMOTE, "succ")]


def test_rotation_counts_from_created_at_when_activated_at_is_unknown() -> None:
    legacy = KeyRecord("legacy", KeyState.ACTIVE, created_at=T0)
    assert due_transitions([legacy], T0 + CREATE_AT - 1, ROTATING) == []
    assert due_transitions([legacy], T0 + CREATE_AT, ROTATING) == [Transition(CREATE_NEXT)]


@pytest.mark.parametrize(
    "created_at",
    [T0 + PERIOD * 5, T0 + PERIOD * 5 - DELAY],
    ids=["next-not-ready", "next-ready"],
)
def test_rotation_never_creates_a_key_while_a_next_key_exists(created_at: int) -> None:
    keys = [active(at=T0), pending("waiting", created_at=created_at)]
    due = due_transitions(keys, T0 + PERIOD * 5, ROTATING)
    assert CREATE_NEXT not in kinds(due)
    assert CREATE_ACTIVE not in kinds(due)


# -- nothing can sign ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "keys",
    [
        [],
        [pending("young", created_at=T0)],
        [retiring("old", retire_after=T0 + 10_000)],
        [KeyRecord("dead", KeyState.REVOKED, created_at=T0 - 10)],
    ],
    ids=["empty", "next-not-ready", "only-retiring", "only-revoked"],
)
@pytest.mark.parametrize("policy", [POLICY, ROTATING], ids=["manual", "rotating"])
def test_create_active_when_nothing_is_active_and_nothing_is_ready(
    keys: list[KeyRecord], policy: LifecyclePolicy
) -> None:
    assert due_transitions(keys, T0, policy) == [Transition(CREATE_ACTIVE)]


def test_a_ready_next_key_is_promoted_instead_of_creating_an_active_one() -> None:
    keys = [pending("ready", created_at=T0 - DELAY)]
    assert due_transitions(keys, T0, ROTATING) == [Transition(PROMOTE, "ready")]


# -- policy and publication time ------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"publish_delay": -1, "max_token_lifetime": 3600},
        {"publish_delay": 120, "max_token_lifetime": -1},
        {"publish_delay": 120, "max_token_lifetime": 0},
        {"publish_delay": 120, "max_token_lifetime": 3600, "leeway": -1},
        {"publish_delay": 120, "max_token_lifetime": 3600, "rotation_period": 120},
        {"publish_delay": 120, "max_token_lifetime": 3600, "rotation_period": 60},
        {"publish_delay": 120, "max_token_lifetime": 3600, "rotation_period": -5},
        {"publish_delay": 0, "max_token_lifetime": 3600, "rotation_period": 0},
    ],
    ids=[
        "negative-delay",
        "negative-lifetime",
        "zero-lifetime",
        "negative-leeway",
        "period-equals-delay",
        "period-below-delay",
        "negative-period",
        "zero-period",
    ],
)
def test_invalid_policies_are_refused(kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        LifecyclePolicy(**kwargs)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"publish_delay": 0, "max_token_lifetime": 1, "leeway": 0},
        {"publish_delay": 120, "max_token_lifetime": 3600, "rotation_period": 121},
    ],
    ids=["zero-delay-and-leeway", "period-just-above-delay"],
)
def test_boundary_policies_are_accepted(kwargs: dict[str, int]) -> None:
    LifecyclePolicy(**kwargs)


@pytest.mark.parametrize(
    ("now", "expected"),
    [(10.0, 10), (10.2, 11), (10.999, 11), (0.0, 0), (float(T0) + 0.5, T0 + 1)],
    ids=["whole", "fraction", "almost-next", "zero", "epoch-scale"],
)
def test_publication_time_rounds_up(now: float, expected: int) -> None:
    assert publication_time(now) == expected
    assert isinstance(publication_time(now), int)
    assert publication_time(now) + DELAY >= now + DELAY  # never earlier than the real publication
