"""Stage `evaluate` (per run): the `evaluations` table: faithfulness and ground-truth scores of every map variant.

On a sample of the run's classified images, maps are computed afresh for each variant (Chefer over all
blocks and on the last block, the gradient baseline, a random map) so every run is scored the same way,
whatever the relevancy stage stored. Perturbation AUCs use the predicted class; pointing game uses the true
class on correctly classified images whose object mask the dataset's manifest holds (the toy world's does);
class discrimination uses images whose manifest also holds a second object's label and mask.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch

from mapcap.storage.manifest import annotations, png_to_mask
from mapcap.tasks.metrics.faithfulness import auc, mass_share, perturbation_curves, pointing_grid, pointing_pixel
from mapcap.tasks.models import ModelSpec, load_model
from mapcap.tasks.relevancy.methods import relevancy_maps
from mapcap.tasks.stages.base import Stage, register_stage
from mapcap.tasks.stages.context import StageContext
from mapcap.tasks.zeroshot import ENSEMBLE, text_classifier

VARIANTS = (("chefer", 0), ("chefer", -1), ("gradient", None), ("random", None))


@functools.lru_cache(maxsize=4)
def dataset_masks(dataset: str) -> dict[str, dict]:
    """{absolute image path: {"mask", "second_label", "second_mask"}} from a manifest with masks, else {}."""
    return {r["path"]: {
        "mask": png_to_mask(r["mask"]), "second_label": r.get("second_label"),
        "second_mask": png_to_mask(r["second_mask"]) if r.get("second_mask") else None}
        for r in annotations(dataset) if r.get("mask")}


@dataclass(frozen=True)
class EvaluateConfig:
    model: ModelSpec  # the run's CLIP
    classes: tuple[str, ...]  # the run's classes, in index order
    templates: tuple[str, ...]  # class texts are the ensemble of these
    dataset: str = ""  # its manifest's masks give the pointing game and class discrimination
    max_images: int = 64  # classified images perturbed (the first by image id)
    variants: tuple[tuple[str, int | None], ...] = VARIANTS  # (method, start layer) scored


# version 2: negative perturbation removes the least relevant cells of the one relevance order insertion uses
@register_stage("evaluate", EvaluateConfig, scope="run", reads=("predictions", "images"),
                writes=("evaluations",), order=10, version=2,
                summary="faithfulness (perturbation AUCs), pointing game and class discrimination of every map method")
class Evaluate(Stage):
    """Maps computed afresh on a sample, the same way for every run."""

    def file_name(self, cfg: EvaluateConfig, shard: int | None) -> str:
        return "evaluations"

    def compute(self, cfg: EvaluateConfig, ctx: StageContext) -> dict:
        preds = {r["image_id"]: r for r in ctx.table("predictions") if r["template"] == ENSEMBLE}
        paths = {r["image_id"]: r["path"] for r in ctx.table("images")}
        ids = sorted(preds)[:cfg.max_images]
        if not ids:
            ctx.log.info("run %s has no classified images: nothing to evaluate", ctx.run_id)
            return {"evaluations": []}
        truth = dataset_masks(cfg.dataset)
        lm = load_model(cfg.model)
        emb = text_classifier(lm, cfg.classes, cfg.templates)[-1]  # (C, D)
        pix = ctx.pixels_of(lm.preprocess, {i: paths[i] for i in ids})
        ids = [i for i in ids if i in pix]
        x = torch.stack([pix[i] for i in ids])  # (B, 3, H, W)
        pred = torch.tensor([cfg.classes.index(preds[i]["pred"]) for i in ids])
        label = torch.tensor([cfg.classes.index(preds[i]["label"]) for i in ids])
        rows, clean = [], None  # the unperturbed images' probabilities: the same for every variant
        for method, start in cfg.variants:
            base = {"run_id": ctx.run_id, "method": method, "start_layer": start}
            pmaps = relevancy_maps(lm, method, x, emb[pred], start)
            curves = perturbation_curves(lm, x, pmaps, emb, pred, label, clean)
            clean = curves.pop("clean")
            rows += [base | {"metric": f"{k}_auc", "value": auc(v), "n": len(ids)} for k, v in curves.items()]
            gt = [(k, truth[paths[i]]) for k, i in enumerate(ids) if paths[i] in truth]
            hits = [(pointing_grid(pmaps[k].numpy(), t["mask"]), pointing_pixel(pmaps[k].numpy(), t["mask"]))
                    for k, t in gt if pred[k] == label[k]]  # correct: the predicted-class map is the true-class map
            if hits:
                rows += [base | {"metric": "pointing_grid", "value": float(np.mean([h[0] for h in hits])),
                                 "n": len(hits)},
                         base | {"metric": "pointing_pixel", "value": float(np.mean([h[1] for h in hits])),
                                 "n": len(hits)}]
            two = [(k, t) for k, t in gt if t["second_mask"] is not None and t["second_label"] in cfg.classes]
            if two:
                ks = [k for k, _ in two]
                own = relevancy_maps(lm, method, x[ks], emb[label[ks]], start)
                other = relevancy_maps(lm, method, x[ks], emb[[cfg.classes.index(t["second_label"])
                                                               for _, t in two]], start)
                shares = [mass_share(own[j].numpy(), t["mask"], t["second_mask"]) for j, (_, t) in enumerate(two)]
                shares += [mass_share(other[j].numpy(), t["second_mask"], t["mask"]) for j, (_, t) in enumerate(two)]
                rows.append(base | {"metric": "discrimination", "value": float(np.mean(shares)), "n": len(shares)})
        return {"evaluations": rows}
