"""Shards in flight take turns on the device per model stage (tasks/device_turn.py): the same rows as one shard at
a time, and the device's busy share in the run's record."""
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from mapcap.tasks.device_turn import busy_share, device_turn
from mapcap.tasks.pipeline.run_record import stage_record
from mapcap.tasks.pipeline.context import StageContext
from mapcap.tasks.pipeline.driver import run_shard
from tests.tasks.test_driver import setup  # noqa: F401  (the six-image stage chain)
from tests.tasks.test_reuse import TABLES, by_image


def test_two_shards_in_flight_write_what_one_at_a_time_writes(setup, tmp_path):
    items, plans = setup
    root = str(tmp_path)
    halves = [items[:3], items[3:]]
    for shard, part in enumerate(halves):
        run_shard(plans, root, "one", shard, part, force=True)
    t0 = time.perf_counter()
    with ThreadPoolExecutor(2) as ex:
        results = list(ex.map(lambda s: run_shard(plans, root, "two", s, halves[s], force=True), range(2)))
    for table in TABLES:
        assert by_image(root, table, "one") == by_image(root, table, "two"), table
    phases = [s["phases"] for r in results for s in r["stages"].values()]  # force: computed, not reused
    assert all("device" in p for p, name in zip(phases, [n for r in results for n in r["stages"]])
               if name != "regions")  # every model stage took its turn; regions is host work
    record = stage_record(type("R", (), {"shard_stages": plans, "run_stages": [], "skipped": []})(), results, {},
                          wall_s=time.perf_counter() - t0)
    assert 0 < record["device"]["busy_s"] and 0 < record["device"]["busy_share"] < 1


def test_one_shard_at_a_time_holds_the_device():
    a, b = StageContext("memory://x", "r", 0), StageContext("memory://x", "r", 1)
    order = []
    inside = threading.Event()

    def first():
        with device_turn(a, "test-device"):
            inside.set()
            time.sleep(0.2)
            order.append("a done")

    t = threading.Thread(target=first)
    t.start()
    inside.wait()
    with device_turn(b, "test-device"):
        order.append("b in")
    t.join()
    assert order == ["a done", "b in"] and b.phases["device_wait"] > 0.1 and a.phases["device"] >= 0.2
    assert busy_share([a.phases, b.phases], 0.3)["busy_share"] > 0.6
