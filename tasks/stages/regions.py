"""Stage `regions`: every stored relevancy map segmented into ranked regions (no model needed)."""
from __future__ import annotations

from typing import Any

import numpy as np

from mapcap.storage.manifest import dataset_masks
from mapcap.tasks.metrics.summaries import on_object
from mapcap.tasks.segment import SegmentConfig, segment_job
from mapcap.tasks.pipeline.base import Stage, register_stage
from mapcap.tasks.provenance import frozen_config
from mapcap.tasks.pipeline.context import StageContext
from mapcap.tasks.pipeline.facts import Facts

KEYS = ("run_id", "image_id", "shard", "target", "class_name", "method", "start_layer")


@frozen_config
class RegionsConfig:
    segment: SegmentConfig = SegmentConfig()  # threshold, specks, top-k, superpixels
    dataset: str = ""  # its manifest's object masks (toy world) give each region's `on_object`


def _same(r: dict) -> tuple:
    """Rows of one map: a right prediction's pred and label targets share it."""
    return r["image_id"], r["class_name"], r["method"], r["start_layer"]


@register_stage("regions", RegionsConfig, reads=("relevancy", "images"), writes=("regions",), order=2,
                summary="segment every map into regions ranked by relevancy mass", settings=SegmentConfig,
                old_names={"segment_threshold": "threshold", "segment_mass": "mass", "segment_min_area": "min_area",
                           "segment_top_k": "top_k", "segment_superpixels": "superpixels"})
class Regions(Stage):
    """Segments the stored maps; decodes images only to snap regions to superpixels."""

    def plan(self, params: Any, facts: Facts) -> RegionsConfig:
        return RegionsConfig(segment=params.regions, dataset=facts.plan.dataset)

    def compute(self, cfg: RegionsConfig, ctx: StageContext) -> dict:
        images = {r["image_id"]: r for r in ctx.table("images")}
        maps = ctx.table("relevancy")
        pictures = {}
        if cfg.segment.superpixels:  # only superpixel snapping needs the pixels
            ids = sorted({r["image_id"] for r in maps})
            pictures = {i: np.asarray(im) for i, im in ctx.images({i: images[i]["path"] for i in ids}).items()}
        masks = dataset_masks(cfg.dataset) if cfg.dataset else {}
        maps = [r for r in maps if not cfg.segment.superpixels or r["image_id"] in pictures]  # else: a failure row
        # a right prediction has one map for both targets (relevancy stores it twice): segmented once
        first: dict[tuple, dict] = {}
        for r in maps:
            first.setdefault(_same(r), r)

        jobs = [(r["map"], r["grid"], (images[r["image_id"]]["width"], images[r["image_id"]]["height"]), cfg.segment,
                 pictures.get(r["image_id"])) for r in first.values()]
        with ctx.phase("segment"):  # scikit-image holds the GIL: processes
            done = dict(zip(first, ctx.map_processes(segment_job, jobs)))
        rows = []
        for r in maps:
            img = images[r["image_id"]]
            truth = masks[img["path"]]["mask"] if img["path"] in masks else None
            for reg in done[_same(r)]:
                row = {k: r[k] for k in KEYS} | reg
                rows.append(row | {"on_object": None if truth is None else on_object(row, truth)})
        return {"regions": rows}
