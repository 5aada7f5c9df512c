"""The quiet console: each reason once, every stage result line, one line per record."""
import logging

from mapcap.cli.console import RunConsole
from mapcap.tasks.pipeline import driver


def record(text: str, **extra) -> logging.LogRecord:
    """A record logged by a MapCap module (the driver's stage result lines come from there)."""
    rec = logging.LogRecord(driver.__name__, logging.INFO, driver.__file__, 1, text, None, None)
    rec.__dict__.update(extra)
    return rec


def test_a_repeated_reason_is_said_once_but_every_stage_line_is_shown():
    console = RunConsole(verbose=False)
    assert console.filter(record("concepts skipped: no bank"))
    assert not console.filter(record("concepts skipped: no bank"))  # shards and stages repeat reasons
    line = "run r report: 0 failures in 0.89 s (write 0.00)"
    first, second = record(line, mapcap_stage=(None, "report")), record(line, mapcap_stage=(None, "report"))
    assert console.filter(first) and console.filter(second)  # the report written twice, in the same time


def test_one_record_on_two_terminal_handlers_is_shown_once():
    console = RunConsole(verbose=False)
    rec = record("shard 0 classify: 0 failures in 0.1 s", mapcap_stage=(0, "classify"))
    assert console.filter(rec)
    assert not console.filter(rec)
