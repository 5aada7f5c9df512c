"""Stopping a run promptly: Ctrl-C, a SIGTERM or a cancel from the Prefect UI.

The signal lands in the flow's thread, while the shards run in task threads that the process waits for before it
can exit: on CPU with a real CLIP one shard's stage runs for many minutes (`timeout 900 mapcap run ... --model
ViT-B-16` went on for 10 more minutes after its SIGTERM). The flow opens a `stop_scope` around the shards it starts;
the exception that leaves it sets the scope's event, and the shards check it between batches (before every model
forward, at every progress report, before every stage) and end with `RunStopped`. What they wrote stays (files are
renamed into place whole); a rerun with the run's name redoes only what is missing.

The event travels in a context variable, which Prefect's thread-pool runner copies into each task it submits: only
the shards of the run that was stopped see it, whatever else the process runs (the explorer, other flows, tests).
"""
from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field

_STOP: ContextVar[threading.Event | None] = ContextVar("mapcap_stop", default=None)


class RunStopped(BaseException):
    """The run this work belongs to was stopped. A BaseException, as KeyboardInterrupt is: the handlers that turn
    one image's error into a `failures` row catch Exception, and must not record a stop as a bad image."""


@dataclass
class StopScope:
    event: threading.Event  # set once the run is stopped
    queued: list = field(default_factory=list)  # task futures that must not start once it is

    def cancel_on_stop(self, futures: list) -> None:
        """Shards still queued when the run stops are dropped, not started only to stop at once (each a task run
        and a crash line: a thousand of them for a thousand-shard run)."""
        self.queued.extend(futures)


@contextmanager
def stop_scope() -> Iterator[StopScope]:
    """Work started inside (tasks submitted, threads run in a copy of this context) stops at its next `check_stop`
    once an exception leaves the block: an interrupt, a termination, a cancel, or a bug of the flow's own."""
    scope = StopScope(threading.Event())
    token = _STOP.set(scope.event)
    try:
        yield scope
    except BaseException:
        scope.event.set()
        for fut in scope.queued:  # a thread-pool task's future (Ray's stop at their first check instead)
            inner = getattr(fut, "wrapped_future", None)
            if isinstance(inner, Future):
                inner.cancel()  # False, and harmless, for one that runs or ran
        raise
    finally:
        _STOP.reset(token)


def stop_requested() -> bool:
    """Has the run of the current context been stopped? (False outside any run.)"""
    event = _STOP.get()
    return event is not None and event.is_set()


def check_stop() -> None:
    """Raise RunStopped when the run of the current context has been stopped; cheap enough for every batch."""
    if stop_requested():
        raise RunStopped("the run was stopped (interrupt, termination or cancel); its finished files are kept")
