"""The `runs` row while a run runs: a heartbeat with the shards done so far, and a silent one reads as lost."""
from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone

from mapcap.tasks.pipeline.params import ExplainParams
from mapcap.storage.query import connect, named_query, run_sql
from mapcap.tasks.pipeline import run_record
from mapcap.tasks.pipeline.run_record import record_run, run_heartbeat


def _row(root: str) -> dict:
    return run_sql(connect(root), "SELECT status, n_shards_done, updated_at FROM runs").to_pylist()[0]


def test_the_heartbeat_rewrites_the_running_row_and_stops_before_the_final_one(toy_dir, tmp_path, monkeypatch):
    root = str(tmp_path)
    params = ExplainParams(dataset=str(toy_dir), out=root, device="cpu", stages=["classify"], run_name="hb",
                           shard_size=16)
    resolved, pdict, started = params.resolve(), params.model_dump(), datetime.now(timezone.utc)
    results: list[dict | None] = [None] * len(resolved.plan.shards)
    record_run(root, resolved, pdict, "running", started)
    assert _row(root)["n_shards_done"] == 0
    with run_heartbeat(root, resolved, pdict, started, results, every=0.05):
        results[1] = {"shard": 1, "n_images": 16, "stages": {}}  # a shard finishes
        deadline = time.time() + 30
        while _row(root)["n_shards_done"] != 1 and time.time() < deadline:
            time.sleep(0.05)
        assert _row(root)["status"] == "running" and _row(root)["n_shards_done"] == 1
    record_run(root, resolved, pdict, "finished", started, [r for r in results if r])
    time.sleep(0.3)  # six beats' time: none may come after the block
    assert _row(root)["status"] == "finished"

    # a run killed outright (SIGKILL) keeps its last `running` row; five beats later `mapcap runs` says lost
    class Then(datetime):
        @classmethod
        def now(cls, tz=None):
            return datetime.now(tz) - timedelta(minutes=6)

    monkeypatch.setattr(run_record, "datetime", Then)
    record_run(root, resolved, pdict, "running", started, [r for r in results if r])
    shown = named_query(connect(root), "runs_compared").to_pylist()[0]
    assert (shown["status"], shown["shards"]) == ("lost", f"1/{len(resolved.plan.shards)}")
    monkeypatch.undo()
    record_run(root, resolved, pdict, "running", started, [r for r in results if r])
    assert named_query(connect(root), "runs_compared").to_pylist()[0]["status"] == "running"
