"""The captions stage of a shard: caption the top regions of each map and the whole image, score with CLIPScore.

Each captioner writes its own file per shard (`shard-<n>-<captioner>`), so captioners can be compared and a
rerun with another captioner reuses the stored maps and regions.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

from prefect import task
from prefect.cache_policies import NO_CACHE

from mapcap.storage.manifest import annotations
from mapcap.storage.writer import is_complete, read_table, shard_name, write_table
from mapcap.tasks.captioners.base import CaptionerConfig, clipscore, crop_region, make_captioner, ref_clipscore
from mapcap.tasks.data import ImageLoadError, load_image
from mapcap.tasks.models import ModelSpec, load_model
from mapcap.tasks.provenance import SHARD_RETRIES, chained_hash, library_versions, run_logger

STAGE_VERSION = 1


@dataclass(frozen=True)
class CaptionsConfig:
    model: ModelSpec  # the run's CLIP (retrieval captions and CLIPScore use it)
    captioner: CaptionerConfig = CaptionerConfig()  # which captioner, and its settings
    method: str = "chefer"  # whose regions to caption
    top_k: int = 1  # regions per map to caption
    context: float = 1.0  # crop context around a region (see mapcap.tasks.captioners.base.crop_region)
    dataset: str = ""  # for reference captions (RefCLIPScore) when its manifest has a `caption` column


def references(dataset: str) -> dict[str, list[str]]:
    """{absolute image path: [reference caption]} from the dataset's manifest, for RefCLIPScore."""
    return {r["path"]: [r["caption"]] for r in annotations(dataset) if r.get("caption")}


def captions_shard(cfg: CaptionsConfig, run_id: str, shard: int, root: str, force: bool = False,
                   log: logging.Logger | None = None) -> dict:
    log = log or logging.getLogger(__name__)
    name = f"{shard_name(shard)}-{cfg.captioner.name}"
    chash = chained_hash(root, run_id, shard, "regions", "captions", STAGE_VERSION, cfg)
    if not force and is_complete(root, ["captions"], run_id, name, chash):
        log.info("shard %d captions (%s) already complete: skipped", shard, cfg.captioner.name)
        return {"shard": shard, "skipped": True}
    lm = load_model(cfg.model)
    captioner = make_captioner(cfg.captioner, lm)
    images = {r["image_id"]: r for r in read_table(root, "images", run_id, shard_name(shard)).to_pylist()}
    regions = [r for r in read_table(root, "regions", run_id, shard_name(shard)).to_pylist()
               if r["method"] == cfg.method and r["region_id"] < cfg.top_k]
    refs = references(cfg.dataset)
    jobs, failures, decoded = [], [], {}
    for iid in sorted({r["image_id"] for r in regions}):
        try:
            decoded[iid] = load_image(images[iid]["path"])[0]
        except ImageLoadError as e:
            failures.append({"run_id": run_id, "image_id": iid, "path": images[iid]["path"], "shard": shard,
                             "stage": "captions", "error_type": "ImageLoadError", "error": str(e)})
            continue
        jobs.append(({"target": "image", "method": None, "start_layer": None, "region_id": -1}, iid, decoded[iid]))
    for r in regions:
        if r["image_id"] in decoded:
            crop = crop_region(decoded[r["image_id"]], tuple(r["bbox"]), cfg.context)
            jobs.append(({k: r[k] for k in ("target", "method", "start_layer", "region_id")}, r["image_id"], crop))
    rows = []
    step = cfg.captioner.batch_size
    for b in range(0, len(jobs), step):
        chunk = jobs[b:b + step]
        crops = [c for _, _, c in chunk]
        texts = captioner.caption(crops)
        scores = clipscore(lm, crops, texts).tolist()
        for (key, iid, crop), text, score in zip(chunk, texts, scores):
            ref = refs.get(images[iid]["path"])
            rows.append({"run_id": run_id, "image_id": iid, "shard": shard, **key, "captioner": cfg.captioner.name,
                         "text": text, "clipscore": score,
                         "ref_clipscore": float(ref_clipscore(lm, [crop], [text], [ref])[0]) if ref else None})
    meta = {"config": cfg, "stage": "captions", "stage_version": STAGE_VERSION, "shard": shard}
    write_table(root, "failures", run_id, f"{name}-failures", failures, config=meta, config_hash=chash,
                versions=library_versions())
    write_table(root, "captions", run_id, name, rows, config=meta, config_hash=chash, versions=library_versions())
    log.info("shard %d: %d captions (%s)", shard, len(rows), cfg.captioner.name)
    return {"shard": shard, "skipped": False, "n_captions": len(rows)}


@task(name="captions-shard", task_run_name="captions-shard-{shard}", tags=["mapcap-gpu"], cache_policy=NO_CACHE,
      **SHARD_RETRIES)
def captions_shard_task(cfg: CaptionsConfig, run_id: str, shard: int, root: str, force: bool = False,
                        upstream: dict | None = None) -> dict:
    return captions_shard(cfg, run_id, shard, root, force, log=run_logger(__name__))
