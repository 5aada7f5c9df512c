"""What `mapcap` does before its heavy imports, so a command starts sooner.

A run without a Prefect server (`PREFECT_API_URL` unset) gets Prefect's temporary one, started when the flow is
called: a separate process that takes ~5 s to come up on the 2-core machines here, after the ~6 s this process
spends importing torch, open_clip and Prefect. Started first, in a thread, its start-up overlaps the imports (the
other core runs it). Prefect keeps one such server per process, so the flow finds it running.
"""
from __future__ import annotations

import gc
import logging
import signal
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")

RUNS_A_FLOW = ("run", "demo")  # the commands that call a flow at once (`serve` runs them later, on its schedule)


def exit_on_sigterm() -> None:
    """A SIGTERM ends the command through Python's shutdown, as Ctrl-C does. Its default action killed the process
    outright (Prefect, having stopped the flow, sends it again under the handler it found), which left the temporary
    Prefect server the command had started running: an orphan server per terminated `mapcap run`."""
    def terminate(signum: int, frame) -> None:
        raise SystemExit(128 + signum)
    signal.signal(signal.SIGTERM, terminate)


def command_of(argv: list[str]) -> str | None:
    """The subcommand of a `mapcap` command line (its only top-level option, --debug, takes no value)."""
    return next((a for a in argv if not a.startswith("-")), None)


def start_prefect_api_early(argv: list[str]) -> Callable[[], None]:
    """Start Prefect's temporary API server in the background when `argv` runs a flow and no server is
    configured; returns a function that waits for it (call it before the flow). Its failure is logged and left
    to Prefect, which tries again when the flow starts and reports the error itself."""
    if command_of(argv) not in RUNS_A_FLOW or {"-h", "--help"} & set(argv):
        return lambda: None
    from prefect.settings import (  # this thread's settings
        PREFECT_API_URL,
        PREFECT_SERVER_EPHEMERAL_ENABLED,
    )
    if PREFECT_API_URL.value() or not PREFECT_SERVER_EPHEMERAL_ENABLED.value():
        return lambda: None
    failed: list[BaseException] = []
    started: list[str] = []

    def start() -> None:
        try:
            from prefect.server.api.server import SubprocessASGIServer
            from prefect.settings import temporary_settings
            server = SubprocessASGIServer()
            with temporary_settings(updates=_temporary_server_settings()):  # its process starts with these
                server.start()
            started.append(server.address)
        except Exception as e:  # noqa: BLE001 (reported by wait(); Prefect retries and raises its own error)
            failed.append(e)

    thread = threading.Thread(target=start, name="mapcap-prefect-api", daemon=True)
    thread.start()

    def wait() -> None:
        thread.join()
        if failed:
            log.warning("starting Prefect's temporary server early failed (%s: %s); the flow tries again",
                        type(failed[0]).__name__, failed[0])
        for address in started:
            log.info("Prefect's temporary server runs on %s for this command (set PREFECT_API_URL to use a "
                     "running Prefect server and see the run in its UI)", address)
    return wait


def _temporary_server_settings() -> dict:
    """Settings of Prefect's temporary server (the one a flow gets without `PREFECT_API_URL`): no analytics. Its
    telemetry service posts to Prefect's servers from a server that lives for one command, logging "ERROR ...
    Failed to send telemetry" in every run where they cannot be reached (all machines here), and writes the
    server's SQLite database as the server starts, where it sometimes met the flow's first writes ("database is
    locked" tracebacks in 2 of 10 benchmark logs)."""
    from prefect.settings import PREFECT_SERVER_ANALYTICS_ENABLED
    return {PREFECT_SERVER_ANALYTICS_ENABLED: False}


def flow_settings() -> AbstractContextManager:
    """Prefect settings for a flow this process runs: on Prefect's temporary server (no `PREFECT_API_URL`), no
    flow-run heartbeats and no analytics (`_temporary_server_settings`; the server, started by the flow, takes
    them). A heartbeat lets a server mark a run whose process died as crashed; the temporary server dies with this
    process, so there is no one to tell. And the heartbeat thread sleeps in 1 s steps, which held the end of every
    flow run for 1.0 s (measured: 1.002 s with, 0.015 s without), a tenth of a 10,000-image classification on the
    H200. On a real server the heartbeats stay."""
    from prefect.settings import PREFECT_API_URL, PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings
    if PREFECT_API_URL.value():
        return nullcontext()
    return temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None, **_temporary_server_settings()})


def import_quietly(load: Callable[[], T]) -> T:
    """`load()` (that imports torch, open_clip, Prefect and transformers) with the garbage collector paused:
    their millions of long-lived objects made it rescan the heap again and again (~1.5 s of every command);
    afterwards they are frozen out of its view (`tasks/models.settle_heap`)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        return load()
    finally:
        from mapcap.tasks.models import settle_heap  # imported by `load` already
        settle_heap()
        if enabled:
            gc.enable()
