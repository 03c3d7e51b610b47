"""Process-wide logging for both commands: text or JSON lines, UTC timestamps, and a queue so that
writing a line never blocks the event loop. Also the ``authsvc.audit`` logger's one helper.

No grpc and nothing of the server here: ``payments_svc`` imports it too.

- :func:`configure` installs a handler on the root logger that formats each record in the
  caller's thread and queues the line, and a background thread that writes the queued lines: a
  line after a quiet spell at once, and under load in batches, one wake-up and one write per
  :data:`WRITE_INTERVAL`; call :meth:`LogSetup.stop` at exit (it drains the queue, so no line is
  lost).
- ``json``: one JSON object per line, ``time`` (UTC ISO-8601, ``Z``), ``level``, ``logger``,
  ``message``, ``pid``, the record's extra fields, and ``exc`` (the traceback as one string) when
  the record carries an exception. ``text``: ``2024-05-01T12:00:00.123Z INFO name: message``.
- :func:`audit`: one event on the ``authsvc.audit`` logger, its fields both in the line (escaped
  with :func:`~authsvc.logsafe.loggable`) and as extra fields (truncated; JSON escapes the rest).
  Fields must never hold a secret, an assertion or a whole token.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import datetime
import json
import logging
import math
import os
import queue
import sys
import threading
import time
from collections.abc import Mapping
from typing import Final, Literal, TextIO

from authsvc.logsafe import DEFAULT_MAX_CHARS, loggable

__all__ = [
    "AUDIT_LOGGER",
    "LOG_FORMATS",
    "LOG_LEVELS",
    "JsonFormatter",
    "LogFormat",
    "LogSetup",
    "UtcTextFormatter",
    "audit",
    "configure",
    "format_flag",
    "formatter_for",
    "level_flag",
]

LogFormat = Literal["text", "json"]
LOG_FORMATS: Final = ("text", "json")
LOG_LEVELS: Final = ("DEBUG", "INFO", "WARNING", "ERROR")
AUDIT_LOGGER: Final = "authsvc.audit"
_AUDIT_LOG: Final = logging.getLogger(AUDIT_LOGGER)

# What every LogRecord holds: anything else in its __dict__ came from ``extra=``.
_STANDARD_ATTRS: Final = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {
    "message",
    "asctime",
    "taskName",
}
_AUDIT_FIELD_MAX_CHARS: Final = 256
WRITE_INTERVAL: Final = 0.02
"""Seconds between the background writer's batches while lines keep coming: how late a line may
reach stderr under load (a line after a quiet spell is written at once)."""


def _utc_iso(created: float) -> str:
    moment = datetime.datetime.fromtimestamp(created, datetime.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class UtcTextFormatter(logging.Formatter):
    """``TIME LEVEL logger: message`` with a UTC ISO-8601 time; ``tag`` (e.g. ``[worker]``) goes
    before the logger name. :meth:`line` is the layout, for a record and for :func:`audit`'s
    direct path alike (a traceback, if any, follows on the next lines as Formatter puts it)."""

    def __init__(self, tag: str = "") -> None:
        super().__init__()
        self._prefix = f"{tag} " if tag else ""

    def usesTime(self) -> bool:  # noqa: N802 - logging's name
        return True

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802
        return _utc_iso(record.created)

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging's name
        return self.line(record.asctime, record.levelname, record.name, record.message)

    def line(self, when: str, level: str, name: str, message: str) -> str:
        return f"{when} {level} {self._prefix}{name}: {message}"


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (``ensure_ascii``: control characters and
    non-ASCII text are escaped, so a caller-supplied value can never break the line).
    :meth:`line` is the layout, for a record and for :func:`audit`'s direct path alike."""

    def format(self, record: logging.LogRecord) -> str:
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        return self.line(
            _utc_iso(record.created),
            record.levelname,
            record.name,
            record.getMessage(),
            pid=record.process,
            extra={k: v for k, v in record.__dict__.items() if k not in _STANDARD_ATTRS},
            exc=record.exc_text,
            stack=self.formatStack(record.stack_info) if record.stack_info else None,
        )

    def line(
        self,
        when: str,
        level: str,
        name: str,
        message: str,
        *,
        pid: int | None,
        extra: Mapping[str, object],
        exc: str | None = None,
        stack: str | None = None,
    ) -> str:
        """``time``, ``level``, ``logger``, ``message``, ``pid``, then the extra fields in order
        (one named like those five is left out), then ``exc`` and ``stack`` when given."""
        entry: dict[str, object] = {
            "time": when,
            "level": level,
            "logger": name,
            "message": message,
            "pid": pid,
        }
        for key, value in extra.items():
            if key not in entry:
                entry[key] = value
        if exc:
            entry["exc"] = exc
        if stack:
            entry["stack"] = stack
        return json.dumps(entry, default=str, ensure_ascii=True)


