"""Worker processes for GIL-bound work: same results as a plain loop, in order; a dead child is a clear error."""
import os

import pytest

from mapcap.tasks import procpool


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
