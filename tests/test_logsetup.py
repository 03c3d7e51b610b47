"""authsvc.logsetup: JSON and text lines, UTC times, the queue drained at stop, and the
--log-level / --log-format flags of both commands."""

from __future__ import annotations

import enum
import io
import json
import logging
import re
import time
from collections.abc import Mapping

import pytest

from authsvc import cli as authsvc_cli
from authsvc import logsetup
from authsvc.logsetup import AUDIT_LOGGER, audit, configure
from payments_svc import cli as payments_cli


def _lines(stream: io.StringIO) -> list[str]:
    return stream.getvalue().splitlines()


def test_json_lines_carry_utc_time_extras_and_the_exception() -> None:
    out = io.StringIO()
    setup = configure(level="debug", log_format="json", stream=out)
    try:
        log = logging.getLogger("authsvc.test")
        log.debug("hello %s", "world", extra={"jti": "abc", "count": 3})
        try:
            raise ValueError("boom")
        except ValueError:
            log.exception("it failed\nsecond line")
    finally:
        setup.stop()  # drains the queue: nothing is lost
    first, second = (json.loads(line) for line in _lines(out))
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", first["time"])
    assert first["level"] == "DEBUG" and first["logger"] == "authsvc.test"
    assert first["message"] == "hello world" and first["jti"] == "abc" and first["count"] == 3
    assert second["message"] == "it failed\nsecond line"  # one line: JSON escapes the newline
    assert "ValueError: boom" in second["exc"] and "Traceback" not in second["message"]


def test_text_lines_have_utc_times_and_tracebacks() -> None:
    out = io.StringIO()
    setup = configure(level=logging.INFO, log_format="text", stream=out, tag="[worker]")
    try:
        logging.getLogger("authsvc.test").debug("not shown")
        try:
            raise KeyError("k")
        except KeyError:
            logging.getLogger("authsvc.test").error("failed", exc_info=True)
    finally:
        setup.stop()
    text = out.getvalue()
    assert "not shown" not in text
    assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z ERROR \[worker\] authsvc.test: failed\n", text)
    assert "KeyError: 'k'" in text


def test_stop_restores_the_previous_handlers_and_is_idempotent() -> None:
    root = logging.getLogger()
    before, level = list(root.handlers), root.level
    setup = configure(level="warning", log_format="json", stream=io.StringIO())
    assert root.handlers != before
    setup.stop()
    setup.stop()
    assert root.handlers == before and root.level == level


def test_every_line_parses_under_many_threads_of_records() -> None:
    out = io.StringIO()
    setup = configure(level="info", log_format="json", stream=out)
    try:
        for i in range(500):
            logging.getLogger("authsvc.test").info('line %d with \x1b[31m and " quotes', i)
    finally:
        setup.stop()
    assert [json.loads(line)["message"].split()[1] for line in _lines(out)] == [str(i) for i in range(500)]


class _CountingStream(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)


def test_records_are_written_in_batches_not_one_write_each() -> None:
    """A record does not wake the writer: the lines queued between its wake-ups go out in one
    write (a wake-up per line took the GIL from the event loop once per token, issue 14)."""
    out = _CountingStream()
    setup = configure(level="info", log_format="text", stream=out)
    try:
        for i in range(1000):
            logging.getLogger("authsvc.test").info("line %d", i)
    finally:
        setup.stop()
    assert [line.rsplit(" ", 1)[1] for line in _lines(out)] == [str(i) for i in range(1000)]
    assert out.writes < 100, out.writes  # a batch per wake-up, however slow the machine


def test_a_steady_stream_is_written_once_per_interval_not_twice() -> None:
    """Under steady load every write but the first follows a sleep of WRITE_INTERVAL. Here each
    write queues the next line, so the writer never finds the queue empty: with the quiet-spell
    test counted from the write before the sleep rather than from its end, every other write
    skipped its sleep and wrote one line (5 sleeps by the 12th write instead of 10; a stalled
    machine can cost the fixed writer a sleep or two, never half of them)."""
    log = logging.getLogger("authsvc.test")
    sleeps_at: dict[int, int] = {}
    sleeps = 0

    class FeedingStream(_CountingStream):
        def write(self, text: str) -> int:
            written = super().write(text)
            sleeps_at[self.writes] = sleeps
            if self.writes < 12:
                log.info("line after write %d", self.writes)
            return written

    out = FeedingStream()
    setup = configure(level="info", log_format="text", stream=out)
    listener = setup._listener  # the writer: its sleeps are counted
    real_wait = listener.urgent.wait

    def counted_wait(timeout: float | None = None) -> bool:
        nonlocal sleeps
        sleeps += 1
        return real_wait(timeout)

    listener.urgent.wait = counted_wait  # type: ignore[method-assign]
    try:
        log.info("first line")
        deadline = time.monotonic() + 30
        while 12 not in sleeps_at and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        setup.stop()
    assert 12 in sleeps_at, f"the writer stalled: {out.writes} writes"
    assert sleeps_at[12] >= 8, sleeps_at


