"""The `explain` flow: plan the run, run each shard's stages in one task per shard, then the per-run stages.

This module only wires tasks; the stages live in tasks/stages/ and run through one driver.
"""
from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from datetime import datetime, timezone

from prefect import flow, get_run_logger, unmapped
from prefect.context import FlowRunContext
from prefect.artifacts import (create_markdown_artifact, create_progress_artifact, create_table_artifact,
                               update_progress_artifact)
from prefect.futures import as_completed
from prefect.task_runners import ThreadPoolTaskRunner
from prefect.utilities.annotations import quote

from mapcap.tasks.pipeline.params import ExplainParams
from mapcap.tasks.pipeline.plan import shards_to_force
from mapcap.tasks.report.run_summary import run_summary_task
from mapcap.tasks.pipeline.run_record import record_run_task, run_heartbeat
from mapcap.tasks.pipeline.sharding import SHARDS_IN_FLIGHT
from mapcap.tasks.report.html import report_path
from mapcap.tasks.pipeline.planning import passes
from mapcap.tasks.pipeline.tasks import expand_run_task, merged, plan_run_task, run_stage_task, shard_task_on
from mapcap.tasks.pipeline.stop import stop_scope

__all__ = ["ExplainParams", "explain"]


def gpu_request(gpus: float) -> AbstractContextManager:
    """prefect-ray's remote_options(num_gpus=...) when asked for, else nothing."""
    if gpus <= 0:
        return nullcontext()
    from prefect_ray.context import remote_options
    return remote_options(num_gpus=gpus)


def whole(value):
    """`value` for a shard task without Prefect walking it in search of futures (the shards' item lists hold every
    image of the run: walking 10,000 items cost 0.26-0.44 s per task call, quoted 0.003 s). Only the thread-pool
    runner is known to hand a quoted argument over as it was; prefect-ray's rebuilds it wrongly (a list of
    lists), so on Ray the value goes unquoted."""
    runner = getattr(FlowRunContext.get(), "task_runner", None)
    return quote(value) if isinstance(runner, ThreadPoolTaskRunner) else value


@flow(name="explain", flow_run_name="explain-{params.dataset}", validate_parameters=True,
      task_runner=ThreadPoolTaskRunner(max_workers=SHARDS_IN_FLIGHT))
