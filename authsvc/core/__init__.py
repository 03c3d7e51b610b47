"""The protocol core: pure OAuth 2.0 logic, free of gRPC, SQL, the environment, the clock and
randomness (the last two are injected through :mod:`authsvc.core.ports`).

Import the modules themselves (``authsvc.core.grants``, ``authsvc.core.keys``, ...): this package
imports none of them, so that ``authsvc.client`` and ``authsvc.verify``, which need only the
errors and a few helpers, never load token signing or the grants.
"""
