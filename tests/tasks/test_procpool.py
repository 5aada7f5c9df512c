"""Worker processes for GIL-bound work: same results as a plain loop, in order; a dead child is a clear error."""
import math
import os
import subprocess
import sys
import time

import pytest

from mapcap.tasks.pipeline import procpool


def square(x: int) -> int:
    return x * x


def die_on_seven(x: int) -> int:
    if x == 7:
        os._exit(3)  # a child killed mid-task (out of memory, SIGKILL)
    return x


def child_pid(_: int) -> int:
    return os.getpid()


def test_results_come_back_in_order_from_other_processes():
    items = list(range(50))
    assert procpool.process_map(square, items, workers=2, min_items=1) == [x * x for x in items]
    assert os.getpid() not in set(procpool.process_map(child_pid, items, workers=2, min_items=1))


def test_few_items_or_one_worker_run_in_this_process():
    assert set(procpool.process_map(child_pid, list(range(10)), workers=2, min_items=64)) == {os.getpid()}
    assert set(procpool.process_map(child_pid, list(range(100)), workers=1, min_items=1)) == {os.getpid()}


def test_a_child_that_dies_is_an_error_naming_the_work_and_the_pool_starts_afresh():
    with pytest.raises(RuntimeError, match=r"die_on_seven on 20 items.*rerun to resume") as err:
        procpool.process_map(die_on_seven, list(range(20)), workers=2, min_items=1)
    assert isinstance(err.value.__cause__, procpool.BrokenProcessPool)
    assert procpool.process_map(square, [1, 2, 3], workers=2, min_items=1) == [1, 4, 9]


def test_children_do_not_run_the_callers_main_script_again(tmp_path):
    """A script without a __main__ guard: multiprocessing's children would run it again (and fail, or start the
    work over); ours import only the work function's module."""
    marker = tmp_path / "ran.txt"
    script = tmp_path / "unguarded.py"
    script.write_text(
        "import math, os\n"
        f"open({str(marker)!r}, 'a').write(f'{{os.getpid()}}\\n')\n"
        "from mapcap.tasks.pipeline import procpool\n"
        "print(procpool.process_map(math.factorial, list(range(12)), workers=2, min_items=1))\n")
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str([math.factorial(i) for i in range(12)])
    assert len(marker.read_text().split()) == 1  # the script ran once, in its own process


def test_a_work_function_of_the_main_script_is_refused():
    def work(x):
        return x
    work.__module__ = "__main__"
    with pytest.raises(ValueError, match="defined in the main script"):
        procpool.process_map(work, list(range(10)), workers=2, min_items=1)


def test_workers_exit_when_their_caller_is_killed(tmp_path):
    """A caller killed with SIGKILL must not leave its pool's workers (and the forkserver) waiting forever."""
    (tmp_path / "pidwork.py").write_text("import os\n\ndef pid(_):\n    return os.getpid()\n")
    script = tmp_path / "caller.py"
    script.write_text(
        "import sys, time\n"
        f"sys.path.insert(0, {str(tmp_path)!r})\n"
        "import pidwork\n"
        "from mapcap.tasks.pipeline import procpool\n"
        "print(sorted(set(procpool.process_map(pidwork.pid, list(range(40)), workers=2, min_items=1))), flush=True)\n"
        "time.sleep(120)\n")
    caller = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True,
                              stderr=subprocess.DEVNULL)  # its resource tracker reports the semaphores it cleans up
    try:
        workers = [int(p) for p in caller.stdout.readline().strip("[]\n").split(",")]
        assert workers and all(_alive(p) for p in workers)
    finally:
        caller.kill()
        caller.wait()
    deadline = time.time() + 20
    while any(_alive(p) for p in workers) and time.time() < deadline:
        time.sleep(0.2)
    assert not any(_alive(p) for p in workers)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # a zombie is gone too (its parent has not reaped it yet)
        return f.read().split(") ")[-1][0] != "Z"


def test_without_worker_processes_the_work_runs_here_with_a_warning(monkeypatch, caplog):
    def no_pool(workers, preload):
        raise OSError(38, "Function not implemented")  # what sem_open says where POSIX semaphores are missing
    monkeypatch.setattr(procpool, "_pool", no_pool)
    assert procpool.process_map(square, list(range(10)), workers=2, min_items=1) == [x * x for x in range(10)]
    assert "worker processes are not available here" in caplog.text and "square" in caplog.text


def test_prestart_starts_the_children_ahead_and_process_map_then_uses_them():
    """A stage's pool started when its shard starts (Stage.prepare): the children are up before the first call,
    which runs in them."""
    workers = 3  # a pool of its own (pools are kept per size)
    procpool._drop(workers)
    procpool.prestart(square, workers)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        pool = procpool._POOLS.get(workers)
        if pool is not None and len(pool._processes) == workers and all(p.is_alive() for p in
                                                                          pool._processes.values()):
            break
        time.sleep(0.05)
    else:
        raise AssertionError("prestart did not start 3 worker processes within 120 s")
    started = set(pool._processes)
    used = set(procpool.process_map(child_pid, list(range(30)), workers=workers, min_items=1))
    assert used <= started and os.getpid() not in used
    procpool._drop(workers)


def test_prestart_does_nothing_for_one_worker():
    procpool.prestart(square, 1)
    assert 1 not in procpool._POOLS


def test_prestart_of_a_running_pool_leaves_its_workers_free():
    """Each shard's start asks again: a pool already running must not be handed work (its workers held busy
    would delay the stage that needs them)."""
    workers = 3
    procpool._drop(workers)
    procpool.process_map(square, list(range(30)), workers=workers, min_items=1)  # starts the pool
    deadline = time.monotonic() + 60
    while not procpool._started(workers) and time.monotonic() < deadline:
        procpool.process_map(square, list(range(30)), workers=workers, min_items=1)
    assert procpool._started(workers)
    procpool.prestart(square, workers)
    t0 = time.monotonic()
    assert procpool.process_map(square, [1, 2, 3], workers=workers, min_items=1) == [1, 4, 9]
    assert time.monotonic() - t0 < procpool.HOLD_S / 2  # no worker was held
    procpool._drop(workers)