def explain(params: ExplainParams = ExplainParams()) -> dict:
    """Explain every image of a dataset, shard by shard, into Parquet under `params.out`."""
    logger = get_run_logger()
    started = datetime.now(timezone.utc)
    resolved = plan_run_task(params)
    plan = resolved.plan
    pdict = params.model_dump()
    expand_run_task(params.out, plan.run_id)  # a compacted run is resumed from its original per-shard files
    # quote(): the plan holds every image of the run, and Prefect would walk it looking for futures (see `whole`);
    # this task runs in the flow's process, whatever the runner
    record_run_task(params.out, quote(resolved), pdict, "running", started)
    logger.info("run %s: %d images in %d shard%s, %d classes, %d templates, model %s (%s) on %s/%s; stages %s",
                plan.run_id, plan.n_images, len(plan.shards), "" if len(plan.shards) == 1 else "s", len(plan.classes),
                len(plan.templates),
                plan.model.name, plan.model.pretrained or "random", plan.model.device, plan.model.precision,
                [s.name for s in resolved.shard_stages + resolved.run_stages],
                extra={"mapcap_plan": (len(plan.shards), [s.name for s in resolved.shard_stages],
                                       [s.name for s in resolved.run_stages])})
    by_reason: dict[str, list[str]] = {}  # each reason said once (no concept bank: two features off)
    for what, why in resolved.skipped:
        by_reason.setdefault(why, []).append(what)
    for why, whats in by_reason.items():
        logger.warning("%s skipped: %s", ", ".join(whats), why)
    for note in resolved.notes:
        logger.warning("%s", note)
    progress = create_progress_artifact(0.0, description=f"MapCap run {plan.run_id}: shards done")
    forces = shards_to_force(plan, params.force, params.redo_classes)
    results: list[dict | None] = [None] * len(plan.shards)
    failed: set[int] = set()
    run_results: dict[str, dict] = {}
    try:
        with run_heartbeat(params.out, resolved, pdict, started, results), stop_scope() as stop:
            # the heartbeat rewrites the `running` row as shards finish; Ctrl-C, SIGTERM or a cancel stops the
            # running shards at their next batch
            for k, (shard_plans, run_plans, deferred) in enumerate(passes(resolved)):
                # a later pass forces only its deferred stages (the others were just done, or are complete)
                pass_forces = forces if k == 0 else [deferred if f else False for f in forces]
                with gpu_request(params.gpus_per_shard):  # a Ray resource request per shard task
                    futures = shard_task_on(plan.model.device).map(
                        unmapped(list(shard_plans)), unmapped(params.out), plan.run_id,
                        list(range(len(plan.shards))), [whole(list(s)) for s in plan.shards], pass_forces,
                        unmapped(params.workers), unmapped(resolved.limits))
                stop.cancel_on_stop(futures)  # queued shards are then dropped
                shard_of = {f.task_run_id: i for i, f in enumerate(futures)}
                for n, fut in enumerate(as_completed(futures), start=1):
                    i = shard_of[fut.task_run_id]
                    try:
                        results[i] = merged(results[i], fut.result())
                    except Exception as e:  # the shard failed (its retries spent); the run records it
                        logger.error("shard %d failed: %s: %s", i, type(e).__name__, e)
                        failed.add(i)
                    update_progress_artifact(progress, 100.0 * n / len(futures))
                if failed:
                    break
                done_before = set(run_results)
                for sp in run_plans:  # a stage an earlier pass ran is complete now, unless what it uses changed
                    run_results[sp.name] = run_stage_task(
                        sp, params.out, plan.run_id, [r for r in results if r], run_results,
                        (params.force or any(forces)) and sp.name not in done_before, params.workers,
                        {"dataset": plan.dataset, "classes": plan.classes}, resolved.limits)
    except BaseException as e:  # stopped (or a fault of the flow's own): record what is done, then end as asked
        done = [r for r in results if r is not None]
        record_run_task(params.out, quote(resolved), pdict, "failed" if isinstance(e, Exception) else "stopped",
                        started, done, [], run_results)
        logger.warning("run %s ended early (%s): %d of %d shards done, their files kept; rerun with run_name=%r "
                       "(--run-name %s) to do the rest", plan.run_id, type(e).__name__, len(done), len(plan.shards),
                       plan.run_id, plan.run_id)
        raise
    done = [r for r in results if r is not None]
    if failed:
        record_run_task(params.out, quote(resolved), pdict, "failed", started, done, sorted(failed))
        raise RuntimeError(f"run {plan.run_id}: shard(s) {sorted(failed)} failed (see their task logs); rerun with "
                           f"run_name={plan.run_id!r} to redo only those")
    record_run_task(params.out, quote(resolved), pdict, "finished", started, done, [], run_results)
    report = report_path(plan.run_id) if "report" in run_results else None
    report = f"{params.out.rstrip('/')}/{report}" if report else None
    summary = run_summary_task(params.out, plan.run_id)
    report_line = f"\n\nHTML report: `{report}`\n" if report else ""
    skipped_md = "".join(f"\n- `{what}` skipped: {why}" for what, why in resolved.skipped)
    skipped_md += "".join(f"\n- note: {note}" for note in resolved.notes)
    create_markdown_artifact(summary["markdown"] + report_line + skipped_md, key="mapcap-run-summary",
                             description=f"MapCap run {plan.run_id}: per-class accuracy")
    create_table_artifact(summary["per_class_table"], key="mapcap-per-class",
                          description=f"MapCap run {plan.run_id}: per-class accuracy, confusion and caption summary")
    return {"run_id": plan.run_id, "root": params.out, "n_images": plan.n_images, "accuracy": summary["accuracy"],
            "n_failures": summary["n_failures"], "shards_done": len(done),
            "shards_skipped": sum(all(s["skipped"] for s in r["stages"].values()) for r in done),
            "skipped_stages": [list(s) for s in resolved.skipped], "notes": list(resolved.notes), "report": report}
