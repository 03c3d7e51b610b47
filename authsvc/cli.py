"""The ``authsvc`` command: run the TokenService and manage its clients and keys.

Every flag of ``serve`` can also be set with an ``AUTHSVC_*`` environment variable (the flag
wins). Administrative commands open the same data directory and key-encryption key as the
server; a running server sees their changes within its client-cache lifetime (2 s).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

from authsvc import __version__
from authsvc.authority import Authority, KeyInfo, open_authority
from authsvc.authority.clients import MAX_SECRET_GRACE
from authsvc.authority.deployment import DB_FILE, DEV_KEK_FILE, uses_dev_kek
from authsvc.authority.ratelimit import DEFAULT_FAILED_AUTH_LIMIT_TEXT, DEFAULT_REDIS_PREFIX
from authsvc.core.client_assertion import DEFAULT_ASSERTION_MAX_LIFETIME
from authsvc.core.client_keys import MAX_JWKS_BYTES, SUPPORTED_ALGS
from authsvc.core.clients import DEFAULT_TOKEN_TTL, AuthRegistration, Client, ClientAuthMethod
from authsvc.core.errors import ConfigurationError, OAuthError
from authsvc.core.keys import KeyEncryptionKey
from authsvc.core.lifecycle import DEFAULT_JWKS_MAX_AGE, DEFAULT_KEY_PUBLISH_DELAY
from authsvc.core.ports import SystemClock, SystemRandom
from authsvc.core.ratelimit import RateLimit, parse_rate_limit
from authsvc.core.scopes import parse_scope
from authsvc.listen import (
    CommandParser,
    add_connection_limit_flags,
    check_client_ca,
    check_data_dir,
    check_readable_file,
    connection_limits_from,
    positive,
    startup_failure,
)
from authsvc.logsetup import configure as configure_logging
from authsvc.logsetup import format_flag, level_flag
from authsvc.store.base import StoreError

__all__ = ["main"]

DEFAULT_SECRET_GRACE = 300
"""Seconds the old secret keeps working after ``clients rotate-secret`` unless --grace says."""
_MAX_CLIENT_CACHE_TTL = 5
"""The longest a server may still issue tokens to a client after it is disabled (its client
cache, ``serve --client-cache-ttl``, at most 5 s): ``clients disable`` revokes those too."""


def default_data_dir(env: Mapping[str, str]) -> Path:
    base = env.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "authsvc"


def _env_bool(value: str | None) -> bool:
    return (value or "").strip().lower() in {"1", "true", "yes", "on"}


def _add_common(p: argparse.ArgumentParser, env: Mapping[str, str]) -> None:
    p.add_argument(
        "--data-dir",
        type=Path,
        default=Path(env["AUTHSVC_DATA_DIR"]) if env.get("AUTHSVC_DATA_DIR") else default_data_dir(env),
        help="directory of the SQLite database [env AUTHSVC_DATA_DIR; default $XDG_DATA_HOME/authsvc]",
    )
    p.add_argument(
        "--database-url",
        default=env.get("AUTHSVC_DATABASE_URL") or None,
        help="postgresql://… to keep clients and keys in PostgreSQL, shared by several replicas, instead of "
        "SQLite in the data dir [env AUTHSVC_DATABASE_URL]",
    )
    p.add_argument(
        "--kek-file",
        type=Path,
        action="append",
        default=None,
        help="file holding a key-encryption key (64 hex digits). Repeat it to give a list: the first "
        "encrypts, each decrypts what it encrypted (to change the KEK on a live deployment: new first, "
        "then old) [env AUTHSVC_KEK_FILE, several comma-separated; or the keys themselves in "
        "AUTHSVC_KEK, comma-separated, first encrypts; default: a development key generated in the data dir]",
    )


def _add_limit_flags(serve: argparse.ArgumentParser, env: Mapping[str, str]) -> None:
    """What an unauthenticated caller can hold: connections, streams, key watches, log lines."""
    add_connection_limit_flags(serve, env, "AUTHSVC_")
    for flag, var, default, kind, text in (
        ("--watch-streams-per-peer", "AUTHSVC_WATCH_STREAMS_PER_PEER", "8", int,
         "open WatchJwks streams per caller address; more get RESOURCE_EXHAUSTED"),
        ("--watch-streams-total", "AUTHSVC_WATCH_STREAMS_TOTAL", "256", int,
         "open WatchJwks streams in all (per process), below --max-concurrent-rpcs"),
        ("--refusal-log-rate", "AUTHSVC_REFUSAL_LOG_RATE", "10", float,
         "refused-request log lines per second (bursts of twice that), then one summary line"),
    ):  # fmt: skip
        serve.add_argument(
            flag,
            type=positive(kind),
            default=env.get(var) or default,
            help=f"{text} [env {var}; default {default}]",
        )


def _add_assertion_flags(serve: argparse.ArgumentParser, env: Mapping[str, str]) -> None:
    """private_key_jwt clients (RFC 7523): their assertions and where their keys are fetched."""
    serve.add_argument(
        "--client-assertion-max-lifetime",
        type=positive(int),
        default=env.get("AUTHSVC_CLIENT_ASSERTION_MAX_LIFETIME") or str(DEFAULT_ASSERTION_MAX_LIFETIME),
        metavar="SECONDS",
        help="how far ahead a private_key_jwt assertion's exp may be (10 to 3600; Authlib signs for 3600 "
        "unless told otherwise) [env AUTHSVC_CLIENT_ASSERTION_MAX_LIFETIME; default "
        f"{DEFAULT_ASSERTION_MAX_LIFETIME}]",
    )
    serve.add_argument(
        "--accept-token-endpoint-audience",
        action="store_true",
        default=_env_bool(env.get("AUTHSVC_ACCEPT_TOKEN_ENDPOINT_AUDIENCE")),
        help="also accept assertions whose aud is the token endpoint URL (ISSUER/oauth2/token), as many "
        "client libraries send; off, only the issuer is, as draft-ietf-oauth-rfc7523bis requires "
        "[env AUTHSVC_ACCEPT_TOKEN_ENDPOINT_AUDIENCE=1]",
    )
    serve.add_argument(
        "--client-jwks-allow-internal",
        action="store_true",
        default=_env_bool(env.get("AUTHSVC_CLIENT_JWKS_ALLOW_INTERNAL")),
        help="let clients' --jwks-uri hosts resolve to loopback, private or link-local addresses (off: the "
        "server fetches client keys from public addresses only) [env AUTHSVC_CLIENT_JWKS_ALLOW_INTERNAL=1]",
    )
    serve.add_argument(
        "--client-jwks-ca-file",
        type=Path,
        default=env.get("AUTHSVC_CLIENT_JWKS_CA_FILE") or None,
        metavar="FILE",
        help="PEM CA bundle to check clients' jwks_uri servers against [env AUTHSVC_CLIENT_JWKS_CA_FILE; "
        "default: the system's trust store]",
    )


def _rate_limit(text: str) -> RateLimit | None:
    try:
        return parse_rate_limit(text)
    except ConfigurationError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


_rate_limit.__name__ = "rate limit"  # argparse names the type in its messages


def _add_rate_limit_flags(serve: argparse.ArgumentParser, env: Mapping[str, str]) -> None:
    """The rate limits (README "Rate limits") and the Redis that shares them across replicas."""
    failed_default = DEFAULT_FAILED_AUTH_LIMIT_TEXT
    for flag, var, default, text in (
        ("--client-rate-limit", "AUTHSVC_CLIENT_RATE_LIMIT", "off",
         "requests per authenticated client, e.g. 100/s or 600/m,burst=50; more get RESOURCE_EXHAUSTED "
         "(HTTP 429) with a retry delay"),
        ("--peer-rate-limit", "AUTHSVC_PEER_RATE_LIMIT", "off",
         "requests per source address (an IPv6 /64), counted before authentication"),
        ("--failed-auth-limit", "AUTHSVC_FAILED_AUTH_LIMIT", failed_default,
         "failed client authentications per (client id, source address); past it that pair is "
         "refused without its secret being checked"),
    ):  # fmt: skip
        serve.add_argument(
            flag,
            type=_rate_limit,
            default=env.get(var) or default,
            metavar="RATE/UNIT[,burst=N]|off",
            help=f"{text} [env {var}; default {default}]",
        )
    serve.add_argument(
        "--redis-url",
        default=env.get("AUTHSVC_REDIS_URL") or None,
        help="redis://HOST:PORT/DB (rediss:// for TLS) to share the rate-limit buckets across replicas; "
        "while it does not answer each process limits on its own [env AUTHSVC_REDIS_URL; default: "
        "per process]",
    )
    serve.add_argument(
        "--redis-key-prefix",
        default=env.get("AUTHSVC_REDIS_KEY_PREFIX") or DEFAULT_REDIS_PREFIX,
        help="prefix of the rate-limit keys in Redis, to keep deployments sharing one Redis apart "
        f"[env AUTHSVC_REDIS_KEY_PREFIX; default {DEFAULT_REDIS_PREFIX}]",
    )


def _add_output(p: argparse.ArgumentParser) -> None:
    p.add_argument("--output", "-o", choices=["table", "json"], default="table", help="output format")


def _add_key_flags(
    p: argparse.ArgumentParser, keys: argparse.ArgumentParser | argparse._MutuallyExclusiveGroup, algs: str
) -> None:
    """A private_key_jwt client's keys (``clients create`` and ``set-keys``): ``keys`` takes
    --jwks-file and --jwks-uri, ``p`` --signing-alg, whose default ``algs`` describes."""
    keys.add_argument(
        "--jwks-file",
        type=Path,
        metavar="FILE",
        help="private_key_jwt: the client's public keys, a JWK Set (RSA of 2048 bits or more, or EC P-256; "
        "each with a kid; no private parts)",
    )
    keys.add_argument(
        "--jwks-uri",
        metavar="URL",
        help="private_key_jwt: the https:// URL where the client publishes its JWK Set; fetched and cached "
        "by the server, so the client rotates its keys without re-registering",
    )
    p.add_argument(
        "--signing-alg",
        action="append",
        choices=list(SUPPORTED_ALGS),
        help="private_key_jwt: an algorithm the client signs its assertions with; repeat for several "
        f"(default {algs})",
    )


def build_parser(env: Mapping[str, str]) -> argparse.ArgumentParser:
    # every subparser is a CommandParser too: no abbreviated flags, one-line mistakes
    parser = CommandParser(prog="authsvc", description="gRPC machine-to-machine authorization server")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser(
        "serve",
        help="run the TokenService",
        description="Run the TokenService (OAuth 2.0 client credentials over gRPC).",
    )
    serve.add_argument(
        "--listen",
        default=env.get("AUTHSVC_LISTEN", "127.0.0.1:50051"),
        help="HOST:PORT to listen on [env AUTHSVC_LISTEN; default 127.0.0.1:50051]",
    )
    serve.add_argument(
        "--http-listen",
        default=env.get("AUTHSVC_HTTP_LISTEN") or None,
        help="HOST:PORT (or unix:PATH) for the OAuth endpoints over HTTP: /oauth2/token, "
        "/.well-known/jwks.json, /.well-known/oauth-authorization-server, /oauth2/introspect, "
        "/oauth2/revoke; the TLS flags apply to it too [env AUTHSVC_HTTP_LISTEN; default off]",
    )
    serve.add_argument(
        "--metrics-listen",
        default=env.get("AUTHSVC_METRICS_LISTEN") or None,
        help="HOST:PORT (or unix:PATH) for the management port: GET /metrics (Prometheus), /livez, "
        "/readyz. Always plaintext, on any address (probes and Prometheus scrape in plaintext; it "
        "serves no secret); with --workers above 1 the workers share it and each scrape shows the "
        "whole group [env AUTHSVC_METRICS_LISTEN; default off]",
    )
    _add_common(serve, env)
    serve.add_argument(
        "--issuer",
        default=env.get("AUTHSVC_ISSUER", "https://authsvc.local"),
        help="issuer URL, the iss of every token [env AUTHSVC_ISSUER; default https://authsvc.local]",
    )
    serve.add_argument(
        "--tls-cert",
        type=Path,
        default=env.get("AUTHSVC_TLS_CERT") or None,
        help="PEM certificate chain for TLS [env AUTHSVC_TLS_CERT]",
    )
    serve.add_argument(
        "--tls-key",
        type=Path,
        default=env.get("AUTHSVC_TLS_KEY") or None,
        help="PEM private key for TLS [env AUTHSVC_TLS_KEY]",
    )
    serve.add_argument(
        "--mtls-listen",
        default=env.get("AUTHSVC_MTLS_LISTEN") or None,
        help="HOST:PORT for a second gRPC port that requires a client certificate issued by --client-ca "
        "(RFC 8705 mutual TLS): tokens issued there are bound to the certificate (cnf.x5t#S256); needs "
        "--tls-cert/--tls-key [env AUTHSVC_MTLS_LISTEN; default off]",
    )
    serve.add_argument(
        "--mtls-http-listen",
        default=env.get("AUTHSVC_MTLS_HTTP_LISTEN") or None,
        help="HOST:PORT for the OAuth HTTP endpoints over mutual TLS (a client certificate issued by "
        "--client-ca required), named in the metadata's mtls_endpoint_aliases "
        "[env AUTHSVC_MTLS_HTTP_LISTEN; default off]",
    )
    serve.add_argument(
        "--client-ca",
        type=Path,
        default=env.get("AUTHSVC_CLIENT_CA") or None,
        help="PEM file of the CA certificate(s) whose client certificates the mutual-TLS listeners "
        "accept [env AUTHSVC_CLIENT_CA]",
    )
    serve.add_argument(
        "--mtls-base-url",
        default=env.get("AUTHSVC_MTLS_BASE_URL") or None,
        help="the public https:// origin at which --mtls-http-listen is reached, for "
        "mtls_endpoint_aliases [env AUTHSVC_MTLS_BASE_URL; default: the issuer's host, that port]",
    )
    serve.add_argument(
        "--insecure",
        action="store_true",
        default=_env_bool(env.get("AUTHSVC_INSECURE")),
        help="allow plaintext on a non-loopback address (only behind a TLS-terminating proxy) "
        "[env AUTHSVC_INSECURE=1]",
    )
    serve.add_argument(
        "--workers",
        type=int,
        default=env.get("AUTHSVC_WORKERS") or None,
        help="server processes sharing the ports (SO_REUSEPORT), each signing on its own core; 1 is a "
        "single process [env AUTHSVC_WORKERS; default: the CPUs this process may use (its affinity "
        "mask, lowered to its cgroup's CPU quota), or 1 when a listener is port 0 or unix:]",
    )
    serve.add_argument(
        "--key-publish-delay",
        type=int,
        default=env.get("AUTHSVC_KEY_PUBLISH_DELAY") or str(DEFAULT_KEY_PUBLISH_DELAY),
        help="seconds a new signing key is published before it signs; at least the JWKS max age "
        f"[env AUTHSVC_KEY_PUBLISH_DELAY; default {DEFAULT_KEY_PUBLISH_DELAY}]",
    )
    serve.add_argument(
        "--key-rotation-period",
        type=int,
        default=env.get("AUTHSVC_KEY_ROTATION_PERIOD") or None,
        help="rotate the signing key automatically this often, in seconds "
        "[env AUTHSVC_KEY_ROTATION_PERIOD; default: only with 'authsvc keys rotate']",
    )
    serve.add_argument(
        "--jwks-max-age",
        type=int,
        default=env.get("AUTHSVC_JWKS_MAX_AGE") or str(DEFAULT_JWKS_MAX_AGE),
        help="seconds verifiers may cache the JWKS "
        f"[env AUTHSVC_JWKS_MAX_AGE; default {DEFAULT_JWKS_MAX_AGE}]",
    )
    serve.add_argument(
        "--client-cache-ttl",
        type=float,
        default=env.get("AUTHSVC_CLIENT_CACHE_TTL") or "2",
        help="seconds a client record is cached per process: how soon a disable or rotation takes effect "
        "(0 < ttl <= 5) [env AUTHSVC_CLIENT_CACHE_TTL; default 2]",
    )
    serve.add_argument(
        "--grace-period",
        type=float,
        default=env.get("AUTHSVC_GRACE_PERIOD") or "5",
        help="seconds in-flight calls get at shutdown [env AUTHSVC_GRACE_PERIOD; default 5]",
    )
    _add_limit_flags(serve, env)
    _add_assertion_flags(serve, env)
    _add_rate_limit_flags(serve, env)
    serve.add_argument(
        "--log-level",
        default=env.get("AUTHSVC_LOG_LEVEL", "INFO"),
        type=level_flag,  # debug works as DEBUG does; a bad value is a usage error
        metavar="LEVEL",
        help="debug, info, warning or error, in any case [env AUTHSVC_LOG_LEVEL; default INFO]",
    )
    serve.add_argument(
        "--log-format",
        default=env.get("AUTHSVC_LOG_FORMAT", "text"),
        type=format_flag,
        metavar="FORMAT",
        help="text, or json: one JSON object per line (time, level, logger, message and the event's "
        "fields; the authsvc.audit logger has one event per token decision and admin action) "
        "[env AUTHSVC_LOG_FORMAT; default text]",
    )

    clients = sub.add_parser("clients", help="manage OAuth clients").add_subparsers(
        dest="action", required=True
    )
    create = clients.add_parser("create", help="register a client; prints its secret once")
    create.add_argument("--client-id", help="the id (default: generated)")
    create.add_argument(
        "--scope", required=True, help='allowed scopes, space-separated, e.g. "payments:read payments:write"'
    )
    create.add_argument(
        "--audience",
        action="append",
        required=True,
        help="an allowed audience; repeat for several; the first is the default",
    )
    create.add_argument(
        "--ttl",
        type=int,
        default=DEFAULT_TOKEN_TTL,
        help=f"access-token lifetime in seconds (default {DEFAULT_TOKEN_TTL})",
    )
    create.add_argument(
        "--auth-method",
        choices=[m.value for m in ClientAuthMethod],
        default=ClientAuthMethod.CLIENT_SECRET_BASIC.value,
        help="how the client authenticates at the token endpoint, the one way it may: a generated secret "
        "(client_secret_basic, which also accepts client_secret_post; or client_secret_post), a JWT signed "
        "with its own key (private_key_jwt, RFC 7523: give --jwks-file or --jwks-uri), or its TLS "
        "certificate (tls_client_auth, RFC 8705: give --tls-san-dns or --tls-subject-dn) "
        "(default client_secret_basic)",
    )
    _add_key_flags(create, create, "RS256")
    create.add_argument(
        "--tls-san-dns",
        metavar="NAME",
        help="tls_client_auth: the DNS name (SAN) of the client's certificate",
    )
    create.add_argument(
        "--tls-subject-dn",
        metavar="DN",
        help="tls_client_auth: the subject of the client's certificate, e.g. CN=shop,O=Example (RFC 4514)",
    )
    for name, helptext, description in [
        ("list", "list clients", None),
        ("show", "show one client", "Show one client, and whether a previous secret is still accepted."),
        (
            "disable",
            "refuse its secret and every token issued to it so far",
            "Refuse the client's secret, and revoke every token issued to it until now (and in the next "
            f"{_MAX_CLIENT_CACHE_TTL + 1} s, while servers' client caches may still issue some): running "
            "verifiers fed by WatchRevocations refuse those tokens within seconds.",
        ),
        (
            "enable",
            "accept it again: new tokens work, tokens from before the disable stay refused",
            "Accept the client again. New tokens work; tokens issued before the disable (and in the "
            f"{_MAX_CLIENT_CACHE_TTL + 1} s after it, while servers' client caches may have still issued "
            "them) stay refused. Nothing is deleted from the revocation list: a later token has a later "
            "iat than the disable's cut-off, and the entry expires by itself once the old tokens have.",
        ),
        (
            "rotate-secret",
            "issue a new secret; the old one keeps working for --grace seconds",
            "Issue a new secret, accepted at once (by running servers within their client-cache "
            "lifetime, 2 s). The old secret keeps working until --grace seconds have passed, then never "
            "again. A second rotation during a grace period is refused unless --end-grace.",
        ),
    ]:
        p = clients.add_parser(name, help=helptext, description=description)
        if name != "list":
            p.add_argument("client_id", metavar="ID")
        if name == "rotate-secret":
            p.add_argument(
                "--grace",
                type=int,
                default=DEFAULT_SECRET_GRACE,
                metavar="SECONDS",
                help="how long the old secret keeps working; 0 stops it at once "
                f"(default {DEFAULT_SECRET_GRACE}, at most {MAX_SECRET_GRACE})",
            )
            p.add_argument(
                "--end-grace",
                action="store_true",
                help="rotate even during the grace period of a previous rotation: its old secret stops now",
            )
        _add_common(p, env)
        _add_output(p)
    _add_common(create, env)
    _add_output(create)
    set_keys = clients.add_parser(
        "set-keys",
        help="replace a private_key_jwt client's keys: a new JWK Set, or a jwks_uri",
        description="Replace the public keys of a private_key_jwt client, whole, checked as 'create' "
        "checks them: a JWK Set (--jwks-file) or the URL it publishes one at (--jwks-uri). Running "
        "servers use the new keys within their client-cache lifetime (2 s, serve --client-cache-ttl); "
        "from then on an assertion signed with a key that left the set is refused. To rotate without "
        "failed calls, put the old and the new key in the set, move the client to the new key, then "
        "set the new key alone.",
    )
    set_keys.add_argument("client_id", metavar="ID")
    keys_flags = set_keys.add_mutually_exclusive_group(required=True)
    _add_key_flags(set_keys, keys_flags, "the client's current ones")
    _add_common(set_keys, env)
    _add_output(set_keys)

    tokens = sub.add_parser("tokens", help="revoke access tokens").add_subparsers(
        dest="action", required=True
    )
    tokens_revoke = tokens.add_parser(
        "revoke",
        help="revoke one token by its jti: verifiers refuse it within seconds",
        description="Put one access token on the revocation list, by its jti claim (what the server "
        "logs for every token it issues). Running verifiers fed by WatchRevocations refuse it within "
        "seconds; other tokens of the same client keep working.",
    )
    tokens_revoke.add_argument("--jti", required=True, help="the token's jti claim")
    tokens_revoke.add_argument(
        "--expires-at",
        type=int,
        metavar="EPOCH",
        help="the token's exp (seconds since the epoch), if known: the entry is forgotten after it "
        "(default: the longest a token can live)",
    )
    _add_common(tokens_revoke, env)
    _add_output(tokens_revoke)

    keys = sub.add_parser("keys", help="manage signing keys").add_subparsers(dest="action", required=True)
    keys_list = keys.add_parser("list", help="list signing keys (never the private part)")
    keys_rotate = keys.add_parser(
        "rotate", help="create the next signing key: published now, signing once published for the delay"
    )
    keys_import = keys.add_parser("import", help="bring your own RSA key (PEM), as the next key")
    keys_import.add_argument(
        "--pem", type=Path, required=True, help="PEM private key file (PKCS#1 or PKCS#8)"
    )
    keys_import.add_argument(
        "--password-file", type=Path, help="file holding the PEM's password, if encrypted"
    )
    keys_revoke = keys.add_parser(
        "revoke", help="unpublish a compromised key at once: the tokens it signed stop verifying"
    )
    keys_revoke.add_argument("kid", metavar="KID")
    keys_rewrap = keys.add_parser(
        "rewrap",
        help="re-encrypt every private key and secret under one key-encryption key: the new one given, "
        "or else the first of the KEK list (safe while servers given 'new,old' run)",
    )
    keys_rewrap.add_argument(
        "--new-kek-file",
        type=Path,
        help="file holding the new KEK [or the key itself in AUTHSVC_NEW_KEK; default: the first KEK "
        "of --kek-file/AUTHSVC_KEK when they list several]. With the development kek.key as the KEK, "
        "rewrap replaces that file with the new key",
    )
    for p in (keys_list, keys_rotate, keys_import, keys_revoke, keys_rewrap):
        _add_common(p, env)
        _add_output(p)
    return parser


def _ts(value: int | None) -> str:
    return "-" if value is None else datetime.fromtimestamp(value, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


_AUTH_FIELDS = {
    ClientAuthMethod.PRIVATE_KEY_JWT: ("jwks", "jwks_uri", "signing_algs"),
    ClientAuthMethod.TLS_CLIENT_AUTH: ("tls_san_dns", "tls_subject_dn"),
}


def _client_dict(c: Client, now: float) -> dict[str, object]:
    """The client without its hashes; ``previous_secret_accepted`` says if a rotation's grace lasts.
    The registration data of every method is there (None where it is not the client's): its
    public keys as the JWK Set itself."""
    d = asdict(c)
    del d["secret_hash"], d["previous_secret_hash"]
    d["auth_method"] = c.auth_method.value
    d["jwks"] = None if c.jwks is None else json.loads(c.jwks)
    d["previous_secret_accepted"] = c.previous_secret_valid(now)
    if not d["previous_secret_accepted"]:
        d["previous_secret_expires_at"] = None
    return d


def _table_dict(c: Client, d: dict[str, object]) -> dict[str, object]:
    """What the table shows of ``d``: only the registration data of the client's own method, and
    its keys by kid and type."""
    own = _AUTH_FIELDS.get(c.auth_method, ())
    shown = {
        k: v for k, v in d.items() if k not in {f for fs in _AUTH_FIELDS.values() for f in fs} or k in own
    }
    if "jwks" in shown:
        keys = json.loads(c.jwks) if c.jwks is not None else None
        shown["jwks"] = "-" if keys is None else [f"{k.get('kid')}({k.get('kty')})" for k in keys["keys"]]
    if not c.has_secret:
        shown.pop("previous_secret_accepted", None)
        shown.pop("previous_secret_expires_at", None)
    return {k: "-" if v is None else v for k, v in shown.items()}


def _table(rows: list[dict[str, object]], columns: list[str]) -> str:
    cells = [[" ".join(v) if isinstance(v := r[c], list | tuple) else str(v) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip()]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() for row in cells]
    return "\n".join(lines)


def _kek_files(args: argparse.Namespace, env: Mapping[str, str]) -> tuple[Path, ...] | None:
    """The KEK files: the repeated flag, else AUTHSVC_KEK_FILE's comma-separated list."""
    if args.kek_file:
        return tuple(args.kek_file)
    listed = [p.strip() for p in env.get("AUTHSVC_KEK_FILE", "").split(",") if p.strip()]
    return tuple(Path(p) for p in listed) or None


_READ_ONLY = {("clients", "list"), ("clients", "show"), ("keys", "list")}


def _check_files(args: argparse.Namespace, env: Mapping[str, str]) -> None:
    """Refuse, on one line, what would fail later: an empty --database-url, an unreadable KEK file,
    an unusable data dir. A read-only command never creates a data dir or a development KEK."""
    if args.database_url is not None and not args.database_url.strip():
        raise ConfigurationError(
            "--database-url is empty: give a postgresql:// URL, or leave it out for SQLite in the data dir"
        )
    kek_files = _kek_files(args, env)
    for path in kek_files or ():
        check_readable_file(path, "--kek-file")
    dev_kek = uses_dev_kek(kek=env.get("AUTHSVC_KEK") or None, kek_file=kek_files)
    if not args.database_url or dev_kek:
        if (args.command, getattr(args, "action", None)) in _READ_ONLY:
            needed = [DEV_KEK_FILE] if dev_kek else []
            for name in ([] if args.database_url else [DB_FILE]) + needed:
                if not (args.data_dir / name).is_file():
                    raise ConfigurationError(
                        f"no {name} in {args.data_dir}: point --data-dir (or AUTHSVC_DATA_DIR) at the "
                        "directory 'authsvc serve' uses"
                    )
        check_data_dir(args.data_dir, "--data-dir")


def _authority(args: argparse.Namespace, env: Mapping[str, str]) -> Authority:
    _check_files(args, env)
    return open_authority(
        args.data_dir,
        database_url=args.database_url,
        kek=env.get("AUTHSVC_KEK") or None,
        kek_file=_kek_files(args, env),
        clock=SystemClock(),
        random=SystemRandom(),
    )


def _print_client(
    c: Client, output: str, now: float, secret: str | None = None, extra: Mapping[str, object] | None = None
) -> None:
    d = {**_client_dict(c, now), **(extra or {})}
    if output != "json":
        if d["previous_secret_expires_at"] is not None:
            d["previous_secret_expires_at"] = _ts(c.previous_secret_expires_at)
        d = _table_dict(c, d)
    if secret is not None:
        d = {
            "client_id": c.client_id,
            "client_secret": secret,
            **{k: v for k, v in d.items() if k != "client_id"},
        }
    if output == "json":
        print(json.dumps(d, indent=2))
        return
    for k, v in d.items():
        print(f"{k + ':':<20}{' '.join(v) if isinstance(v, list | tuple) else v}")
    if secret is not None:
        print("\nStore the client secret now: it is not kept and will not be shown again.", file=sys.stderr)


def _jwks_file(args: argparse.Namespace) -> str | None:
    """The JWK Set of --jwks-file, read (its checks are the registry's), or None without it."""
    if args.jwks_file is None:
        return None
    check_readable_file(args.jwks_file, "--jwks-file")
    if args.jwks_file.stat().st_size > MAX_JWKS_BYTES:
        raise ConfigurationError(f"--jwks-file {args.jwks_file} is larger than {MAX_JWKS_BYTES} bytes")
    return args.jwks_file.read_text(encoding="utf-8")  # type: ignore[no-any-return]


def _auth_registration(args: argparse.Namespace) -> AuthRegistration:
    """The authentication method of ``clients create`` and its data, from the flags."""
    return AuthRegistration(
        method=ClientAuthMethod(args.auth_method),
        jwks=_jwks_file(args),
        jwks_uri=args.jwks_uri,
        signing_algs=None if args.signing_alg is None else tuple(args.signing_alg),
        tls_san_dns=args.tls_san_dns,
        tls_subject_dn=args.tls_subject_dn,
    )


def _clients(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    authority = _authority(args, env)
    now = authority.clock.now()
    if args.action == "create":
        client, secret = authority.clients.register(
            client_id=args.client_id,
            scopes=list(parse_scope(args.scope)),
            audiences=args.audience,
            token_ttl=args.ttl,
            auth=_auth_registration(args),
        )
        _print_client(client, args.output, now, secret)
        if client.auth_method is ClientAuthMethod.TLS_CLIENT_AUTH:
            print(
                "\nNote: a tls_client_auth client authenticates only on a mutual-TLS listener "
                "(authsvc serve --mtls-listen/--mtls-http-listen --client-ca), with its certificate.",
                file=sys.stderr,
            )
    elif args.action == "list":
        clients = [_client_dict(c, now) for c in authority.clients.list_clients()]
        if args.output == "json":
            print(json.dumps(clients, indent=2))
        else:
            print(
                _table(
                    clients,
                    [
                        "client_id",
                        "enabled",
                        "auth_method",
                        "allowed_scopes",
                        "allowed_audiences",
                        "token_ttl",
                    ],
                )
            )
    elif args.action == "show":
        _print_client(authority.clients.get_client(args.client_id), args.output, now)
    elif args.action == "disable":
        client = authority.clients.set_enabled(args.client_id, False)
        # the tokens it holds are refused by verifiers too, not only new token requests
        entry = authority.revocations.revoke_client(client.client_id, also_next=_MAX_CLIENT_CACHE_TTL)
        _print_client(client, args.output, now, extra={"tokens_refused_if_issued_before": entry.not_before})
    elif args.action == "enable":
        _print_client(authority.clients.set_enabled(args.client_id, True), args.output, now)
    elif args.action == "rotate-secret":
        client, secret = authority.clients.rotate_secret(
            args.client_id, grace=args.grace, end_grace=args.end_grace
        )
        _print_client(client, args.output, now, secret)
    elif args.action == "set-keys":
        client = authority.clients.set_keys(
            args.client_id,
            jwks=_jwks_file(args),
            jwks_uri=args.jwks_uri,
            signing_algs=None if args.signing_alg is None else tuple(args.signing_alg),
        )
        _print_client(client, args.output, now)
        print(
            "\nRunning servers use these keys within their client-cache lifetime (serve "
            "--client-cache-ttl, 2 s by default); assertions signed with a key not in them are refused "
            "from then on.",
            file=sys.stderr,
        )
    return 0


def _tokens(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    authority = _authority(args, env)
    if args.action == "revoke":
        entry = authority.revocations.revoke_token(args.jti, expires_at=args.expires_at)
        if args.output == "json":
            print(json.dumps({"jti": entry.jti, "expires_at": entry.expires_at}, indent=2))
        else:
            print(f"revoked jti {entry.jti}: verifiers refuse it (entry kept until {_ts(entry.expires_at)})")
    return 0


def _print_keys(keys: list[KeyInfo], output: str) -> None:
    rows = [asdict(k) for k in keys]
    if output == "json":
        print(json.dumps(rows if len(rows) != 1 else rows[0], indent=2))
        return
    for k in rows:
        for f in ("created_at", "activated_at", "deactivated_at", "retire_after", "retired_at", "revoked_at"):
            k[f] = _ts(k[f])
    print(
        _table(rows, ["kid", "state", "origin", "created_at", "activated_at", "retire_after", "retired_at"])
    )


def _keys(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    authority = _authority(args, env)
    if args.action == "list":
        keys = authority.keys.list_keys()
        if args.output == "json":
            print(json.dumps([asdict(k) for k in keys], indent=2))
        else:
            _print_keys(keys, "table")
    elif args.action == "rotate":
        _print_keys([authority.keys.rotate()], args.output)
    elif args.action == "import":
        password = args.password_file.read_bytes().rstrip(b"\r\n") if args.password_file else None
        _print_keys([authority.keys.import_key(args.pem.read_bytes(), password=password)], args.output)
    elif args.action == "revoke":
        _print_keys([authority.keys.revoke(args.kid)], args.output)
    elif args.action == "rewrap":
        new_text = args.new_kek_file.read_text() if args.new_kek_file else env.get("AUTHSVC_NEW_KEK")
        if not new_text and len(authority.deployment.keks) == 1:
            raise ConfigurationError(
                "give the new key-encryption key with --new-kek-file or AUTHSVC_NEW_KEK, "
                "or the KEKs as a list with the new one first"
            )
        changed = authority.deployment.rewrap(KeyEncryptionKey.from_text(new_text) if new_text else None)
        print(
            json.dumps({"rewrapped": changed, "kek_id": authority.deployment.kek.kek_id})
            if args.output == "json"
            else f"re-encrypted {changed} keys and secrets under KEK {authority.deployment.kek.kek_id}"
        )
    return 0


def _serve(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    # grpc is imported only by the command that needs it: admin commands start faster without it
    from authsvc.server.app import run  # noqa: PLC0415
    from authsvc.server.config import ServeConfig  # noqa: PLC0415

    _check_files(args, env)
    for flag, path in (
        ("--tls-cert", args.tls_cert),
        ("--tls-key", args.tls_key),
        ("--client-jwks-ca-file", args.client_jwks_ca_file),
    ):
        if path is not None:
            check_readable_file(path, flag)
    if args.client_ca is not None:
        check_client_ca(args.client_ca)

    log_setup = configure_logging(level=args.log_level, log_format=args.log_format)
    config = ServeConfig(
        data_dir=args.data_dir,
        listen=args.listen,
        http_listen=args.http_listen,
        metrics_listen=args.metrics_listen,
        issuer=args.issuer,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        mtls_listen=args.mtls_listen,
        mtls_http_listen=args.mtls_http_listen,
        client_ca=args.client_ca,
        mtls_base_url=args.mtls_base_url,
        insecure=args.insecure,
        kek=env.get("AUTHSVC_KEK") or None,
        kek_file=_kek_files(args, env),
        workers=args.workers,
        database_url=args.database_url,
        key_publish_delay=args.key_publish_delay,
        key_rotation_period=args.key_rotation_period,
        jwks_max_age=args.jwks_max_age,
        client_cache_ttl=args.client_cache_ttl,
        grace_period=args.grace_period,
        limits=connection_limits_from(args),
        watch_streams_per_peer=args.watch_streams_per_peer,
        watch_streams_total=args.watch_streams_total,
        refusal_log_rate=args.refusal_log_rate,
        client_assertion_max_lifetime=args.client_assertion_max_lifetime,
        accept_token_endpoint_audience=args.accept_token_endpoint_audience,
        client_jwks_allow_internal=args.client_jwks_allow_internal,
        client_jwks_ca_file=args.client_jwks_ca_file,
        client_rate_limit=args.client_rate_limit,
        peer_rate_limit=args.peer_rate_limit,
        failed_auth_limit=args.failed_auth_limit,
        redis_url=args.redis_url,
        redis_key_prefix=args.redis_key_prefix,
    )
    try:
        return run(config, log_format=args.log_format)
    finally:
        log_setup.stop()  # every queued line is written before the process exits


COMMANDS: dict[str, Callable[[argparse.Namespace, Mapping[str, str]], int]] = {
    "serve": _serve,
    "clients": _clients,
    "keys": _keys,
    "tokens": _tokens,
}


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    env = os.environ if env is None else env
    args = build_parser(env).parse_args(argv)
    if args.command != "serve":
        logging.basicConfig(level=logging.WARNING, format="authsvc: %(levelname)s: %(message)s")
    try:
        return COMMANDS[args.command](args, env)
    except (OAuthError, ConfigurationError, StoreError) as exc:
        print(f"authsvc: error: {exc}", file=sys.stderr)
        return 1
    except (OSError, RuntimeError) as exc:  # a listener that cannot start, a file that cannot be read
        mtls = getattr(args, "mtls_listen", None) or getattr(args, "mtls_http_listen", None)
        message = startup_failure(
            exc,
            grpc_flag="--listen (or --mtls-listen)" if mtls else "--listen",
            http_flag="--http-listen (or --mtls-http-listen)" if mtls else "--http-listen",
        )
        if message is None:
            raise
        print(f"authsvc: error: {message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
