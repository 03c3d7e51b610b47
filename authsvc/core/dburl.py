"""Database URLs made fit for a log line or an error message (PostgreSQL connection URIs).

Pure: no I/O, no driver. Both services import it, so that there is one list of what libpq treats
as a secret, and one way to hide it.
"""

from __future__ import annotations

from urllib.parse import unquote, urlsplit, urlunsplit

__all__ = ["redact_database_url"]

# libpq connection parameters (libpq docs: "Connection URIs", "Parameter Key Words") whose values
# are safe to log. Deny by default: every other one (password, sslpassword, passfile,
# oauth_client_secret, and whatever a later libpq adds) is shown as ***.
_LOGGABLE_PARAMS = frozenset(
    {
        "host",
        "hostaddr",
        "port",
        "dbname",
        "user",
        "connect_timeout",
        "application_name",
        "target_session_attrs",
        "load_balance_hosts",
        "sslmode",
        "gssencmode",
        "channel_binding",
        "sslrootcert",
        "sslcert",
        "sslkey",
    }
)
_SCHEMES = ("postgresql://", "postgres://")


def redact_database_url(url: str) -> str:
    """``url`` fit for a log line or an error message: no secret in any form libpq accepts.

    The userinfo password (``user:secret@``) and the value of every query parameter but a few
    known harmless ones (``?password=``, ``?sslpassword=``, ``?passfile=``, also when the name is
    percent-encoded, as libpq decodes it) become ``***``. Anything that is not a PostgreSQL URL
    is redacted whole.
    """
    if not url.startswith(_SCHEMES):
        return "***"
    try:
        parts = urlsplit(url)
    except ValueError:
        return "***"
    netloc = parts.netloc
    userinfo, at, hosts = netloc.rpartition("@")
    if at:
        # libpq ends the userinfo at the first "@" and the user name at the first ":": keep only
        # what comes before both, so no reading of a malformed URL shows any part of a password
        user = userinfo.partition(":")[0].partition("@")[0]
        netloc = f"{user}:***@{hosts}" if userinfo != user else f"{user}@{hosts}"
    query = "&".join(_redact_param(piece) for piece in parts.query.split("&")) if parts.query else ""
    fragment = "***" if parts.fragment else ""
    return urlunsplit(parts._replace(netloc=netloc, query=query, fragment=fragment))


def _redact_param(piece: str) -> str:
    name, eq, _ = piece.partition("=")
    if eq and unquote(name) in _LOGGABLE_PARAMS:
        return piece
    return f"{name}=***" if eq else "***"