def test_audit_escapes_and_truncates_caller_text() -> None:
    out = io.StringIO()
    setup = configure(level="info", log_format="json", stream=out)
    try:
        audit("token.refused", {"scope": "x" * 1000 + "\n", "audience": ["a\nb"], "kid": None, "msg": "m"})
    finally:
        setup.stop()
    (line,) = _lines(out)
    event = json.loads(line)
    assert event["logger"] == AUDIT_LOGGER and event["event"] == "token.refused"
    assert len(event["scope"]) < 300 and event["scope"].endswith("…")
    assert event["audience"] == ["a\nb"] and "kid" not in event
    assert event["msg_"] == "m"  # a field named like a LogRecord attribute does not clobber it
    assert "\n" not in event["message"]  # the text form is escaped too


class _Kind(enum.StrEnum):
    BASIC = "client_secret_basic"


def test_audit_renders_each_kind_of_field_in_both_forms() -> None:
    """Short strings and integers take a shortcut in audit(): every kind renders as the general
    path does. A string of 64 characters is shown whole, one of 65 cut in the text (the field
    keeps up to 256); a str subclass, a bool and a float are shown by value, never by repr."""
    out = io.StringIO()
    setup = configure(level="info", log_format="json", stream=out)
    fields: dict[str, object] = {
        "s": "a'b",
        "s64": "y" * 64,
        "s65": "z" * 65,
        "e": _Kind.BASIC,
        "n": 300,
        "t": True,
        "f": 1.5,
        "l": ["p", 2],
        "u": ("q",),
        "none": None,
    }
    try:
        audit("token.issued", fields)
    finally:
        setup.stop()
    (line,) = _lines(out)
    event = json.loads(line)
    assert event["message"] == (
        "token.issued s=\"a'b\" s64='" + "y" * 64 + "' s65='" + "z" * 64 + "'… e='client_secret_basic' n=300 "
        "t=True f=1.5 l=['p',2] u=['q']"
    )
    assert (event["s"], event["s64"], event["s65"]) == ("a'b", "y" * 64, "z" * 65)
    assert (event["e"], event["n"], event["t"], event["f"]) == ("client_secret_basic", 300, True, 1.5)
    assert (event["l"], event["u"]) == (["p", 2], ["q"]) and "none" not in event


_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


def _audit_both_ways(log_format: str, tag: str, level: int) -> tuple[str, str]:
    """The same audit event rendered by audit()'s direct path and by the logging machinery (a
    filter on the audit logger turns the direct path off), times masked."""
    fields: dict[str, object] = {
        "client_id": "shop",
        "scope": "a b",
        "audience": ["payments", "x" * 300],
        "expires_in": 300,
        "msg": "a LogRecord attribute's name",
        "pid": "a JSON formatter key",
        "note": 'caf\u00e9\n"quoted"',
        "none": None,
    }
    out = io.StringIO()
    setup = configure(level="info", log_format=log_format, stream=out, tag=tag)
    audit_logger = logging.getLogger(AUDIT_LOGGER)
    seen: list[logging.LogRecord] = []
    direct_path = logsetup._DIRECT
    assert direct_path is not None
    put = direct_path.put
    direct_lines: list[str] = []

    def counted_put(level: int, message: str, extra: Mapping[str, object]) -> None:
        direct_lines.append(message)
        put(level, message, extra)

    direct_path.put = counted_put  # type: ignore[method-assign]

    def passing(record: logging.LogRecord) -> bool:
        seen.append(record)
        return True

    try:
        audit("key.revoked", fields, level=level)
        audit_logger.addFilter(passing)
        try:
            audit("key.revoked", fields, level=level)
        finally:
            audit_logger.removeFilter(passing)
    finally:
        setup.stop()
    assert len(seen) == 1, "the second event should have taken the logging path"
    assert len(direct_lines) == 1, "the first event should have taken the direct path"
    direct, machinery = (_TIME.sub("TIME", line) for line in _lines(out))
    return direct, machinery


