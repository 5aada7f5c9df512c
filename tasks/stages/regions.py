"""Stage `regions`: every stored relevancy map segmented into ranked regions (no model needed)."""
from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import torch

from mapcap.storage.columns import as_table, list_column, list_values, table_of
from mapcap.storage.manifest import dataset_masks
from mapcap.tasks.metrics.summaries import on_object
from mapcap.tasks.pipeline.procpool import prestart
from mapcap.tasks.segment import SegmentConfig, segment_job
from mapcap.tasks.region_columns import FIELDS, RegionColumns
from mapcap.tasks.segment_batch import segment_columns
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
                 ) -> RegionColumns:
    """The regions of each map (its g*g cells, its grid g, its image's size) as columns, the maps of a grid size
    together as tensor ops (CHUNK at a time), in this process: on CPU, torch's own threads share the ops, and a
    worker pool's start (its children import torch: 2-3 s) cost more than a shard's maps take here (1,000
    4000×3000 photos' maps: 1.0 s in this process, 0.85 s in two warm workers; bench/segment.py)."""
    by_grid: dict[int, list[int]] = {}
    for n, g in enumerate(grids):
        by_grid.setdefault(g, []).append(n)
    parts, names = [], []
    for g, idx in by_grid.items():
        cells = np.stack([maps[n] for n in idx]).astype(np.float32).reshape(-1, g, g)  # (B, g, g)
        parts.append(segment_columns(torch.from_numpy(cells).to(DEVICE), [sizes[n] for n in idx], cfg))
        names.append(np.array(idx, np.int64))
    return RegionColumns.concat(parts, names)


def region_table(rel: pa.Table, row_map: np.ndarray, found: RegionColumns, on_obj: list | None) -> pa.Table:
    """The regions table: each relevancy row's keys (row_map: the map it was segmented as, -1 for none) with
    the regions of that map, in row then rank order."""
    first, count = found.of_maps(int(row_map.max(initial=-1)) + 1)
    rows = np.flatnonzero(row_map >= 0)
    reps = count[row_map[rows]]  # regions of each row's map
    row_of = np.repeat(rows, reps)  # (R',) the relevancy row of each output region
    within = np.arange(len(row_of)) - np.repeat(np.cumsum(reps) - reps, reps)
    region = np.repeat(first[row_map[rows]], reps) + within  # (R',) the region
    keys = rel.select(list(KEYS)).take(pa.array(row_of))
    cols = {k: keys.column(k) for k in KEYS}
    got = found.take(region)
    for k in FIELDS:
        v = getattr(got, k)
        cols[k] = list_column(v) if k in ("bbox", "mask_size", "image_size") else \
            pa.array(v, pa.list_(pa.int32())) if k == "mask_rle" else v
    cols["on_object"] = None if on_obj is None else [on_obj[i] for i in region.tolist()]
    return table_of("regions", len(row_of), cols)


# version 2: masks stored at the working size (tasks/masks.py), segmented as tensor ops (tasks/segment_batch.py)
@register_stage("regions", RegionsConfig, reads=("relevancy", "images"), writes=("regions",), order=2, version=2,
                summary="segment every map into regions ranked by relevancy mass", settings=SegmentConfig,
                old_names={"segment_threshold": "threshold", "segment_mass": "mass", "segment_min_area": "min_area",
                           "segment_top_k": "top_k", "segment_superpixels": "superpixels"})
class Regions(Stage):
    """Segments the stored maps; decodes images only to snap regions to superpixels."""

    def plan(self, params: Any, facts: Facts) -> RegionsConfig:
        return RegionsConfig(segment=params.regions, dataset=facts.plan.dataset)

    def prepare(self, cfg: RegionsConfig, workers: int) -> None:
        if cfg.segment.superpixels:  # SLIC's worker pool, started ahead (on a GPU machine, idle cores' work)
            prestart(segment_job, workers)

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
        row_map = np.full(len(maps), -1, np.int64)  # the map each row is segmented as (-1: none, a failure row)
        for n, r in enumerate(maps):
            if not cfg.segment.superpixels or r["image_id"] in pictures:
                row_map[n] = first.setdefault(_same(r), len(first))
        numbers, at = np.unique(row_map, return_index=True)
        keep = at[numbers >= 0]  # (M,) the first row of each map, in map order
        cells = list_values(rel["map"], keep)
        firsts = [maps[n] for n in keep]
        sizes = [(images[r["image_id"]]["width"], images[r["image_id"]]["height"]) for r in firsts]
        if cfg.segment.superpixels:  # SLIC is scikit-image's, which holds the GIL: processes
            jobs = [(c, r["grid"], size, cfg.segment, pictures[r["image_id"]])
                    for c, r, size in zip(cells, firsts, sizes)]
            with ctx.phase("segment"):
                found = RegionColumns.from_maps(ctx.map_processes(segment_job, jobs))
        else:
            with ctx.phase("segment", DEVICE):
                found = segment_rows(cells, [r["grid"] for r in firsts], sizes, cfg.segment)
        on_obj = None
        if masks:  # the toy world's object masks: is each region at least half on the object?
            truth = [masks.get(images[firsts[m]["image_id"]]["path"], {}).get("mask") for m in found.map.tolist()]
            on_obj = [None if t is None else on_object(found.row(i), t) for i, t in enumerate(truth)]
        return {"regions": region_table(rel, row_map, found, on_obj)}
