"""Stage `summarize` (per run): per-class summaries of the region captions and their properties."""
from __future__ import annotations

from typing import Any

import numpy as np
from pydantic import Field

from mapcap.storage.manifest import dataset_masks
from mapcap.tasks.metrics.summaries import class_properties, mmr_summary, on_object
from mapcap.tasks.models import ModelSpec, encode_texts, load_model
from mapcap.tasks.pipeline.base import Rows, Section, Stage, register_stage
from mapcap.tasks.provenance import frozen_config
from mapcap.tasks.pipeline.context import StageContext
from mapcap.tasks.pipeline.facts import Facts
from mapcap.tasks.zeroshot import ENSEMBLE

SUBSETS = ("all", "correct", "wrong")
REGION_COLUMNS = ("image_id", "region_id", "mass_share", "on_object")  # what the summaries use of regions


@frozen_config
class SummarizeConfig:
    model: ModelSpec  # the run's CLIP: its text encoder embeds the captions
    classes: tuple[str, ...] = ()  # the run's classes
    captioner: str = "retrieval"  # whose captions to summarise
    target: str = "pred"  # maps of the predicted class (what drove the decision) or 'label'
    method: str = "chefer"  # the primary relevancy method: whose regions were captioned
    start_layer: int | None = -1  # ... and its start layer
    k: int = 3  # captions per summary
    mmr_lambda: float = 0.7  # MMR trade-off: 1 = closest to the centroid only, 0 = most diverse only
    duplicate_cos: float = 0.95  # a candidate this close to a picked caption is a duplicate
    synonyms: tuple[tuple[str, tuple[str, ...]], ...] = ()  # (class, (synonym, ...)) for class mentions
    dataset: str = ""  # its manifest's masks give the on-object share (toy world)


class SummarizeParams(Section):
    """per-class caption summaries"""

    k: int = Field(3, ge=1, description="captions per class summary (picked by MMR)")
    synonyms: dict[str, list[str]] | None = Field(None, description="{class: [synonym, ...]}: words that count "
                                                                    "as naming the class in a caption")


@register_stage("summarize", SummarizeConfig, scope="run",
                reads=("predictions", "images", "regions", "captions"), writes=("class_summaries",), order=11,
                summary="per-class extractive summaries of region captions and their properties (trend analysis)",
                settings=SummarizeParams, old_names={"summary_k": "k", "synonyms": "synonyms"})
class Summarize(Stage):
    """One row per class and subset, also for classes without images."""

    def file_name(self, cfg: SummarizeConfig, shard: int | None) -> str:
        return f"summaries-{cfg.captioner}"

    def plan(self, params: Any, facts: Facts) -> SummarizeConfig:
        syn = tuple((c, tuple(v)) for c, v in sorted((params.summarize.synonyms or {}).items()))
        method, start = facts.primary
        return SummarizeConfig(model=facts.plan.model, classes=facts.plan.classes,
                               captioner=params.captions.captioner, target="pred", method=method, start_layer=start,
                               k=params.summarize.k, synonyms=syn, dataset=facts.plan.dataset)

    def compute(self, cfg: SummarizeConfig, ctx: StageContext) -> dict:
        preds = {r["image_id"]: r for r in ctx.table("predictions", {"template": ENSEMBLE},
                                                     ("image_id", "label", "correct"))}
        mine = {"target": cfg.target, "method": cfg.method, "start_layer": cfg.start_layer}
        caps = [c for c in ctx.table("captions", mine | {"captioner": cfg.captioner},
                                     ("image_id", "region_id", "text", "clipscore"))
                if c["region_id"] >= 0 and c["image_id"] in preds]
        regions = [r for r in ctx.table("regions", mine, REGION_COLUMNS) if r["image_id"] in preds]
        self._on_object(cfg, ctx, mine, regions)
        lm = load_model(cfg.model)
        texts_all = sorted({c["text"] for c in caps})
        emb_of = dict(zip(texts_all, encode_texts(lm, texts_all).cpu().numpy())) if texts_all else {}
        class_emb = encode_texts(lm, [f"a photo of a {c}." for c in cfg.classes]).cpu().numpy()  # (C, D)
        synonyms = dict(cfg.synonyms)
        rows = []
        for ci, cname in enumerate(cfg.classes):
            for subset in SUBSETS:
                keep = {i for i, p in preds.items() if p["label"] == cname
                        and (subset == "all" or p["correct"] == (subset == "correct"))}
                if not keep and subset != "all":
                    continue
                sel = [c for c in caps if c["image_id"] in keep]
                texts = [c["text"] for c in sel]
                emb = np.stack([emb_of[t] for t in texts]) if texts else np.zeros((0, class_emb.shape[1]))
                props = class_properties(cname, cfg.classes, texts, emb, class_emb[ci], [c["clipscore"] for c in sel],
                                         synonyms)
                regs = [r for r in regions if r["image_id"] in keep]
                tops = [r for r in regs if r["region_id"] == 0]
                summary = mmr_summary(texts, emb, cfg.k, cfg.mmr_lambda, cfg.duplicate_cos)
                on = [r["on_object"] for r in regs if r.get("on_object") is not None]
                rows.append({
                    "run_id": ctx.run_id, "class_name": cname, "subset": subset, "captioner": cfg.captioner,
                    "n_images": len(keep),
                    "accuracy": float(np.mean([preds[i]["correct"] for i in keep])) if keep else None,
                    "summary": summary, "summary_text": "; ".join(summary), **props,
                    "mass_outside_top": float(np.mean([1 - r["mass_share"] for r in tops])) if tops else None,
                    "on_object_share": float(np.mean(on)) if on else None,
                })
        return {"class_summaries": rows}

    @staticmethod
    def _on_object(cfg: SummarizeConfig, ctx: StageContext, mine: dict, regions: Rows) -> None:
        """Fills `on_object` of regions made before the regions stage recorded it, from the dataset's masks (new
        images a manifest does not cover stay None)."""
        missing = {r["image_id"] for r in regions if r.get("on_object") is None}
        masks = dataset_masks(cfg.dataset) if missing and cfg.dataset else {}
        if not masks:
            return
        paths = {r["image_id"]: r["path"] for r in ctx.table("images", columns=("image_id", "path"))
                 if r["image_id"] in missing and r["path"] in masks}
        full = {(r["image_id"], r["region_id"]): r for r in ctx.table("regions", mine) if r["image_id"] in paths}
        for r in regions:
            old = full.get((r["image_id"], r["region_id"]))
            if r.get("on_object") is None and old is not None:
                r["on_object"] = on_object(old, masks[paths[r["image_id"]]]["mask"])
