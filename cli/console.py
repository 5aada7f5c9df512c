"""What a run prints on the terminal. Quiet by default: MapCap's own lines (one per stage per shard, with a bar
of how much of the run is done), each message once; Prefect's task states, library log lines and warnings only
with -v. The Prefect UI gets every log line either way (its API handler is left alone)."""
from __future__ import annotations

import logging
import os
import sys
import time
import warnings
from pathlib import Path

PACKAGE_DIRS = tuple(str(Path(__file__).resolve().parents[1] / d) + os.sep
                     for d in ("cli", "explorer", "flows", "mapcap", "storage", "tasks", "toy"))  # every part of mapcap
BAR = 20


class RunConsole(logging.Filter):
    """A filter for the console handlers: passes MapCap's records and warnings, each message once, and prefixes a
    stage's result line with the run's progress (stage runs done of shards × stages, from the flow's plan line)."""

    def __init__(self, verbose: bool):
        super().__init__()
        self.verbose = verbose
        self.seen: set[str] = set()
        self.total = 0  # stage runs in the run: shards × per-shard stages (the flow's plan line says)
        self.done: set[tuple] = set()
        self.started = time.perf_counter()

    def filter(self, record: logging.LogRecord) -> bool:
        plan = getattr(record, "mapcap_plan", None)
        if plan is not None:
            self.total, self.started = plan[0] * len(plan[1]) + len(plan[2]), time.perf_counter()
        if not self.verbose and not record.pathname.startswith(PACKAGE_DIRS):
            # Prefect's "Finished in state Completed()" and friends, libraries' log lines, a failed task's or
            # flow's traceback (the command's last line says what failed and the fix): -v shows them
            return False
        text = record.getMessage()
        stage = getattr(record, "mapcap_stage", None)
        if getattr(record, "mapcap_shown", False):
            return False  # this record, on a second terminal handler
        if not self.verbose and stage is None and text in self.seen:
            return False  # a reason said once is enough (shards and stages repeat it); a stage's result line is an
            # event of its own even when its text repeats (the report written twice, in the same 0.89 s)
        if not self.verbose and stage in self.done and text.endswith(", skipped"):
            return False  # a later pass of the run finds what the first did complete: nothing new to say
        self.seen.add(text)
        record.mapcap_shown = True
        if stage is not None and self.total and not hasattr(record, "mapcap_bar"):
            self.done.add(stage)
            record.mapcap_bar = self.bar()  # our terminal format shows it; the UI's log lines stay as logged
        return True

    def bar(self) -> str:
        n = min(len(self.done), self.total)
        filled = round(BAR * n / self.total)
        return f"[{'#' * filled}{'.' * (BAR - filled)}] {n}/{self.total} {time.perf_counter() - self.started:4.0f} s"


class _Format(logging.Formatter):
    """The terminal's format, with the run's progress bar before a stage's result line."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        bar = getattr(record, "mapcap_bar", None)
        return text if bar is None else text.replace(record.getMessage(), f"{bar} {record.getMessage()}", 1)


class StderrHandler(logging.StreamHandler):
    """A handler on whatever sys.stderr is when a record comes (a test's capture, the terminal). Its name must not
    start with "_": Prefect keeps the root logger's handlers only when one is a user's, by that test."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


_HANDLER: logging.Handler | None = None


def setup(verbose: bool, debug: bool) -> RunConsole:
    """Logging for a `mapcap` command: our lines to stderr; the rest only when asked for. One handler of ours
    on the root logger, replaced by the next command of the same process (tests call `main` many times)."""
    global _HANDLER
    level = logging.DEBUG if debug else logging.INFO
    root = logging.getLogger()
    if _HANDLER is not None:
        root.removeHandler(_HANDLER)
    _HANDLER = StderrHandler()
    _HANDLER.setFormatter(_Format("%(asctime)s %(levelname)s %(name)s: %(message)s" if verbose or debug
                                            else "%(asctime)s %(message)s", datefmt="%H:%M:%S"))
    console = RunConsole(verbose or debug)
    _HANDLER.addFilter(console)
    root.addHandler(_HANDLER)
    root.setLevel(logging.DEBUG if debug else logging.WARNING)  # open_clip logs through the root logger
    logging.getLogger("httpx").setLevel(logging.DEBUG if debug else logging.WARNING)
    logging.getLogger("mapcap").setLevel(level)  # so our own progress lines show
    if not (verbose or debug):
        warnings.simplefilter("ignore")  # torch's kernel registration, torchvision's deprecations: not the user's
    return console


def attach(console: RunConsole) -> None:
    """Put the filter on Prefect's terminal handlers too (they exist once Prefect has set its logging up),
    instead of an earlier command's; its API handlers, which feed the UI, keep every line."""
    seen = set()
    for logger in [logging.getLogger(), *(logging.getLogger(n) for n in list(logging.root.manager.loggerDict))]:
        for handler in getattr(logger, "handlers", ()):
            if id(handler) in seen or "API" in type(handler).__name__ or handler is _HANDLER:
                continue
            seen.add(id(handler))
            if type(handler).__module__.startswith("prefect"):
                for old in [f for f in handler.filters if isinstance(f, RunConsole)]:
                    handler.removeFilter(old)
                handler.addFilter(console)
