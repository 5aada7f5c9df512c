"""A stopped run's work ends at its next check, and only that run's work (tasks/pipeline/stop.py)."""
from __future__ import annotations

import threading
from contextvars import copy_context

import pytest
import torch

from mapcap.tasks.models import model_lock
from mapcap.tasks.pipeline.stop import RunStopped, check_stop, stop_requested, stop_scope


def test_no_scope_means_no_stop():
    check_stop()  # outside any run: nothing to stop
    assert not stop_requested()


def test_an_exception_leaving_the_scope_stops_work_started_inside_it():
    started = threading.Event()
    outcome: list[str] = []

    def shard() -> None:  # a task thread: runs in a copy of the flow's context, as Prefect's runner does
        started.set()
        for _ in range(500):
            try:
                check_stop()
            except RunStopped:
                outcome.append("stopped")
                return
            threading.Event().wait(0.01)
        outcome.append("ran to the end")

    with pytest.raises(KeyboardInterrupt):
        with stop_scope():
            t = threading.Thread(target=copy_context().run, args=(shard,))
            t.start()
            started.wait()
            check_stop()  # nothing asked yet
            raise KeyboardInterrupt
    t.join(timeout=30)
    assert outcome == ["stopped"]
    check_stop()  # the scope is gone: the flow's own thread goes on (records the run, re-raises)


def test_a_scope_left_normally_stops_nothing_and_others_are_not_touched():
    with stop_scope():
        other = copy_context()  # another run's work, started before this one stops
    with pytest.raises(ValueError):
        with stop_scope():
            mine = copy_context()
            raise ValueError("a fault of the flow's own also stops its shards")
    assert mine.run(stop_requested) and not other.run(stop_requested)


def test_a_stopped_run_takes_no_further_model_lock_and_is_no_failure_row():
    model = torch.nn.Linear(2, 2)
    with pytest.raises(KeyboardInterrupt):
        with stop_scope():
            ctx = copy_context()
            with ctx.run(model_lock, model):  # before the stop: the lock as before
                pass
            raise KeyboardInterrupt
    with pytest.raises(RunStopped):
        ctx.run(model_lock, model)
    caught = []
    try:
        try:
            ctx.run(check_stop)
        except Exception as e:  # what a per-image handler catches to write a `failures` row
            caught.append(e)
    except RunStopped:
        pass
    assert caught == []


def test_queued_shards_are_dropped_when_the_run_stops():
    from concurrent.futures import ThreadPoolExecutor
    from types import SimpleNamespace

    release = threading.Event()
    with ThreadPoolExecutor(max_workers=1) as pool:
        running = pool.submit(release.wait, 30)
        queued = pool.submit(lambda: "started")
        with pytest.raises(KeyboardInterrupt):
            with stop_scope() as stop:
                stop.cancel_on_stop([SimpleNamespace(wrapped_future=f) for f in (running, queued)])
                raise KeyboardInterrupt
        release.set()
    assert queued.cancelled() and running.result() is True  # the queued one never started; the running one ran on
