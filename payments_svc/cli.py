"""The ``payments-svc`` command. Every flag can also be set with a ``PAYMENTS_*`` environment
variable (the flag wins)."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from authsvc import __version__
from authsvc.core.errors import ConfigurationError
from authsvc.listen import (
    CommandParser,
    add_connection_limit_flags,
    check_client_ca,
    check_data_dir,
    check_readable_file,
    connection_limits_from,
    startup_failure,
)
from authsvc.logsetup import configure as configure_logging
from authsvc.logsetup import format_flag, level_flag
from payments_svc.errors import DatabaseUnavailable

__all__ = ["main"]


def _env_bool(value: str | None) -> bool:
    return (value or "").strip().lower() in {"1", "true", "yes", "on"}


def build_parser(env: Mapping[str, str]) -> argparse.ArgumentParser:
    # every subparser is a CommandParser too: no abbreviated flags, one-line mistakes
    parser = CommandParser(
        prog="payments-svc",
        description="The PaymentService, a payment gateway that accepts authsvc access tokens",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the PaymentService")
    default_dir = Path(env.get("XDG_DATA_HOME") or Path.home() / ".local" / "share") / "payments-svc"

    def opt(flag: str, var: str, default: str | None, text: str, **kw: object) -> None:
        value = env.get(var) or default
        serve.add_argument(flag, default=value, help=f"{text} [env {var}; default {default}]", **kw)  # type: ignore[arg-type]

    opt("--listen", "PAYMENTS_LISTEN", "127.0.0.1:50052", "HOST:PORT to listen on")
    opt(
        "--http-listen",
        "PAYMENTS_HTTP_LISTEN",
        None,
        "HOST:PORT (or unix:PATH) for the HTTP/JSON API beside gRPC (POST /api/v1/payments, ...); "
        "the TLS flags apply to it too",
    )
    opt(
        "--metrics-listen",
        "PAYMENTS_METRICS_LISTEN",
        None,
        "HOST:PORT (or unix:PATH) for the management port: GET /metrics (Prometheus), /livez, "
        "/readyz (ready while it holds a key set that is not stale: see --jwks-max-staleness). "
        "Always plaintext, on any address (probes and Prometheus scrape in plaintext; it serves "
        "no secret)",
    )
    opt(
        "--data-dir",
        "PAYMENTS_DATA_DIR",
        str(default_dir),
        "directory of the SQLite payments database",
        type=Path,
    )
    opt(
        "--database-url",
        "PAYMENTS_DATABASE_URL",
        None,
        "postgresql://… to keep payments in PostgreSQL, shared by several replicas, instead of SQLite in "
        "the data dir",
    )
    opt(
        "--token-service",
        "PAYMENTS_TOKEN_SERVICE",
        "127.0.0.1:50051",
        "HOST:PORT of the TokenService whose keys (GetJwks) verify tokens",
    )
    opt(
        "--jwks-url",
        "PAYMENTS_JWKS_URL",
        None,
        "the TokenService's jwks_uri (https://…/.well-known/jwks.json; http only to loopback): take the "
        "signing keys from it instead of --token-service",
    )
    opt(
        "--token-service-ca",
        "PAYMENTS_TOKEN_SERVICE_CA",
        None,
        "PEM CA bundle: reach the TokenService (or the --jwks-url) over TLS with it",
        type=Path,
    )
    opt(
        "--client-id",
        "PAYMENTS_CLIENT_ID",
        None,
        "this resource server's own client at the TokenService (scope authsvc:revocations), used only to "
        "read the revocation list (WatchRevocations on --token-service, or over HTTP with --jwks-url: "
        "see --revocations-url; TLS with --token-service-ca); "
        "without it tokens are verified without the list",
    )
    opt(
        "--client-secret-file",
        "PAYMENTS_CLIENT_SECRET_FILE",
        None,
        "file holding that client's secret, read once at start-up",
        type=Path,
    )
    opt(
        "--revocations-url",
        "PAYMENTS_REVOCATIONS_URL",
        None,
        "poll the revocation list over HTTP here (https://…/oauth2/revocations; http only to loopback) "
        "instead of WatchRevocations; default with --jwks-url: beside it "
        "(…/.well-known/jwks.json becomes …/oauth2/revocations)",
    )
    opt(
        "--revocations-poll-interval",
        "PAYMENTS_REVOCATIONS_POLL_INTERVAL",
        "5",
        "seconds between two polls of --revocations-url",
        type=float,
    )
    opt(
        "--revocations-max-staleness",
        "PAYMENTS_REVOCATIONS_MAX_STALENESS",
        "60",
        "seconds without a working revocation stream after which the list is stale",
        type=float,
    )
    serve.add_argument(
        "--revocations-fail-closed",
        action="store_true",
        default=_env_bool(env.get("PAYMENTS_REVOCATIONS_FAIL_CLOSED")),
        help="refuse every token (UNAVAILABLE) while the revocation list is stale or not yet read, "
        "instead of verifying without its newest entries (fail open, the default) "
        "[env PAYMENTS_REVOCATIONS_FAIL_CLOSED=1]",
    )
    opt("--issuer", "PAYMENTS_ISSUER", "https://authsvc.local", "the issuer tokens must come from")
    opt("--audience", "PAYMENTS_AUDIENCE", "payments", "the audience tokens must be meant for")
    opt("--tls-cert", "PAYMENTS_TLS_CERT", None, "PEM certificate chain for TLS", type=Path)
    opt("--tls-key", "PAYMENTS_TLS_KEY", None, "PEM private key for TLS", type=Path)
    opt(
        "--client-ca",
        "PAYMENTS_CLIENT_CA",
        None,
        "PEM CA certificate(s): ask callers for a client certificate issued by it, so that "
        "certificate-bound tokens (RFC 8705, authsvc serve --mtls-listen) are accepted from the client "
        "they were issued to. gRPC then REQUIRES one of every caller (grpcio cannot ask without "
        "requiring); HTTP asks, and a caller without one may still use unbound tokens. Needs --tls-cert",
        type=Path,
    )
    serve.add_argument(
        "--insecure",
        action="store_true",
        default=_env_bool(env.get("PAYMENTS_INSECURE")),
        help="allow plaintext on a non-loopback address [env PAYMENTS_INSECURE=1]",
    )
    serve.add_argument(
        "--insecure-token-service",
        action="store_true",
        default=_env_bool(env.get("PAYMENTS_INSECURE_TOKEN_SERVICE")),
        help="fetch signing keys from a non-loopback TokenService without TLS (only inside a trusted mesh) "
        "[env PAYMENTS_INSECURE_TOKEN_SERVICE=1]",
    )
    opt("--leeway", "PAYMENTS_LEEWAY", "30", "seconds of clock skew tolerated on exp, nbf, iat", type=float)
    opt("--grace-period", "PAYMENTS_GRACE_PERIOD", "5", "seconds in-flight calls get at shutdown", type=float)
    opt(
        "--jwks-max-age",
        "PAYMENTS_JWKS_MAX_AGE",
        "60",
        "seconds between scheduled JWKS refreshes",
        type=float,
    )
    opt(
        "--jwks-cooldown",
        "PAYMENTS_JWKS_COOLDOWN",
        "5",
        "least seconds between fetches for unknown kids",
        type=float,
    )
    opt(
        "--jwks-max-staleness",
        "PAYMENTS_JWKS_MAX_STALENESS",
        None,
        "seconds after the signing keys were last known current (a fetch, or an open WatchJwks "
        "stream) after which /readyz and gRPC health say NOT_SERVING; tokens are still verified "
        "with the cached keys. Default: twice --jwks-max-age (120 s); 0: never",
        type=float,
    )
    add_connection_limit_flags(serve, env, "PAYMENTS_")
    opt(
        "--log-level",
        "PAYMENTS_LOG_LEVEL",
        "INFO",
        "debug, info, warning or error, in any case",
        type=level_flag,
        metavar="LEVEL",
    )
    opt(
        "--log-format",
        "PAYMENTS_LOG_FORMAT",
        "text",
        "text, or json: one JSON object per line",
        type=format_flag,
        metavar="FORMAT",
    )
    return parser


def _check_files(args: argparse.Namespace) -> None:
    """Refuse, on one line, files that would fail later: TLS files, the CAs, the data dir."""
    for flag, path in (
        ("--tls-cert", args.tls_cert),
        ("--tls-key", args.tls_key),
        ("--token-service-ca", args.token_service_ca),
    ):
        if path is not None:
            check_readable_file(path, flag)
    if args.client_ca is not None:
        check_client_ca(args.client_ca)
    if not args.database_url:  # an empty one is refused by PaymentsConfig
        check_data_dir(args.data_dir, "--data-dir")


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    env = os.environ if env is None else env
    args = build_parser(env).parse_args(argv)
    log_setup = configure_logging(level=args.log_level, log_format=args.log_format)
    try:
        return _main(args, log_setup.stop)
    finally:
        log_setup.stop()  # every queued line is written before the process exits


def _main(args: argparse.Namespace, flush_logs: Callable[[], None]) -> int:
    from payments_svc.app import PaymentsConfig, read_client_secret, serve  # noqa: PLC0415 - keep --help fast

    try:
        _check_files(args)
        if (args.client_id is None) != (args.client_secret_file is None):
            raise ConfigurationError("--client-id and --client-secret-file go together")
        secret = None if args.client_secret_file is None else read_client_secret(args.client_secret_file)
        config = PaymentsConfig(
            data_dir=args.data_dir,
            database_url=args.database_url,
            listen=args.listen,
            http_listen=args.http_listen,
            metrics_listen=args.metrics_listen,
            token_service=args.token_service,
            jwks_url=args.jwks_url,
            token_service_ca=args.token_service_ca,
            issuer=args.issuer,
            audience=args.audience,
            tls_cert=args.tls_cert,
            tls_key=args.tls_key,
            client_ca=args.client_ca,
            insecure=args.insecure,
            insecure_token_service=args.insecure_token_service,
            leeway=args.leeway,
            grace_period=args.grace_period,
            jwks_max_age=args.jwks_max_age,
            jwks_cooldown=args.jwks_cooldown,
            jwks_max_staleness=args.jwks_max_staleness,
            client_id=args.client_id,
            client_secret=secret,
            revocations_max_staleness=args.revocations_max_staleness,
            revocations_fail_closed=args.revocations_fail_closed,
            revocations_url=args.revocations_url,
            revocations_poll_interval=args.revocations_poll_interval,
            limits=connection_limits_from(args),
        )
        try:
            asyncio.run(serve(config))
        finally:
            # the log lines still queued first, then the one-line error below (as authsvc does):
            # otherwise a start-up warning can land after it
            flush_logs()
    except ConfigurationError as exc:
        print(f"payments-svc: error: {exc}", file=sys.stderr)
        return 1
    except (OSError, RuntimeError) as exc:  # a listener that cannot start, a file that cannot be read
        message = startup_failure(exc, grpc_flag="--listen", http_flag="--http-listen")
        if message is None:
            raise
        print(f"payments-svc: error: {message}", file=sys.stderr)
        return 1
    except DatabaseUnavailable as exc:
        print(f"payments-svc: error: {exc.description}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
