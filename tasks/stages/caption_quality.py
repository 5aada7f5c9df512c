"""Stage `caption_quality` (per run): every captioner's captions against the dataset's reference captions.

Rows of the `evaluations` table (column `captioner` set): corpus BLEU-1..4 and CIDEr-D (coco-caption's
definitions, tasks/metrics/caption_quality.py) and the mean CLIPScore and RefCLIPScore of the same captions, for
the whole-image captions (method and start_layer null) and for the captions of the true class's top region of
the primary map (its method and start layer). Only images whose manifest row has a `caption` are scored; a
dataset without reference captions skips the stage at planning.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np

from mapcap.tasks.metrics.caption_quality import bleu, cider_d
from mapcap.tasks.pipeline.base import Stage, StageUnavailable, register_stage
from mapcap.tasks.provenance import frozen_config
from mapcap.tasks.stages.captions import references
from mapcap.tasks.pipeline.context import StageContext
from mapcap.tasks.pipeline.facts import Facts

METRICS = ("bleu_1", "bleu_2", "bleu_3", "bleu_4", "cider_d", "clipscore", "ref_clipscore")


@frozen_config
class CaptionQualityConfig:
    dataset: str  # its manifest's `caption` column holds the references
    method: str = "chefer"  # the primary relevancy method: whose top region's captions are scored too
    start_layer: int | None = -1  # ... and its start layer


CAPTION_COLUMNS = ("image_id", "captioner", "method", "start_layer", "text", "clipscore", "ref_clipscore")


def _scores(caps: list[dict], refs: list[list[str]]) -> dict[str, float]:
    """Every metric of METRICS over one set of captions and their references."""
    texts = [c["text"] for c in caps]
    out = dict(zip(METRICS[:4], bleu(texts, refs)))
    out["cider_d"] = float(np.mean(cider_d(texts, refs)))
    for k in ("clipscore", "ref_clipscore"):
        vals = [c[k] for c in caps if c[k] is not None]
        out[k] = float(np.mean(vals)) if vals else None
    return out


@register_stage("caption_quality", CaptionQualityConfig, scope="run", reads=("images", "captions"),
                writes=("evaluations",), order=10, version=1,
                summary="caption quality per captioner against reference captions: BLEU, CIDEr-D, (Ref)CLIPScore")
class CaptionQuality(Stage):
    """Scores every captioner whose captions the run holds (a rerun with another captioner adds its rows)."""

    def file_name(self, cfg: CaptionQualityConfig, shard: int | None) -> str:
        return "caption-quality"

    def plan(self, params: Any, facts: Facts) -> CaptionQualityConfig:
        dataset = facts.plan.dataset
        if not references(dataset):
            raise StageUnavailable(f"dataset {dataset} has no reference captions (a Parquet manifest with a "
                                   f"`caption` column) to score captions against")
        return CaptionQualityConfig(dataset=dataset, method=facts.primary[0], start_layer=facts.primary[1])

    def compute(self, cfg: CaptionQualityConfig, ctx: StageContext) -> dict:
        refs = references(cfg.dataset)
        paths = {r["image_id"]: r["path"] for r in ctx.table("images", columns=("image_id", "path"))}
        groups: dict[tuple, list[dict]] = defaultdict(list)  # (captioner, method, start layer) -> captions
        whole = ctx.table("captions", {"region_id": -1}, CAPTION_COLUMNS)
        top = ctx.table("captions", {"target": "label", "region_id": 0, "method": cfg.method,
                                     "start_layer": cfg.start_layer}, CAPTION_COLUMNS)
        for c in whole + top:
            if paths.get(c["image_id"]) in refs:
                groups[(c["captioner"], c["method"], c["start_layer"])].append(c)
        rows = []
        for (captioner, method, start), caps in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1] or "")):
            caps = sorted(caps, key=lambda c: c["image_id"])
            scores = _scores(caps, [refs[paths[c["image_id"]]] for c in caps])
            rows += [{"run_id": ctx.run_id, "method": method, "start_layer": start, "captioner": captioner,
                      "metric": k, "value": v, "n": len(caps)} for k, v in scores.items() if v is not None]
        if not rows:
            ctx.log.info("run %s has no captions of images with reference captions: no caption scores", ctx.run_id)
        return {"evaluations": rows}
