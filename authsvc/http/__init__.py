"""The TokenService's HTTP edge (``authsvc serve --http-listen``): the OAuth endpoints over HTTP,
beside gRPC in the same process, on the same application layer. Import
:mod:`authsvc.http.oauth` for the endpoints; this package imports nothing."""
