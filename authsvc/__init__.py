"""authsvc: gRPC-native machine-to-machine authorization.

Subpackages:

- :mod:`authsvc.core`: pure OAuth 2.0 protocol logic (no gRPC, no SQL, no environment).
- :mod:`authsvc.store`: persistence of clients and keys (SQLite by default, in-memory for tests).
- :mod:`authsvc.server`: the gRPC edge of the TokenService.
"""

__version__ = "0.1.0"
