"""The `runs` table: one row per run with its full parameters, code and library versions, and timings."""
from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone

from prefect import task
from prefect.cache_policies import NO_CACHE

from mapcap.storage.writer import read_run, write_table
from mapcap.tasks.device_turn import busy_share
from mapcap.tasks.provenance import code_version, library_versions, to_jsonable
from mapcap.tasks.pipeline.sharding import SCHEME

log = logging.getLogger(__name__)
HEARTBEAT_SECONDS = 60.0  # how often a running run's row is rewritten (storage/query.py calls it lost after 5 beats)


def phase_seconds(parts: list[dict]) -> dict[str, float]:
    """{phase: seconds summed over the shards} of a stage's parts (StageContext.phase, and the driver's write)."""
    out: dict[str, float] = {}
    for part in parts:
        for k, v in part.get("phases", {}).items():
            out[k] = out.get(k, 0.0) + v
    return {k: round(v, 3) for k, v in out.items()}


def stage_record(resolved, shard_results: list[dict], run_results: dict[str, dict],
                 wall_s: float | None = None) -> dict[str, dict]:
    """Per stage: what ran, what was reused (complete shards; rows copied from earlier runs by content), what
    was skipped and why, rows, failures and seconds (timings); under `device`, the seconds the model stages held
    the device and its busy share of the run's `wall_s` (tasks/device_turn.py)."""
    out: dict[str, dict] = {}
    for sp in resolved.shard_stages:
        parts = [r["stages"][sp.name] for r in shard_results if sp.name in r.get("stages", {})]
        out[sp.name] = {"status": "ran", "shards_computed": sum(not s["skipped"] for s in parts),
                        "shards_reused": sum(s["skipped"] for s in parts),
                        "seconds": round(sum(s["seconds"] for s in parts), 3),
                        "phases": phase_seconds(parts),
                        "rows": {t: sum(s["rows"].get(t, 0) for s in parts) for t in
                                 dict.fromkeys(k for s in parts for k in s["rows"])},
                        "rows_reused": {t: sum(s.get("reused_rows", {}).get(t, 0) for s in parts) for t in
                                        dict.fromkeys(k for s in parts for k in s.get("reused_rows", {}))}}
    for sp in resolved.run_stages:
        r = run_results.get(sp.name)
        out[sp.name] = {"status": "pending"} if r is None else {
            "status": "ran", "reused": r["skipped"], "seconds": round(r["seconds"], 3), "rows": r["rows"],
            "phases": phase_seconds([r])}
    for what, why in resolved.skipped:
        out[what] = {"status": "skipped", "reason": why}
    out["device"] = busy_share([s.get("phases", {}) for r in shard_results for s in r.get("stages", {}).values()],
                               wall_s)
    return out


def run_row(resolved, params: dict, status: str, started_at: datetime, shard_results: list[dict],
            failed_shards: list[int], run_results: dict[str, dict]) -> dict:
    plan = resolved.plan
    done = [r for r in shard_results if r]
    finished = datetime.now(timezone.utc) if status != "running" else None
    classify = [r["stages"]["classify"] for r in done if "classify" in r.get("stages", {})]
    n_failed = sum(s["rows"].get("failures", 0) for s in classify) if classify else None
    configs = {sp.name: to_jsonable(sp.config) for sp in resolved.shard_stages + resolved.run_stages}
    return {
        "run_id": plan.run_id, "status": status, "started_at": started_at, "finished_at": finished,
        "duration_s": (finished - started_at).total_seconds() if finished else None,
        "dataset": plan.dataset, "model": plan.model.name, "pretrained": plan.model.pretrained or "random",
        "templates": list(plan.templates), "n_classes": len(plan.classes), "n_shards": len(plan.shards),
        "n_images": plan.n_images,
        "n_predicted": sum(r["n_images"] for r in done) - n_failed if classify else None,
        "n_failures": n_failed,
        "n_shards_skipped": sum(all(s["skipped"] for s in r["stages"].values()) for r in done),
        "failed_shards": failed_shards,
        "params_json": json.dumps(to_jsonable(params), sort_keys=True, default=str),
        "code_version": code_version(), "versions_json": json.dumps(library_versions(), sort_keys=True),
        "config_json": json.dumps(configs, sort_keys=True),
        "stages_json": json.dumps(stage_record(resolved, done, run_results,
                                               (datetime.now(timezone.utc) - started_at).total_seconds()),
                                  sort_keys=True),
        "sharding": SCHEME, "nodes": sorted({r["node"] for r in done if r.get("node")}),
        "updated_at": datetime.now(timezone.utc), "n_shards_done": len(done),
        "n_skipped": sum(n for _, n in plan.skipped), "skipped_json": json.dumps(dict(plan.skipped), sort_keys=True),
    }


def record_run(root: str, resolved, params: dict, status: str, started_at: datetime,
               shard_results: list[dict] | None = None, failed_shards: list[int] | None = None,
               run_results: dict[str, dict] | None = None) -> str:
    """Write (or replace, atomically) the run's row; called at the start and at the end of a run."""
    row = run_row(resolved, params, status, started_at, shard_results or [], failed_shards or [], run_results or {})
    return write_table(root, "runs", resolved.plan.run_id, "run", [row],
                       config={"params": to_jsonable(params), "stages": json.loads(row["config_json"])},
                       versions=library_versions())


@contextmanager
def run_heartbeat(root: str, resolved, params: dict, started_at: datetime, shard_results: list,
                  every: float = HEARTBEAT_SECONDS) -> Iterator[None]:
    """While the block runs, rewrite the run's `running` row every `every` seconds with the shards finished so far
    (`shard_results`, filled in by the caller): `runs` shows a long run's progress, and a row whose `updated_at`
    stops moving belongs to a run that was killed (SIGKILL, a lost machine), which no end-of-run record can say.
    The thread is stopped and joined when the block ends, before the caller writes the final row."""
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(every):
            try:
                record_run(root, resolved, params, "running", started_at, [r for r in list(shard_results) if r])
            except OSError as e:  # a full or flaky disk: the run goes on, the next beat tries again
                log.warning("run %s: heartbeat row not written: %s", resolved.plan.run_id, e)

    thread = threading.Thread(target=beat, name="mapcap-run-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


@task(name="record-run", cache_policy=NO_CACHE)
def record_run_task(root: str, resolved, params: dict, status: str, started_at: datetime,
                    shard_results: list[dict] | None = None, failed_shards: list[int] | None = None,
                    run_results: dict[str, dict] | None = None) -> str:
    return record_run(root, resolved, params, status, started_at, shard_results, failed_shards, run_results)


def stored_params(root: str, run_id: str) -> dict:
    """The flow parameters a run was started with (from its `runs` row), to reprocess it."""
    rows = read_run(root, "runs", run_id).to_pylist()
    if not rows:
        raise ValueError(f"no run {run_id!r} under {root}: `mapcap runs --root {root}` lists the runs there")
    return json.loads(rows[0]["params_json"])


@task(name="stored-params", cache_policy=NO_CACHE)
def stored_params_task(root: str, run_id: str) -> dict:
    return stored_params(root, run_id)
