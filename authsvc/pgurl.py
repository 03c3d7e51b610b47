"""PostgreSQL URLs checked before psycopg sees them, shared by the TokenService's and the
PaymentService's stores (``payments_svc`` may not import ``authsvc.store``). psycopg is imported
only when a URL is checked, so SQLite-only installs never need it."""

from __future__ import annotations

from authsvc.core.dburl import redact_database_url
from authsvc.core.errors import ConfigurationError

__all__ = ["check_postgres_url"]


def check_postgres_url(url: str) -> None:
    """Refuse a URL libpq cannot parse, before a pool does: libpq's parse errors quote the
    offending text (``invalid percent-encoded token: "<password>"``), and a pool logs them on every
    retry. The error names the URL with its secrets redacted."""
    import psycopg  # noqa: PLC0415 - the [postgres] extra, needed only for a PostgreSQL URL
    from psycopg.conninfo import conninfo_to_dict  # noqa: PLC0415

    try:
        conninfo_to_dict(url)
    except psycopg.Error:
        pass  # raised below, outside this block: the error's text must not ride along as context
    else:
        return
    raise ConfigurationError(f"the database URL is malformed: {redact_database_url(url)}")