class _QueueHandler(logging.Handler):
    """Formats each record in the caller's thread and queues the line for the writer thread.

    Formatting here (as :class:`~logging.StreamHandler` does) renders the arguments while they
    still hold what they held at the call, needs no copy of the record, and leaves the writer
    nothing but a ``write``. A record at WARNING or above sets ``urgent``: the writer writes it
    (and all before it) at once."""

    def __init__(
        self,
        lines: queue.SimpleQueue[str | None],
        output: logging.StreamHandler[TextIO],
        urgent: threading.Event,
    ) -> None:
        super().__init__()
        self._lines = lines
        self._output = output
        self._urgent = urgent

    def emit(self, record: logging.LogRecord) -> None:
        output = self._output
        if record.levelno < output.level:
            return
        try:
            line = output.format(record) + output.terminator
        except Exception:  # as logging.Handler.emit does: report, never raise
            self.handleError(record)
            return
        self._lines.put(line)
        if record.levelno >= logging.WARNING:
            self._urgent.set()


class _DirectAudit:
    """The audit event's way around the logging machinery, while :func:`configure`'s handler is
    the only place a record of the ``authsvc.audit`` logger would go: the line is rendered here,
    exactly as the formatter would render the record (text or JSON), and queued. One event per
    token, on the event loop: a LogRecord and the handler chain cost more than the line itself.
    :meth:`applies` checks, at each event, that nothing else could see the record (another
    handler or a filter anywhere on its way, a logger that stops propagation); if anything
    could, the event takes the ordinary path."""

    def __init__(self, handler: _QueueHandler, formatter: UtcTextFormatter | JsonFormatter) -> None:
        self._handler = handler
        self._lines = handler._lines
        self._urgent = handler._urgent
        self._formatter = formatter

    def applies(self, logger: logging.Logger, level: int) -> bool:
        if logger.handlers or logger.filters or not logger.propagate or logger.disabled:
            return False
        parent = logger.parent
        while parent is not None and parent.parent is not None:  # the loggers between it and the root
            if parent.handlers or not parent.propagate:
                return False
            parent = parent.parent
        if parent is None:
            return False
        handlers = parent.handlers
        handler = self._handler
        return (
            len(handlers) == 1
            and handlers[0] is handler
            and not handler.filters
            and handler.level <= level
            and handler._output.level <= level
        )

    def put(self, level: int, message: str, extra: Mapping[str, object]) -> None:
        when = _utc_iso(time.time())
        name = logging.getLevelName(level)
        formatter = self._formatter
        if isinstance(formatter, JsonFormatter):  # the fields a LogRecord's extras would be
            pid = os.getpid() if logging.logMultiprocessing else None
            line = formatter.line(when, name, AUDIT_LOGGER, message, pid=pid, extra=extra)
        else:
            line = formatter.line(when, name, AUDIT_LOGGER, message)
        self._lines.put(line + "\n")
        if level >= logging.WARNING:
            self._urgent.set()


_DIRECT: _DirectAudit | None = None  # while configure()'s setup is installed


