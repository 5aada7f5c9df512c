"""The one driver of every stage: config hashing chained through upstream stages, skip-if-complete, the
decoded images shared by a shard's stages, `failures` rows, atomic writes, logging and timing.

A shard's picked per-shard stages run back to back in one worker (`run_shard`), so each image is decoded once;
each stage still writes its own files and is skipped on its own when they are complete. Per-run stages run
once after every shard (`run_run_stage`), hashed over the per-shard hashes of what they read.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from mapcap.storage.schemas import META_CONFIG
from mapcap.storage.writer import count_rows, file_exists, files_complete, read_file_metadata, write_file, write_table
from mapcap.tasks.data import Item
from mapcap.tasks.limits import DEFAULT_LIMITS, DecodeLimits
from mapcap.tasks.provenance import config_from_json, config_hash, library_versions, to_jsonable
from mapcap.tasks.pipeline import reuse
from mapcap.tasks.pipeline.base import Rows, Stage, get_stage, upstream, writers
from mapcap.tasks.pipeline.context import ImageCache, StageContext
from mapcap.tasks.pipeline.stop import check_stop

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StagePlan:
    name: str  # a registered stage
    config: Any  # its resolved, frozen config


def failures_file(stage: Stage, cfg: Any, shard: int | None) -> str:
    """Each stage's failures go to their own file beside its outputs: `shard-00003-relevancy`."""
    return f"{stage.file_name(cfg, shard)}-{stage.name}"


def output_files(stage: Stage, cfg: Any, shard: int | None) -> list[tuple[str, str]]:
    """(table, file name) of everything the stage writes; complete when all carry its config hash."""
    name = stage.file_name(cfg, shard)
    return [("failures", failures_file(stage, cfg, shard))] + [(t, name) for t in stage.writes]


def stage_hash(stage: Stage, cfg: Any, upstream_hashes: dict[str, Any], inputs: str = "") -> str:
    """What makes finished work reusable: the stage, its version and config, and the hashes of what it read."""
    return config_hash(stage.name, stage.version, to_jsonable(cfg), upstream_hashes, inputs)


def _meta(stage: Stage, cfg: Any, shard: int | None) -> dict:
    return {"stage": stage.name, "stage_version": stage.version, "shard": shard, "config": to_jsonable(cfg)}


def run_stage(stage: Stage, cfg: Any, ctx: StageContext, chash: str, force: bool = False,
              reuse_hash: str | None = None) -> dict:
    """Compute and write one stage for ctx's shard (or run) unless its files are complete; with `reuse_hash`
    (shard stages), images an earlier run did with the same config are copied, not computed (reuse.py)."""
    where = f"shard {ctx.shard}" if ctx.shard is not None else f"run {ctx.run_id}"
    files = output_files(stage, cfg, ctx.shard)
    extra = stage.files(cfg, ctx)
    if not force and files_complete(ctx.root, ctx.run_id, files, chash) and all(
            file_exists(ctx.root, f) for f in extra):
        ctx.log.info("%s %s: complete (config %s), skipped", where, stage.name, chash,
                     extra={"mapcap_stage": (ctx.shard, stage.name)})
        return {"skipped": True, "hash": chash, "seconds": 0.0,
                "rows": {t: count_rows(ctx.root, t, ctx.run_id, n) for t, n in files}}
    t0 = time.perf_counter()
    ctx.begin(stage.name)
    out, reused, reuse_meta = reuse.compute(stage, cfg, ctx, files, reuse_hash, force)
    t_write = time.perf_counter()
    failures = with_rows(out.pop("failures", []), ctx.failures.rows)
    blobs = out.pop("files", {})
    unknown = set(out) - set(stage.writes)
    if unknown:
        raise RuntimeError(f"stage {stage.name!r} returned tables {sorted(unknown)} it does not declare in `writes`")
    meta, versions = _meta(stage, cfg, ctx.shard), library_versions()
    for relpath, data in blobs.items():
        write_file(ctx.root, relpath, data)
    write_table(ctx.root, "failures", ctx.run_id, files[0][1], failures, config=meta, config_hash=chash,
                versions=versions, extra_meta=reuse_meta)
    for table, name in files[1:]:  # the outputs last: a killed run leaves the stage incomplete
        rows = out.get(table, [])
        write_table(ctx.root, table, ctx.run_id, name, rows, config=meta, config_hash=chash, versions=versions,
                    extra_meta=reuse_meta)
        ctx.outputs[table] = rows
    seconds = time.perf_counter() - t0
    phases = ctx.phases | {"write": time.perf_counter() - t_write}
    counts = {"failures": len(failures)} | {t: len(out.get(t, [])) for t in stage.writes}
    ctx.log.info("%s %s: %s in %.2f s (%s)", where, stage.name, ", ".join(f"{n} {t}" for t, n in counts.items()),
                 seconds, ", ".join(f"{k} {v:.2f}" for k, v in phases.items()),
                 extra={"mapcap_stage": (ctx.shard, stage.name)})  # (the CLI's progress bar counts these)
    return {"skipped": False, "hash": chash, "seconds": seconds, "rows": counts, "reused_rows": reused,
            "phases": phases}


