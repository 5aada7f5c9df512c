"""The `explain` flow: plan shards, map the per-shard stages, record the run, summarise it.

This module only wires tasks; every stage's logic lives in tasks/.
"""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Literal

from prefect import flow, get_run_logger, unmapped
from prefect.artifacts import create_markdown_artifact, create_progress_artifact, update_progress_artifact
from prefect.futures import as_completed
from pydantic import BaseModel, ConfigDict, Field

from tasks.classify import ClassifyConfig, classify_shard_task
from tasks.plan import plan_run_task
from tasks.runs import record_run_task
from tasks.summary import run_summary_task


class ExplainParams(BaseModel):
    """Parameters of one MapCap run (Prefect renders its UI form from this model)."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    dataset: str = Field("toy", description="ImageFolder directory, manifest (.csv/.parquet with path,label), "
                                            "or 'toy' for the embedded toy shapes dataset")
    class_map: str | None = Field(None, description="optional JSON {folder or label: class name}")
    model: str = Field("toy", description="open_clip model name (e.g. ViT-B-16), or 'toy'")
    pretrained: str = Field("toy", description="open_clip pretrained tag, a local checkpoint path, or 'toy'")
    templates: str | list[str] = Field("simple", description="template set (openai, simple, compare) or a list "
                                                             "of templates with one '{}' each")
    top_k: int = Field(5, ge=1, description="labels and probabilities kept per prediction")
    shard_size: int = Field(256, ge=1, description="images per shard (one task, one file per table)")
    batch_size: int = Field(64, ge=1, description="images per forward pass")
    workers: int = Field(4, ge=1, description="image decode threads per shard")
    device: str = Field("auto", description="'auto' (CUDA if present), 'cpu', 'cuda', 'cuda:N'")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field("auto", description="auto: bf16/fp16 on GPU, fp32 on CPU")
    out: str = Field("./mapcap-results", description="results root: local path or fsspec URL (s3://...)")
    run_name: str | None = Field(None, description="run id; reusing one resumes that run, skipping finished shards")
    force: bool = Field(False, description="redo shards that are already complete")


@flow(name="explain", flow_run_name="explain-{params.dataset}", validate_parameters=True)
def explain(params: ExplainParams = ExplainParams()) -> dict:
    """Classify (and later explain) every image of a dataset, shard by shard, into Parquet under `params.out`."""
    logger = get_run_logger()
    started = datetime.now(timezone.utc)
    plan = plan_run_task(dataset=params.dataset, class_map=params.class_map, model=params.model,
                         pretrained=params.pretrained, templates=params.templates, shard_size=params.shard_size,
                         device=params.device, precision=params.precision, run_name=params.run_name)
    pdict = params.model_dump()
    record_run_task(params.out, plan, pdict, "running", started)
    logger.info("run %s: %d images in %d shards, %d classes, %d templates, model %s (%s) on %s/%s",
                plan.run_id, plan.n_images, len(plan.shards), len(plan.classes), len(plan.templates),
                plan.model.name, plan.model.pretrained or "random", plan.model.device, plan.model.precision)
    cfg = ClassifyConfig(plan.model, plan.classes, plan.templates, params.top_k, params.batch_size, params.workers)
    progress = create_progress_artifact(0.0, description=f"MapCap run {plan.run_id}: shards done")
    futures = classify_shard_task.map(unmapped(cfg), plan.run_id, list(range(len(plan.shards))),
                                      [list(s) for s in plan.shards], unmapped(params.out), unmapped(params.force))
    index = {f.task_run_id: i for i, f in enumerate(futures)}
    results, failed = [], []
    for n, fut in enumerate(as_completed(futures), start=1):
        try:
            results.append(fut.result())
        except Exception as e:  # the shard's task run failed (its retries spent); the run records it
            shard = index[fut.task_run_id]
            logger.error("shard %d failed: %s: %s", shard, type(e).__name__, e)
            failed.append(shard)
        update_progress_artifact(progress, 100.0 * n / len(futures))
    status = "failed" if failed else "finished"
    record_run_task(params.out, plan, pdict, status, started, results, sorted(failed))
    if failed:
        raise RuntimeError(f"run {plan.run_id}: shard(s) {sorted(failed)} failed (see their task logs); rerun with "
                           f"run_name={plan.run_id!r} to redo only those")
    summary = run_summary_task(params.out, plan.run_id)
    create_markdown_artifact(summary["markdown"], key="mapcap-run-summary",
                             description=f"MapCap run {plan.run_id}: per-class accuracy")
    return {"run_id": plan.run_id, "root": params.out, "n_images": plan.n_images, "accuracy": summary["accuracy"],
            "n_failures": summary["n_failures"], "shards_skipped": sum(r["skipped"] for r in results)}