class _BatchListener:
    """Writes the queued lines from a background thread, in batches when busy.

    The stdlib's :class:`~logging.handlers.QueueListener` wakes for every record, and its thread
    then takes the GIL from the event loop to write one line: under load (a line per token) those
    hand-offs cost more CPU than the lines themselves. Here a line after a quiet spell is written
    at once, as before; once writes follow each other within ``interval`` seconds the thread
    sleeps ``interval`` after each one, so that it wakes at most once per interval and writes what
    queued meanwhile with one ``write`` and one ``flush``. A warning or an error (``urgent``) ends
    the sleep: those, and every line before them, come out at once, in order with what a command
    prints on stderr next."""

    def __init__(
        self,
        lines: queue.SimpleQueue[str | None],
        output: logging.StreamHandler[TextIO],
        interval: float,
    ) -> None:
        self.queue = lines
        self.handlers = (output,)
        self._output = output
        self._interval = interval
        self._stopping = threading.Event()
        self.urgent = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="authsvc-log-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        last_write = -math.inf  # when the last write ended, or the sleep after it
        while not self._stopping.is_set():
            first = self.queue.get()  # blocks: nothing to do costs nothing
            self._write([first, *self._queued()])
            now = time.monotonic()
            if now - last_write < self._interval:  # busy: one wake-up per interval from now on
                self.urgent.wait(self._interval)
                # counted from the end of the sleep: counted from the write before it, the next
                # write would always look like the first after a quiet spell, and every other
                # wake-up would write a single line
                now = time.monotonic()
            self.urgent.clear()
            last_write = now

    def _queued(self) -> list[str | None]:
        batch: list[str | None] = []
        while True:
            try:
                batch.append(self.queue.get_nowait())
            except queue.Empty:
                return batch

    def _write(self, batch: list[str | None]) -> None:
        text = "".join(line for line in batch if line is not None)  # None: stop()'s wake-up
        if not text:
            return
        output = self._output
        with output.lock or contextlib.nullcontext():
            try:
                output.stream.write(text)
                output.stream.flush()
            except Exception:  # a closed or broken stream: reported once per batch
                output.handleError(logging.makeLogRecord({"msg": "%d log lines lost", "args": (len(batch),)}))

    def stop(self) -> None:
        """Write every queued line, then end the thread."""
        self._stopping.set()
        self.urgent.set()  # ends a busy sleep
        self.queue.put(None)  # wakes a thread blocked on an empty queue
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self._write(self._queued())  # anything queued after the thread's last look


class LogSetup:
    """What :func:`configure` installed; :meth:`stop` flushes it and puts back the root logger's
    previous handlers and level (idempotent)."""

    def __init__(
        self,
        listener: _BatchListener,
        handler: logging.Handler,
        previous: tuple[list[logging.Handler], int],
    ) -> None:
        self._listener = listener
        self._handler = handler
        self._previous = previous
        self._lock = threading.Lock()
        self._stopped = False

    def stop(self) -> None:
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
        atexit.unregister(self.stop)
        global _DIRECT  # noqa: PLW0603 - see configure()
        if _DIRECT is not None and _DIRECT._handler is self._handler:
            _DIRECT = None
        root = logging.getLogger()
        root.removeHandler(self._handler)
        self._listener.stop()  # writes every queued record before it returns
        for handler in self._listener.handlers:
            handler.flush()
        handlers, level = self._previous
        for old in handlers:
            root.addHandler(old)
        root.setLevel(level)


def level_flag(value: str) -> str:
    """The argparse ``type`` of ``--log-level``: a level name in any case, as ``DEBUG`` etc.
    argparse applies it to a default from the environment too (``choices`` are not checked
    there), so a bad ``*_LOG_LEVEL`` is a usage error as well."""
    name = value.strip().upper()
    if name not in LOG_LEVELS:
        raise argparse.ArgumentTypeError(
            f"{value!r} is not a log level (use {', '.join(n.lower() for n in LOG_LEVELS)})"
        )
    return name


