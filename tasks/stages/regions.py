"""Stage `regions`: every stored relevancy map segmented into ranked regions (no model needed)."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from mapcap.storage.columns import as_table, list_values
from mapcap.storage.manifest import dataset_masks
from mapcap.tasks.metrics.summaries import on_object
from mapcap.tasks.pipeline.procpool import process_map
from mapcap.tasks.segment import SegmentConfig, segment_job
from mapcap.tasks.segment_batch import CHUNK, segment_batch, segment_chunk
from mapcap.tasks.pipeline.base import Stage, register_stage
from mapcap.tasks.provenance import frozen_config
from mapcap.tasks.pipeline.context import StageContext
from mapcap.tasks.pipeline.facts import Facts

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # where maps are segmented (the same regions either way)
KEYS = ("run_id", "image_id", "shard", "target", "class_name", "method", "start_layer")


@frozen_config
class RegionsConfig:
    segment: SegmentConfig = SegmentConfig()  # threshold, specks, top-k, superpixels
    dataset: str = ""  # its manifest's object masks (toy world) give each region's `on_object`


def _same(r: dict) -> tuple:
    """Rows of one map: a right prediction's pred and label targets share it."""
    return r["image_id"], r["class_name"], r["method"], r["start_layer"]


def segment_rows(maps: list[np.ndarray], grids: list[int], sizes: list[tuple[int, int]], cfg: SegmentConfig,
                 workers: int) -> list[list[dict]]:
    """The regions' columns of each map (its g*g cells, its grid g, its image's size), the maps of a grid size
    together as tensor ops: on a GPU in one go, on CPU CHUNK maps per job in `workers` processes."""
    done: list[list[dict]] = [[] for _ in maps]
    by_grid: dict[int, list[int]] = {}
    for n, g in enumerate(grids):
        by_grid.setdefault(g, []).append(n)
    for g, idx in by_grid.items():
        cells = np.stack([maps[n] for n in idx]).astype(np.float32).reshape(-1, g, g)  # (B, g, g)
        if DEVICE == "cpu":
            jobs = [(cells[c:c + CHUNK], [sizes[n] for n in idx[c:c + CHUNK]], cfg) for c in range(0, len(idx), CHUNK)]
            found = [r for part in process_map(segment_chunk, jobs, workers, min_items=2) for r in part]
        else:
            found = segment_batch(torch.from_numpy(cells).to(DEVICE), [sizes[n] for n in idx], cfg)
        for n, regs in zip(idx, found):
            done[n] = regs
    return done


# version 2: masks stored at the working size (tasks/masks.py), segmented as tensor ops (tasks/segment_batch.py)
@register_stage("regions", RegionsConfig, reads=("relevancy", "images"), writes=("regions",), order=2, version=2,
                summary="segment every map into regions ranked by relevancy mass", settings=SegmentConfig,
                old_names={"segment_threshold": "threshold", "segment_mass": "mass", "segment_min_area": "min_area",
                           "segment_top_k": "top_k", "segment_superpixels": "superpixels"})
class Regions(Stage):
    """Segments the stored maps; decodes images only to snap regions to superpixels."""

    def plan(self, params: Any, facts: Facts) -> RegionsConfig:
        return RegionsConfig(segment=params.regions, dataset=facts.plan.dataset)

    def compute(self, cfg: RegionsConfig, ctx: StageContext) -> dict:
        images = {r["image_id"]: r for r in ctx.table("images")}
        rel = as_table("relevancy", ctx.arrow("relevancy"))
        maps = rel.drop_columns(["map"]).to_pylist()  # the keys; the cells stay numpy (no Python float each)
        pictures = {}
        if cfg.segment.superpixels:  # only superpixel snapping needs the pixels
            ids = sorted({r["image_id"] for r in maps})
            pictures = {i: np.asarray(im) for i, im in ctx.images({i: images[i]["path"] for i in ids}).items()}
        masks = dataset_masks(cfg.dataset) if cfg.dataset else {}
        # a right prediction has one map for both targets (relevancy stores it twice): segmented once
        first: dict[tuple, int] = {}
        for n, r in enumerate(maps):
            if not cfg.segment.superpixels or r["image_id"] in pictures:  # else: a failure row
                first.setdefault(_same(r), n)
        keep = np.array(list(first.values()), np.int64)
        cells = list_values(rel["map"], keep)
        firsts = [maps[n] for n in keep]
        sizes = [(images[r["image_id"]]["width"], images[r["image_id"]]["height"]) for r in firsts]
        if cfg.segment.superpixels:  # SLIC is scikit-image's, which holds the GIL: processes
            jobs = [(c, r["grid"], size, cfg.segment, pictures[r["image_id"]])
                    for c, r, size in zip(cells, firsts, sizes)]
            with ctx.phase("segment"):
                done = dict(zip(first, ctx.map_processes(segment_job, jobs)))
        else:
            with ctx.phase("segment", DEVICE):
                done = dict(zip(first, segment_rows(cells, [r["grid"] for r in firsts], sizes, cfg.segment,
                                                    ctx.workers)))
        rows = []
        for r in maps:
            if _same(r) not in done:
                continue
            img = images[r["image_id"]]
            truth = masks[img["path"]]["mask"] if img["path"] in masks else None
            for reg in done[_same(r)]:
                row = {k: r[k] for k in KEYS} | reg
                rows.append(row | {"on_object": None if truth is None else on_object(row, truth)})
        return {"regions": rows}
