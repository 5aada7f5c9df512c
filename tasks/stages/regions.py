"""Stage `regions`: every stored relevancy map segmented into ranked regions (no model needed)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from mapcap.storage.manifest import dataset_masks
from mapcap.tasks.metrics.summaries import on_object
from mapcap.tasks.segment import SegmentConfig, segment_job
from mapcap.tasks.segment_batch import segment_batch
from mapcap.tasks.stages.base import Stage, register_stage
from mapcap.tasks.stages.context import StageContext

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # where maps are segmented (the same regions either way)
KEYS = ("run_id", "image_id", "shard", "target", "class_name", "method", "start_layer")


@dataclass(frozen=True)
class RegionsConfig:
    segment: SegmentConfig = SegmentConfig()  # threshold, specks, top-k, superpixels
    dataset: str = ""  # its manifest's object masks (toy world) give each region's `on_object`


def _same(r: dict) -> tuple:
    """Rows of one map: a right prediction's pred and label targets share it."""
    return r["image_id"], r["class_name"], r["method"], r["start_layer"]


# version 2: masks stored at the working size (tasks/masks.py), segmented as tensor ops (tasks/segment_batch.py)
def segment_rows(maps: list[dict], sizes: list[tuple[int, int]], cfg: SegmentConfig) -> dict[tuple, list[dict]]:
    """{map key: its regions' columns} of relevancy rows, every map of a grid size at once as tensor ops."""
    done: dict[tuple, list[dict]] = {}
    by_grid: dict[int, list[int]] = {}
    for n, r in enumerate(maps):
        by_grid.setdefault(r["grid"], []).append(n)
    for g, idx in by_grid.items():
        cells = torch.tensor(np.array([maps[n]["map"] for n in idx], np.float32), device=DEVICE).view(-1, g, g)
        done |= zip([_same(maps[n]) for n in idx], segment_batch(cells, [sizes[n] for n in idx], cfg))
    return done


@register_stage("regions", RegionsConfig, reads=("relevancy", "images"), writes=("regions",), order=2, version=2,
                summary="segment every map into regions ranked by relevancy mass")
class Regions(Stage):
    """Segments the stored maps; decodes images only to snap regions to superpixels."""

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

        sizes = [(images[r["image_id"]]["width"], images[r["image_id"]]["height"]) for r in first.values()]
        if cfg.segment.superpixels:  # SLIC is scikit-image's, which holds the GIL: processes
            jobs = [(r["map"], r["grid"], size, cfg.segment, pictures.get(r["image_id"]))
                    for r, size in zip(first.values(), sizes)]
            with ctx.phase("segment"):
                done = dict(zip(first, ctx.map_processes(segment_job, jobs)))
        else:
            with ctx.phase("segment", DEVICE):
                done = segment_rows(list(first.values()), sizes, cfg.segment)
        rows = []
        for r in maps:
            img = images[r["image_id"]]
            truth = masks[img["path"]]["mask"] if img["path"] in masks else None
            for reg in done[_same(r)]:
                row = {k: r[k] for k in KEYS} | reg
                rows.append(row | {"on_object": None if truth is None else on_object(row, truth)})
        return {"regions": rows}