def format_flag(value: str) -> str:
    """The argparse ``type`` of ``--log-format``: ``text`` or ``json``, in any case."""
    name = value.strip().lower()
    if name not in LOG_FORMATS:
        raise argparse.ArgumentTypeError(f"{value!r} is not a log format (use text or json)")
    return name


def formatter_for(log_format: str, *, tag: str = "") -> UtcTextFormatter | JsonFormatter:
    if log_format == "json":
        return JsonFormatter()
    if log_format == "text":
        return UtcTextFormatter(tag)
    raise ValueError(f"unknown log format {log_format!r} (text or json)")


def configure(
    *, level: int | str, log_format: str = "text", stream: TextIO | None = None, tag: str = ""
) -> LogSetup:
    """Send every log record of this process through a queue to ``stream`` (stderr) in
    ``log_format``, at ``level`` and above (a level name in any case, or a number). Replaces the
    root logger's handlers until :meth:`LogSetup.stop`, which runs at interpreter exit too if the
    caller does not call it."""
    if isinstance(level, str):
        name = level.upper()
        if name not in LOG_LEVELS:
            raise ValueError(f"unknown log level {level!r} ({', '.join(n.lower() for n in LOG_LEVELS)})")
        level = logging.getLevelName(name)
    output = logging.StreamHandler(stream if stream is not None else sys.stderr)
    formatter = formatter_for(log_format, tag=tag)
    output.setFormatter(formatter)
    lines: queue.SimpleQueue[str | None] = queue.SimpleQueue()
    listener = _BatchListener(lines, output, WRITE_INTERVAL)
    handler = _QueueHandler(lines, output, listener.urgent)
    root = logging.getLogger()
    previous = (list(root.handlers), root.level)
    for old in previous[0]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    listener.start()
    global _DIRECT  # noqa: PLW0603 - the one process-wide setup, as the root logger's handler is
    _DIRECT = _DirectAudit(handler, formatter)
    setup = LogSetup(listener, handler, previous)
    atexit.register(setup.stop)
    return setup


def _field(value: object) -> object:
    if isinstance(value, str):
        return value[:_AUDIT_FIELD_MAX_CHARS] + ("…" if len(value) > _AUDIT_FIELD_MAX_CHARS else "")
    if isinstance(value, tuple | list):
        return [_field(v) for v in value[:16]]
    return value


def _shown(value: object) -> str:
    if isinstance(value, str):
        return loggable(value, DEFAULT_MAX_CHARS)
    if isinstance(value, tuple | list):
        return "[" + ",".join(_shown(v) for v in value[:16]) + ("…" if len(value) > 16 else "") + "]"
    return str(value)


def audit(event: str, /, fields: Mapping[str, object], *, level: int = logging.INFO) -> None:
    """Write one audit event (``event`` is a fixed name, such as ``"token.issued"``). ``None``
    fields are left out. Values of ``fields`` are caller-supplied at worst, never secrets.

    One per token issued, on the event loop: the record is built directly (no search of the
    caller's frame, whose file and line would always be this function's), its message rendered
    once here, with no arguments left for a handler to format again."""
    logger = _AUDIT_LOG
    if not logger.isEnabledFor(level):
        return
    extra: dict[str, object] = {"event": event}
    shown = [event]
    for key, value in fields.items():
        if value is None:
            continue
        name = key if key not in _STANDARD_ATTRS else f"{key}_"
        # the usual fields, rendered as _field and _shown would, without their calls: a short
        # string (neither form truncates it) and an integer (bool is not one here)
        if type(value) is str and len(value) <= DEFAULT_MAX_CHARS:
            extra[name] = value
            shown.append(f"{key}={value!r}")
        elif type(value) is int:
            extra[name] = value
            shown.append(f"{key}={value}")
        else:
            extra[name] = _field(value)
            shown.append(f"{key}={_shown(value)}")
    message = " ".join(shown)
    direct = _DIRECT
    if direct is not None and direct.applies(logger, level):
        direct.put(level, message, extra)
        return
    logger.handle(logger.makeRecord(AUDIT_LOGGER, level, __file__, 0, message, (), None, event, extra))
