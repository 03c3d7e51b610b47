"""authsvc: gRPC-native machine-to-machine authorization.

Subpackages:

- :mod:`authsvc.core`: pure OAuth 2.0 protocol logic (no gRPC, no SQL, no environment).
- :mod:`authsvc.store`: persistence of clients and keys (SQLite by default, PostgreSQL, memory).
- :mod:`authsvc.authority`: the TokenService's application layer (deployment, keys, clients,
  the keyring, issuing), transport-free.
- :mod:`authsvc.server`: the TokenService's gRPC edge and process wiring.
- :mod:`authsvc.verify`: what resource servers import to verify tokens.
- :mod:`authsvc.client`: the Python SDK.
"""

__version__ = "0.1.0"
