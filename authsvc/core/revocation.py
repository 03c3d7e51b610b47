"""The revocation list: which otherwise valid tokens are refused, and for how long that must be
remembered. Small by construction: an entry is forgotten once no token it refuses can still be
valid.

- ``Revocation(jti=J, expires_at=E)``: the one token whose ``jti`` is J (E: its ``exp``, or the
  latest ``exp`` it can have);
- ``Revocation(client_id=C, not_before=T, expires_at=E)``: every token of client C issued
  (``iat``) before T: a disabled client, or a forced logout. E is T plus the longest lifetime a
  token can have (plus the verifiers' leeway), after which no such token is valid anyway.

:class:`RevocationSet` is one immutable view of the list, as a verifier holds it: it answers
:meth:`RevocationSet.refuses` in two dict lookups. Pure: no clock of its own (``now`` is passed).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

__all__ = ["REVOCATIONS_SCOPE", "Revocation", "RevocationSet"]

REVOCATIONS_SCOPE = "authsvc:revocations"
"""The scope a client needs to read the revocation list (WatchRevocations)."""


@dataclass(frozen=True, slots=True)
class Revocation:
    """One entry: exactly one of ``jti`` and ``client_id``."""

    expires_at: int
    jti: str | None = None
    client_id: str | None = None
    not_before: int = 0

    def __post_init__(self) -> None:
        if (self.jti is None) == (self.client_id is None):
            raise ValueError("a revocation names either a jti or a client_id")
        if self.jti is not None and not self.jti:
            raise ValueError("a revoked jti must not be empty")
        if self.client_id is not None and not self.client_id:
            raise ValueError("a revoked client_id must not be empty")

    def refuses(self, *, jti: str, client_id: str, issued_at: float) -> bool:
        if self.jti is not None:
            return self.jti == jti
        return self.client_id == client_id and issued_at < self.not_before


@dataclass(frozen=True, slots=True)
class RevocationSet:
    """The list as of ``sequence``: token entries by jti, client entries by client id (the latest
    ``not_before`` wins, since it refuses everything an earlier one did)."""

    sequence: int = 0
    by_jti: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))
    by_client: Mapping[str, tuple[int, int]] = field(default_factory=lambda: MappingProxyType({}))

    @classmethod
    def of(cls, entries: Iterable[Revocation], *, sequence: int) -> RevocationSet:
        return cls(sequence).with_entries(entries, sequence=sequence)

    def with_entries(self, entries: Iterable[Revocation], *, sequence: int) -> RevocationSet:
        """A new set with ``entries`` added (the set itself is never changed)."""
        by_jti = dict(self.by_jti)
        by_client = dict(self.by_client)
        for entry in entries:
            if entry.jti is not None:
                by_jti[entry.jti] = max(entry.expires_at, by_jti.get(entry.jti, 0))
            elif entry.client_id is not None:
                old_nbf, old_exp = by_client.get(entry.client_id, (0, 0))
                by_client[entry.client_id] = (max(old_nbf, entry.not_before), max(old_exp, entry.expires_at))
        return RevocationSet(sequence, MappingProxyType(by_jti), MappingProxyType(by_client))

    def without_expired(self, now: float) -> RevocationSet:
        """The set without entries whose ``expires_at`` has passed."""
        by_jti = {j: e for j, e in self.by_jti.items() if e > now}
        by_client = {c: v for c, v in self.by_client.items() if v[1] > now}
        if len(by_jti) == len(self.by_jti) and len(by_client) == len(self.by_client):
            return self
        return RevocationSet(self.sequence, MappingProxyType(by_jti), MappingProxyType(by_client))

    def refuses(self, *, jti: str, client_id: str, issued_at: float) -> bool:
        """True if a token with these claims is revoked."""
        if jti in self.by_jti:
            return True
        client = self.by_client.get(client_id)
        return client is not None and issued_at < client[0]

    def entries(self) -> list[Revocation]:
        return [Revocation(expires_at=e, jti=j) for j, e in self.by_jti.items()] + [
            Revocation(expires_at=e, client_id=c, not_before=nbf) for c, (nbf, e) in self.by_client.items()
        ]

    def __len__(self) -> int:
        return len(self.by_jti) + len(self.by_client)
