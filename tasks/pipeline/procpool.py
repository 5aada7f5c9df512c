"""CPU work that holds the GIL, spread over worker processes.

scikit-image and numpy on small arrays (segmenting a 14×14 map at 256 px) hold the GIL for most of their time:
1,200 noisy maps took 3.1 s in one thread and 3.1 s in two, 1.6 s in two processes (2 cores; /tmp/prof2/segpar.py
in the notes of issue "Throughput"). Threads suit PIL and torch, which release it; this module is for the rest.

One pool per process and size, started on first use and kept (a start costs ~0.5 s: the children import the
work's modules). Children come from a forkserver, a clean process that has imported those modules, never a fork
of a process holding CUDA, Prefect's threads or a model. They do not run the caller's main script again, as
multiprocessing's children otherwise do: a script without an `if __name__ == "__main__":` guard would start its
work again in each child, and a guarded one would still import torch and Prefect there for nothing.
"""
from __future__ import annotations

import atexit
import logging
import multiprocessing as mp
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import spawn
from typing import Any

log = logging.getLogger(__name__)
MIN_ITEMS = 64  # fewer items run in the calling process: not worth a pool's start
WATCH_S = 1.0  # how often a worker checks that its caller lives
_POOLS: dict[int, ProcessPoolExecutor] = {}
_LOCK = threading.Lock()
_LAUNCHING = threading.local()  # set while this thread starts our pool's children
_preparation_data = spawn.get_preparation_data


def _without_main(name: str) -> dict:
    """multiprocessing's start-up data for a child, without the caller's main script while this module's pool
    starts children (a work function lives in an importable module, never in __main__)."""
    data = _preparation_data(name)
    if getattr(_LAUNCHING, "on", False):
        data.pop("init_main_from_path", None)
        data.pop("init_main_from_name", None)
    return data


spawn.get_preparation_data = _without_main  # children of other pools are started as before


def _watch(caller: int) -> None:
    """In each worker: exit once the process that started the pool is gone. A caller killed with SIGKILL (a
    flow run cancelled hard, a worker machine's OOM killer) otherwise left its workers waiting for work forever,
    and the forkserver with them."""
    def watch() -> None:
        while True:
            time.sleep(WATCH_S)
            try:
                os.kill(caller, 0)  # signal 0: does it exist?
            except ProcessLookupError:
                os._exit(0)
            except PermissionError:  # it exists (owned by another user after a PID reuse: rare, harmless)
                pass

    threading.Thread(target=watch, name="mapcap-pool-watch", daemon=True).start()


def _pool(workers: int, preload: list[str]) -> ProcessPoolExecutor:
    with _LOCK:
        pool = _POOLS.get(workers)
        if pool is None:
            method = "forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn"
            ctx = mp.get_context(method)
            if method == "forkserver":
                ctx.set_forkserver_preload(preload)  # taken when the server first starts
            pool = _POOLS[workers] = ProcessPoolExecutor(workers, mp_context=ctx, initializer=_watch,
                                                         initargs=(os.getpid(),))
        return pool


def _drop(workers: int) -> None:
    with _LOCK:
        pool = _POOLS.pop(workers, None)
    if pool is not None:
        pool.shutdown(wait=True, cancel_futures=True)


@atexit.register
def shutdown() -> None:
    """Stop every pool (at exit)."""
    for workers in list(_POOLS):
        _drop(workers)


HOLD_S = 1.0  # how long each of prestart's items keeps its worker busy


def _hold(_: int) -> None:
    """What `prestart` sends each worker: busy for HOLD_S, so that no worker is idle while the next item is
    submitted (the pool starts a child per submit only while none is idle)."""
    time.sleep(HOLD_S)


def _started(workers: int) -> bool:
    """Whether the pool of this size runs all its workers (then prestart has nothing to do)."""
    with _LOCK:
        pool = _POOLS.get(workers)
    procs = dict(getattr(pool, "_processes", None) or {})
    return len(procs) >= workers and all(p.is_alive() for p in procs.values())


def prestart(fn: Callable[[Any], Any], workers: int) -> None:
    """Start the pool `process_map(fn, ..., workers)` will use, in a background thread, so that the children's
    start (the forkserver importing torch and fn's module: 2-5 s on a busy CPU) overlaps earlier work instead of
    delaying the first call. Does nothing where process_map would run in the calling process."""
    if workers <= 1 or fn.__module__ == "__main__" or _started(workers):
        return

    def start() -> None:
        _LAUNCHING.on = True
        try:
            pool = _pool(workers, [fn.__module__])
            list(pool.map(_hold, range(workers)))
        except (OSError, BrokenProcessPool) as e:  # process_map reports it (and runs in this process) when called
            log.debug("could not start worker processes ahead (%s); process_map will try again", e)
        finally:
            _LAUNCHING.on = False

    threading.Thread(target=start, name="mapcap-pool-start", daemon=True).start()


def process_map(fn: Callable[[Any], Any], items: list, workers: int, min_items: int | None = None) -> list:
    """[fn(x) for x in items] in `workers` processes (in order); in this process when workers is 1 or the items
    are few. `fn` must be a module-level function, its items and results picklable (keep them small: they are
    copied). A child that dies (killed, out of memory) fails the call with a RuntimeError naming it; the pool
    is started afresh on the next call."""
    if workers <= 1 or len(items) < max(MIN_ITEMS if min_items is None else min_items, 2):
        return [fn(x) for x in items]
    if fn.__module__ == "__main__":
        raise ValueError(f"{fn.__qualname__} is defined in the main script: worker processes import the work "
                         f"function by module, so move it into an importable module")
    try:
        pool = _pool(workers, [fn.__module__])
    except OSError as e:  # no POSIX semaphores or no process start here (some sandboxes and serverless hosts)
        log.warning("worker processes are not available here (%s): %s runs in this process", e, fn.__qualname__)
        return [fn(x) for x in items]
    _LAUNCHING.on = True  # the pool starts its children on demand, from this thread, while it takes the items
    try:
        return list(pool.map(fn, items, chunksize=max(1, len(items) // (4 * workers))))
    except BrokenProcessPool as e:
        _drop(workers)
        raise RuntimeError(f"a worker process died running {fn.__module__}.{fn.__qualname__} on {len(items)} "
                           f"items (killed, or out of memory); rerun to resume, or set workers=1 to run in "
                           f"the calling process") from e
    finally:
        _LAUNCHING.on = False
