"""Stage `faithfulness` (per shard): per-image faithfulness and ground-truth scores of every map variant.

On a sample of the classified images (picked by content id, so the same images in any shard, rerun or grown
dataset), maps are computed afresh for each variant (planning passes every method the model's tower supports:
Chefer over all blocks and on the last block, LeGrad, Grad-ECLIP or Grad-CAM, the gradient baseline, a random map)
so every run is scored the same way, whatever the relevancy stage stored. One row per
(image, variant, metric) in the `faithfulness` table:
- positive_auc / negative_auc: accuracy under Chefer et al.'s perturbation, predicted class's map, removed cells
  black by default (`base`; tasks/metrics/faithfulness.py);
- deletion_auc / insertion_auc: RISE's (tasks/metrics/causal.py): the predicted class's probability as the
  most relevant cells go (to the mean colour) / come (onto the blurred image), one step per cell by default;
- pointing_grid / pointing_pixel (0 or 1): correctly classified images whose object mask the dataset's manifest
  holds (the toy world's does); the predicted-class map is then the true-class map;
- discrimination: images whose manifest also holds a second object's label and mask: the mean of the two
  classes' maps' mass share on their own object.
A per-shard stage, so a later run reuses these rows by content like any other (tasks/pipeline/reuse.py); the
per-run `evaluate` stage averages them into `evaluations`.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from mapcap.storage.manifest import dataset_masks
from mapcap.tasks.device_turn import on_device
from mapcap.tasks.metrics.faithfulness import (map_aucs, mass_share, perturbed_passes, pointing_grid,
                                                pointing_pixel, shared_images)
from mapcap.tasks.cost import CPU_STEPS, default_eval_images
from mapcap.tasks.models import ModelSpec, load_model
from mapcap.tasks.relevancy.methods import grid_size, relevancy_maps
from mapcap.tasks.pipeline.sharding import sampled
from mapcap.tasks.pipeline.base import Stage, StageUnavailable, register_stage
from mapcap.tasks.provenance import frozen_config
from mapcap.tasks.pipeline.context import StageContext
from mapcap.tasks.pipeline.facts import Facts, sample_share
from mapcap.tasks.zeroshot import ENSEMBLE, text_classifier

VARIANTS = (("chefer", 0), ("chefer", -1), ("gradient", None), ("random", None))  # a config's default (toy ViT)


@frozen_config
class FaithfulnessConfig:
    model: ModelSpec  # the run's CLIP
    classes: tuple[str, ...]  # the run's classes, in index order
    templates: tuple[str, ...]  # class texts are the ensemble of these
    dataset: str = ""  # its manifest's masks give the pointing game and class discrimination
    sample: float = 1.0  # share of classified images scored, picked by content id (flows/planning.sample_share)
    variants: tuple[tuple[str, int | None], ...] = VARIANTS  # (method, start layer) scored
    steps: int | None = None  # RISE deletion/insertion steps (None: one per map cell)
    base: str = "black"  # positive/negative perturbation: removed cells black (Chefer et al.) or "mean"
    deletion: str = "mean"  # RISE deletion substrate: "mean" (zeros of the normalised input) or "black"
    insertion: str = "blur"  # RISE insertion start: "blur" (RISE's notebook) or "mean"


@register_stage("faithfulness", FaithfulnessConfig, reads=("predictions", "images"), writes=("faithfulness",),
                order=5, version=2, deferred=True,
                summary="per-image faithfulness (perturbation AUCs), pointing game and class discrimination of "
                        "every map method, on a sample")
class Faithfulness(Stage):
    """Maps computed afresh on a sample, the same way for every run."""

    def plan(self, params: Any, facts: Facts) -> FaithfulnessConfig:
        """The `evaluate` section's settings (tasks/stages/evaluate.py); the sample sized to the model's cost off a
        GPU when the user set none (tasks/cost.py), with a note saying so."""
        e, plan = params.evaluate, facts.plan
        steps = e.steps if e.steps is not None else None if plan.model.device.startswith("cuda") else CPU_STEPS
        images, note = (e.images, None) if e.images is not None else default_eval_images(
            load_model(plan.model), len(facts.all_variants), steps, plan.n_images, len(facts.variants))
        if images == 0:  # even the smallest sample would cost more than the run: left out, with the flag
            raise StageUnavailable(note)
        cfg = FaithfulnessConfig(model=plan.model, classes=plan.classes, templates=plan.templates,
                                 dataset=plan.dataset, sample=sample_share(images, plan.n_images),
                                 variants=facts.all_variants, steps=steps, base=e.base, deletion=e.deletion,
                                 insertion=e.insertion)
        if note and cfg.sample < 1.0:
            facts.notes.append(note)
        return cfg

    @on_device  # one shard at a time on the device, for the whole stage (tasks/device_turn.py)
    def compute(self, cfg: FaithfulnessConfig, ctx: StageContext) -> dict:
        preds = {r["image_id"]: r for r in ctx.table("predictions") if r["template"] == ENSEMBLE}
        paths = {r["image_id"]: r["path"] for r in ctx.table("images")}
        ids = sorted(i for i in preds if sampled(i, cfg.sample))
        if not ids:
            return {"faithfulness": []}
        lm = load_model(cfg.model)
        emb = text_classifier(lm, cfg.classes, cfg.templates)[-1]  # (C, D)
        pix = ctx.pixels_of(lm.preprocess, {i: paths[i] for i in ids})
        ids = [i for i in ids if i in pix]
        if not ids:
            return {"faithfulness": []}
        truth = dataset_masks(cfg.dataset)
        x = torch.stack([pix[i] for i in ids])  # (B, 3, H, W)
        pred = torch.tensor([cfg.classes.index(preds[i]["pred"]) for i in ids])  # (B,)
        label = torch.tensor([cfg.classes.index(preds[i]["label"]) for i in ids])  # (B,)
        gt = [(k, truth[paths[i]]) for k, i in enumerate(ids) if paths[i] in truth]
        two = [(k, t) for k, t in gt if t["second_mask"] is not None and t["second_label"] in cfg.classes]
        rows = []

        def add(k: int, base: dict, metric: str, value: float) -> None:
            rows.append(base | {"image_id": ids[k], "metric": metric, "value": float(value)})

        # progress in perturbed images (a variant is a few hundred passes over the sample with RISE's curves)
        passes = len(cfg.variants) * perturbed_passes(grid_size(lm), cfg.steps) * len(ids)
        done = [0]

        def tick(n: int) -> None:
            done[0] += n
            ctx.progress(done[0], passes, "perturbed images")

        shared = shared_images(lm, x, emb, cfg.base, cfg.deletion, cfg.insertion)  # the same for every variant
        for method, start in cfg.variants:
            base = {"run_id": ctx.run_id, "shard": ctx.shard, "method": method, "start_layer": start}
            pmaps = relevancy_maps(lm, method, x, emb[pred], start)  # (B, g, g)
            for metric, values in map_aucs(lm, x, pmaps, emb, pred, label, shared, cfg.steps, tick).items():
                for k, v in enumerate(values):
                    add(k, base, metric, v)
            for k, t in gt:
                if pred[k] == label[k]:  # correct: the predicted-class map is the true-class map
                    add(k, base, "pointing_grid", pointing_grid(pmaps[k].numpy(), t["mask"]))
                    add(k, base, "pointing_pixel", pointing_pixel(pmaps[k].numpy(), t["mask"]))
            if two:
                ks = [k for k, _ in two]
                own = relevancy_maps(lm, method, x[ks], emb[label[ks]], start)  # (K, g, g)
                other = relevancy_maps(lm, method, x[ks], emb[[cfg.classes.index(t["second_label"])
                                                               for _, t in two]], start)
                for j, (k, t) in enumerate(two):
                    add(k, base, "discrimination", np.mean([mass_share(own[j].numpy(), t["mask"], t["second_mask"]),
                                                            mass_share(other[j].numpy(), t["second_mask"],
                                                                       t["mask"])]))
        order = {i: n for n, i in enumerate(ids)}
        return {"faithfulness": sorted(rows, key=lambda r: order[r["image_id"]])}
