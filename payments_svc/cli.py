"""The ``payments-svc`` command (the PaymentService arrives with the verification issue)."""

from __future__ import annotations

import sys
from collections.abc import Sequence

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    print("payments-svc: the PaymentService is not built yet", file=sys.stderr)
    return 2