@pytest.mark.parametrize("log_format", ["text", "json"])
@pytest.mark.parametrize("tag", ["", "[worker]"])
@pytest.mark.parametrize("level", [logging.INFO, logging.WARNING])
def test_the_direct_audit_line_is_the_formatters_line(log_format: str, tag: str, level: int) -> None:
    """audit() renders its line itself while configure()'s handler is the only one: byte for byte
    the line the formatter makes of the record (keys in the same order, the same fields left
    out or renamed, the same escaping)."""
    direct, machinery = _audit_both_ways(log_format, tag, level)
    assert direct == machinery
    if log_format == "json":
        assert json.loads(direct)["level"] == logging.getLevelName(level)


def test_the_direct_audit_path_steps_aside_for_any_other_handler_or_filter() -> None:
    """Another handler on the root logger (pytest's caplog, an operator's), a handler or filter
    on the way, or a logger that stops propagation: the event is a LogRecord again, and each of
    them sees it."""
    out = io.StringIO()
    setup = configure(level="info", log_format="text", stream=out)
    root, audit_logger, parent = (
        logging.getLogger(),
        logging.getLogger(AUDIT_LOGGER),
        logging.getLogger("authsvc"),
    )
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    try:
        for where in (root, parent, audit_logger):
            keep = Keep()
            where.addHandler(keep)
            try:
                audit("token.issued", {"client_id": "shop"})
            finally:
                where.removeHandler(keep)
        parent.propagate = False
        try:
            audit("token.issued", {"client_id": "hidden"})  # stops at "authsvc": no handler there
        finally:
            parent.propagate = True
        audit("token.issued", {"client_id": "direct"})
    finally:
        setup.stop()
    assert [r.getMessage() for r in records] == ["token.issued client_id='shop'"] * 3
    # configure()'s handler wrote each 'shop' record too (they all reached the root), not the one
    # that stopped at "authsvc", then the last event, by the direct path again
    lines = [line.split(": ", 1)[1] for line in _lines(out)]
    assert lines == ["token.issued client_id='shop'"] * 3 + ["token.issued client_id='direct'"]


@pytest.mark.parametrize(
    ("main", "prefix"), [(authsvc_cli.build_parser, "AUTHSVC"), (payments_cli.build_parser, "PAYMENTS")]
)
def test_levels_and_formats_in_any_case(main: object, prefix: str) -> None:
    assert callable(main)
    args = main({f"{prefix}_LOG_LEVEL": "debug", f"{prefix}_LOG_FORMAT": "JSON"}).parse_args(["serve"])
    assert (args.log_level, args.log_format) == ("DEBUG", "json")
    args = main({}).parse_args(["serve", "--log-level", "Warning"])
    assert (args.log_level, args.log_format) == ("WARNING", "text")


@pytest.mark.parametrize(
    ("main", "argv", "env"),
    [
        (authsvc_cli.main, ["serve", "--log-level", "verbose"], {}),
        (authsvc_cli.main, ["serve"], {"AUTHSVC_LOG_LEVEL": "loud"}),
        (authsvc_cli.main, ["serve", "--log-format", "xml"], {}),
        (payments_cli.main, ["serve", "--log-level", "verbose"], {}),
        (payments_cli.main, ["serve"], {"PAYMENTS_LOG_FORMAT": "yaml"}),
    ],
)
def test_a_bad_level_or_format_is_a_usage_error(
    main: object, argv: list[str], env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert callable(main)
    with pytest.raises(SystemExit) as exit_info:
        main(argv, env)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert ("is not a log level" in err or "is not a log format" in err) and "Traceback" not in err


def test_a_line_says_what_its_arguments_held_at_the_call() -> None:
    """Records are formatted in the caller's thread: an argument changed after the call (before
    the writer thread wrote the line) does not change the line."""
    out = io.StringIO()
    setup = configure(level="info", log_format="text", stream=out)
    try:
        held = ["before"]
        logging.getLogger("authsvc.test").info("held %s", held)
        held[0] = "after"
    finally:
        setup.stop()
    assert _lines(out)[-1].endswith("held ['before']")
