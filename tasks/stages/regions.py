"""The regions stage of a shard: segment every stored relevancy map into ranked regions."""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from prefect import task
from prefect.cache_policies import NO_CACHE

from mapcap.storage.writer import is_complete, read_table, shard_name, write_table
from mapcap.tasks.data import ImageLoadError, load_image
from mapcap.tasks.provenance import SHARD_RETRIES, chained_hash, library_versions, run_logger
from mapcap.tasks.segment import SegmentConfig, rle_encode, segment_map

STAGE_VERSION = 1


@dataclass(frozen=True)
class RegionsConfig:
    segment: SegmentConfig = SegmentConfig()  # threshold, specks, top-k, superpixels


def regions_shard(cfg: RegionsConfig, run_id: str, shard: int, root: str, force: bool = False,
                  log: logging.Logger | None = None) -> dict:
    """Regions for every relevancy row of the shard; reuses the stored maps (no model needed)."""
    log = log or logging.getLogger(__name__)
    name = shard_name(shard)
    chash = chained_hash(root, run_id, shard, "relevancy", "regions", STAGE_VERSION, cfg)
    if not force and is_complete(root, ["regions"], run_id, name, chash):
        log.info("shard %d regions already complete: skipped", shard)
        return {"shard": shard, "skipped": True}
    images = {r["image_id"]: r for r in read_table(root, "images", run_id, name).to_pylist()}
    rows, failures, pictures = [], [], {}
    for r in read_table(root, "relevancy", run_id, name).to_pylist():
        img = images[r["image_id"]]
        image = None
        if cfg.segment.superpixels:  # only superpixel snapping needs the pixels
            if r["image_id"] not in pictures:
                try:
                    pictures[r["image_id"]] = np.asarray(load_image(img["path"])[0])
                except ImageLoadError as e:
                    failures.append({"run_id": run_id, "image_id": r["image_id"], "path": img["path"],
                                     "shard": shard, "stage": "regions", "error_type": "ImageLoadError",
                                     "error": str(e)})
                    pictures[r["image_id"]] = None
            image = pictures[r["image_id"]]
            if image is None:
                continue
        g = r["grid"]
        for reg in segment_map(np.asarray(r["map"], np.float32).reshape(g, g), (img["width"], img["height"]),
                               cfg.segment, image):
            rows.append({k: r[k] for k in ("run_id", "image_id", "shard", "target", "class_name", "method",
                                           "start_layer")} | {
                "region_id": reg.rank, "bbox": list(reg.bbox), "area": reg.area, "centroid_x": reg.centroid[0],
                "centroid_y": reg.centroid[1], "mean_relevancy": reg.mean_relevancy, "mass": reg.mass,
                "mass_share": reg.mass_share, "mask_rle": rle_encode(reg.mask)})
    meta = {"config": cfg, "stage": "regions", "stage_version": STAGE_VERSION, "shard": shard}
    write_table(root, "failures", run_id, f"{name}-regions", failures, config=meta, config_hash=chash,
                versions=library_versions())
    write_table(root, "regions", run_id, name, rows, config=meta, config_hash=chash, versions=library_versions())
    log.info("shard %d: %d regions", shard, len(rows))
    return {"shard": shard, "skipped": False, "n_regions": len(rows)}


@task(name="regions-shard", task_run_name="regions-shard-{shard}", cache_policy=NO_CACHE, **SHARD_RETRIES)
def regions_shard_task(cfg: RegionsConfig, run_id: str, shard: int, root: str, force: bool = False,
                       upstream: dict | None = None) -> dict:
    return regions_shard(cfg, run_id, shard, root, force, log=run_logger(__name__))
