"""The `runs` table: one row per run with its full parameters, code and library versions, and timings."""
from __future__ import annotations

import json
from datetime import datetime, timezone

from prefect import task
from prefect.cache_policies import NO_CACHE

from mapcap.storage.writer import read_run, write_table
from mapcap.tasks.plan import RunPlan
from mapcap.tasks.provenance import code_version, library_versions, to_jsonable


def run_row(plan: RunPlan, params: dict, status: str, started_at: datetime, shard_results: list[dict],
            failed_shards: list[int]) -> dict:
    done = [r for r in shard_results if r]
    finished = datetime.now(timezone.utc) if status != "running" else None
    return {
        "run_id": plan.run_id, "status": status, "started_at": started_at, "finished_at": finished,
        "duration_s": (finished - started_at).total_seconds() if finished else None,
        "dataset": plan.dataset, "model": plan.model.name, "pretrained": plan.model.pretrained,
        "templates": list(plan.templates), "n_classes": len(plan.classes), "n_shards": len(plan.shards),
        "n_images": plan.n_images,
        "n_predicted": sum(r["n_images"] - r["n_failures"] for r in done) if done else None,
        "n_failures": sum(r["n_failures"] for r in done) if done else None,
        "n_shards_skipped": sum(bool(r.get("skipped")) for r in done), "failed_shards": failed_shards,
        "params_json": json.dumps(to_jsonable(params), sort_keys=True, default=str),
        "code_version": code_version(), "versions_json": json.dumps(library_versions(), sort_keys=True),
    }


def record_run(root: str, plan: RunPlan, params: dict, status: str, started_at: datetime,
               shard_results: list[dict] | None = None, failed_shards: list[int] | None = None) -> str:
    """Write (or replace, atomically) the run's row; called at the start and at the end of a run."""
    row = run_row(plan, params, status, started_at, shard_results or [], failed_shards or [])
    return write_table(root, "runs", plan.run_id, "run", [row], config={"params": params, "plan_model": plan.model},
                       versions=library_versions())


@task(name="record-run", cache_policy=NO_CACHE)
def record_run_task(root: str, plan: RunPlan, params: dict, status: str, started_at: datetime,
                    shard_results: list[dict] | None = None, failed_shards: list[int] | None = None) -> str:
    return record_run(root, plan, params, status, started_at, shard_results, failed_shards)


def stored_params(root: str, run_id: str) -> dict:
    """The flow parameters a run was started with (from its `runs` row), to reprocess it."""
    rows = read_run(root, "runs", run_id).to_pylist()
    if not rows:
        raise ValueError(f"no run {run_id!r} under {root}: `mapcap runs --root {root}` lists the runs there")
    return json.loads(rows[0]["params_json"])


@task(name="stored-params", cache_policy=NO_CACHE)
def stored_params_task(root: str, run_id: str) -> dict:
    return stored_params(root, run_id)