def with_rows(rows: Rows | pa.Table, more: Rows) -> Rows | pa.Table:
    """`more` rows put before `rows` (a list of dicts, or the Arrow table of reused rows)."""
    if not isinstance(rows, pa.Table):
        return more + list(rows)
    return pa.concat_tables([pa.Table.from_pylist(more, schema=rows.schema), rows]) if more else rows


def forced(force: bool | frozenset[str], name: str) -> bool:
    """Whether stage `name` is redone though complete: all stages (True), none (False), or those named."""
    return force if isinstance(force, bool) else name in force


def run_shard(plans: list[StagePlan], root: str, run_id: str, shard: int, items: list[Item],
              force: bool | frozenset[str] = False,
              workers: int | None = None, log_: logging.Logger | None = None,
              limits: DecodeLimits = DEFAULT_LIMITS) -> dict:
    """Every picked per-shard stage of one shard, in order, sharing decoded images (each within `limits`)."""
    ctx = StageContext(root, run_id, shard, list(items), workers, ImageCache(), log_ or log, limits=limits)
    inputs = config_hash([(it.path, it.label) for it in items])
    hashes: dict[str, str] = {}
    for sp in plans:
        hashes[sp.name] = stage_hash(get_stage(sp.name), sp.config, {d: hashes[d] for d in upstream(sp.name)}, inputs)
    by_content = reuse.content_hashes(plans)  # the chain without the shard's inputs, weights included
    # what this chain will compute, so a stage may do a later one's work in its own pass (classify + relevancy)
    ctx.shared.pending = {sp.name: sp.config for sp in plans if forced(force, sp.name) or not files_complete(
        root, run_id, output_files(get_stage(sp.name), sp.config, shard), hashes[sp.name])}
    for name, cfg in ctx.shared.pending.items():
        get_stage(name).prepare(cfg, ctx.workers)
    stages: dict[str, dict] = {}
    for sp in plans:
        check_stop()  # a stopped run's shard starts no further stage (tasks/pipeline/stop.py)
        stages[sp.name] = run_stage(get_stage(sp.name), sp.config, ctx, hashes[sp.name], forced(force, sp.name),
                                    by_content[sp.name])
    return {"shard": shard, "n_images": len(items), "stages": stages}


def run_run_stage(sp: StagePlan, root: str, run_id: str, shard_results: list[dict], run_results: dict[str, dict],
                  force: bool = False, workers: int | None = None, extra: dict | None = None,
                  log_: logging.Logger | None = None, limits: DecodeLimits = DEFAULT_LIMITS) -> dict:
    """One per-run stage over the whole run; its hash chains the per-shard hashes of the stages it follows."""
    stage = get_stage(sp.name)
    w = writers()
    follows = set(upstream(sp.name)) | {s for t in stage.uses for s in w.get(t, ())}
    up: dict[str, Any] = {}
    for name in sorted(follows):
        if name in run_results:
            up[name] = run_results[name]["hash"]
        elif any(name in r["stages"] for r in shard_results):
            up[name] = [r["stages"][name]["hash"] if name in r["stages"] else None for r in shard_results]
    ctx = StageContext(root, run_id, None, None, workers, ImageCache(), log_ or log, extra, limits)
    return run_stage(stage, sp.config, ctx, stage_hash(stage, sp.config, up), force)


def stored_config(root: str, table: str, run_id: str, name: str) -> Any:
    """The resolved stage config a Parquet file was written with, as the stage's config object."""
    meta = read_file_metadata(root, table, run_id, name)
    if meta is None:
        raise FileNotFoundError(f"no {table} file {name!r} in run {run_id!r} under {root}")
    doc = json.loads(meta.get(META_CONFIG, b"{}"))
    if "stage" not in doc:
        raise ValueError(f"{table}/{name} of run {run_id} was written before stage configs were stored as data")
    return config_from_json(get_stage(doc["stage"]).Config, json.dumps(doc["config"]))
