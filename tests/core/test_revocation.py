"""The revocation list's pure model: what an entry refuses, merging, expiry."""

from __future__ import annotations

import pytest

from authsvc.core.revocation import Revocation, RevocationSet


def test_a_jti_entry_refuses_that_token_only() -> None:
    s = RevocationSet.of([Revocation(expires_at=200, jti="t1")], sequence=1)
    assert s.refuses(jti="t1", client_id="c", issued_at=100)
    assert not s.refuses(jti="t2", client_id="c", issued_at=100)


def test_a_client_entry_refuses_tokens_issued_before_not_before() -> None:
    s = RevocationSet.of([Revocation(expires_at=500, client_id="c", not_before=100)], sequence=1)
    assert s.refuses(jti="x", client_id="c", issued_at=99)
    assert not s.refuses(jti="x", client_id="c", issued_at=100), "a token issued after re-enabling works"
    assert not s.refuses(jti="x", client_id="other", issued_at=1)


def test_the_latest_not_before_wins_and_sets_are_immutable() -> None:
    first = RevocationSet.of([Revocation(expires_at=300, client_id="c", not_before=100)], sequence=1)
    second = first.with_entries([Revocation(expires_at=250, client_id="c", not_before=50)], sequence=2)
    assert second.by_client["c"] == (100, 300)
    third = second.with_entries([Revocation(expires_at=400, client_id="c", not_before=200)], sequence=3)
    assert third.refuses(jti="x", client_id="c", issued_at=150)
    assert not first.refuses(jti="x", client_id="c", issued_at=150)
    assert (first.sequence, third.sequence) == (1, 3)


def test_expired_entries_are_forgotten() -> None:
    s = RevocationSet.of(
        [Revocation(expires_at=100, jti="old"), Revocation(expires_at=300, client_id="c", not_before=50)],
        sequence=5,
    )
    kept = s.without_expired(200)
    assert "old" not in kept.by_jti and "c" in kept.by_client and len(kept) == 1
    assert kept.sequence == 5
    assert {e.jti or e.client_id for e in kept.entries()} == {"c"}


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"jti": "a", "client_id": "b"}, {"jti": ""}, {"client_id": ""}],
    ids=["neither", "both", "empty-jti", "empty-client"],
)
def test_an_entry_names_exactly_one_subject(kwargs: dict[str, str]) -> None:
    with pytest.raises(ValueError):
        Revocation(expires_at=1, **kwargs)  # type: ignore[arg-type]
