"""Files that hold secrets, created private whatever the directory's mode or the umask. Shared by
the TokenService's and the PaymentService's SQLite stores (``payments_svc`` may not import
``authsvc.store``)."""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

__all__ = ["private_database_file"]

log = logging.getLogger("authsvc.files")


def private_database_file(path: Path) -> None:
    """Create the database file mode 0600 before SQLite opens it, whatever the directory's mode or
    the umask: SQLite creates its ``-wal`` and ``-shm`` files with the database file's mode, so
    they follow. An existing file (or ``-wal``/``-shm``/``-journal``) readable by group or others
    is tightened to owner-only, with a warning; if it cannot be (another owner), it is warned
    about."""
    if str(path) == ":memory:":
        return
    fd = os.open(path, os.O_RDONLY | os.O_CREAT, 0o600)
    os.close(fd)
    for candidate in (path, *(path.with_name(path.name + s) for s in ("-wal", "-shm", "-journal"))):
        try:
            mode = stat.S_IMODE(candidate.stat().st_mode)
        except FileNotFoundError:
            continue
        if not mode & 0o077:
            continue
        try:
            os.chmod(candidate, mode & 0o700)
        except OSError as exc:
            log.warning(
                "database file %s is readable by group or others (mode %o) and could not be tightened: %s",
                candidate,
                mode,
                exc.strerror,
            )
        else:
            log.warning(
                "database file %s was readable by group or others (mode %o); made it 0600", candidate, mode
            )
