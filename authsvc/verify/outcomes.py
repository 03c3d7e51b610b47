"""Why a token was accepted or refused, in a small fixed vocabulary: what a verifier counts.

Every refusal the verifier raises carries one of :data:`REFUSALS` (:class:`Refused` is an
:class:`~authsvc.core.errors.InvalidToken`, :class:`Unavailable` a
:class:`~authsvc.core.errors.TemporarilyUnavailable`; both answer exactly as their base class on
the wire), so that a :class:`VerifierMetrics` gets a label from a fixed set and never anything a
caller wrote. The names say which check refused, never which client or token: those belong in
logs.

:class:`VerifierMetrics` is the hook a :class:`~authsvc.verify.verifier.TokenVerifier` calls once
per verification; this package imports no metrics library (``authsvc.metrics.VerificationMetrics``
is the Prometheus one).
"""

from __future__ import annotations

from typing import Final, Protocol

from authsvc.core.errors import InvalidToken, TemporarilyUnavailable

__all__ = [
    "ACCEPTED",
    "BAD_SIGNATURE",
    "CERTIFICATE_MISMATCH",
    "ERROR",
    "EXPIRED",
    "INVALID_CLAIMS",
    "KEYS_UNAVAILABLE",
    "LIFETIME_TOO_LONG",
    "MALFORMED",
    "NOT_YET_VALID",
    "REFUSALS",
    "REVOCATIONS_UNAVAILABLE",
    "REVOKED",
    "UNKNOWN_KID",
    "WRONG_ALGORITHM",
    "WRONG_AUDIENCE",
    "WRONG_ISSUER",
    "WRONG_TYPE",
    "Refused",
    "Unavailable",
    "VerifierMetrics",
    "outcome_of",
]

ACCEPTED: Final = "accepted"
MALFORMED: Final = "malformed"  # size, encoding, JSON, header members, kid
WRONG_ALGORITHM: Final = "wrong_algorithm"  # alg other than RS256
WRONG_TYPE: Final = "wrong_type"  # typ other than at+jwt
INVALID_CLAIMS: Final = "invalid_claims"  # a required claim missing or ill-typed
WRONG_ISSUER: Final = "wrong_issuer"
WRONG_AUDIENCE: Final = "wrong_audience"
EXPIRED: Final = "expired"
NOT_YET_VALID: Final = "not_yet_valid"  # nbf or iat in the future
LIFETIME_TOO_LONG: Final = "lifetime_too_long"
UNKNOWN_KID: Final = "unknown_kid"
BAD_SIGNATURE: Final = "bad_signature"
REVOKED: Final = "revoked"
CERTIFICATE_MISMATCH: Final = "certificate_mismatch"  # a bound token without its certificate (RFC 8705)
KEYS_UNAVAILABLE: Final = "keys_unavailable"  # no key set could ever be fetched
REVOCATIONS_UNAVAILABLE: Final = "revocations_unavailable"  # a fail-closed list is stale
ERROR: Final = "error"  # the verifier failed unexpectedly

REFUSALS: Final = (
    MALFORMED,
    WRONG_ALGORITHM,
    WRONG_TYPE,
    INVALID_CLAIMS,
    WRONG_ISSUER,
    WRONG_AUDIENCE,
    EXPIRED,
    NOT_YET_VALID,
    LIFETIME_TOO_LONG,
    UNKNOWN_KID,
    BAD_SIGNATURE,
    REVOKED,
    CERTIFICATE_MISMATCH,
    KEYS_UNAVAILABLE,
    REVOCATIONS_UNAVAILABLE,
    ERROR,
)


class Refused(InvalidToken):
    """InvalidToken that says which check refused the token (``outcome``, one of REFUSALS)."""

    def __init__(self, outcome: str, description: str) -> None:
        super().__init__(description)
        self.outcome = outcome


class Unavailable(TemporarilyUnavailable):
    """TemporarilyUnavailable that says what was missing (``outcome``, one of REFUSALS)."""

    def __init__(self, outcome: str, description: str) -> None:
        super().__init__(description)
        self.outcome = outcome


def outcome_of(exc: BaseException) -> str:
    """The REFUSALS name of an exception a verification raised: its own, else ``malformed`` for
    an InvalidToken (the JOSE parsers' refusals), ``error`` for anything else."""
    if isinstance(exc, Refused | Unavailable):
        return exc.outcome
    return MALFORMED if isinstance(exc, InvalidToken) else ERROR


class VerifierMetrics(Protocol):
    """What a verifier counts, once per verification. ``cached``: the verified-token cache
    answered (no signature checked). Called on the hot path: keep it to a counter increment."""

    def accepted(self, cached: bool) -> None: ...

    def refused(self, outcome: str, cached: bool) -> None: ...
