"""The run's `evaluations` table: faithfulness and ground-truth scores of every map variant.

On a sample of the run's classified images, maps are computed afresh for each variant (Chefer over all
blocks and on the last block, the gradient baseline, a random map) so every run is scored the same way,
whatever the relevancy stage stored. Perturbation AUCs use the predicted class; pointing game uses the true
class on correctly classified images whose object mask the dataset's manifest holds (the toy world's does);
class discrimination uses images whose manifest also holds a second object's label and mask.
"""
from __future__ import annotations

import logging

import numpy as np
import torch
from prefect import task
from prefect.cache_policies import NO_CACHE

from mapcap.storage.manifest import annotations, png_to_mask
from mapcap.storage.writer import read_run, write_table
from mapcap.tasks.stages.classify import ENSEMBLE, prepared, text_classifier
from mapcap.tasks.data import Item
from mapcap.tasks.metrics.faithfulness import auc, mass_share, perturbation_curves, pointing_grid, pointing_pixel
from mapcap.tasks.models import ModelSpec, load_model
from mapcap.tasks.relevancy.methods import relevancy_maps
from mapcap.tasks.provenance import library_versions, run_logger

VARIANTS = (("chefer", 0), ("chefer", -1), ("gradient", None), ("random", None))


def dataset_masks(dataset: str) -> dict[str, dict]:
    """{absolute image path: {"mask", "second_label", "second_mask"}} from a manifest with masks, else {}."""
    return {r["path"]: {
        "mask": png_to_mask(r["mask"]), "second_label": r.get("second_label"),
        "second_mask": png_to_mask(r["second_mask"]) if r.get("second_mask") else None}
        for r in annotations(dataset) if r.get("mask")}


def evaluate_run(root: str, run_id: str, model: ModelSpec, classes: tuple[str, ...], templates: tuple[str, ...],
                 dataset: str, max_images: int = 64, log: logging.Logger | None = None) -> list[dict]:
    log = log or logging.getLogger(__name__)
    preds = {r["image_id"]: r for r in read_run(root, "predictions", run_id).to_pylist()
             if r["template"] == ENSEMBLE}
    paths = {r["image_id"]: r["path"] for r in read_run(root, "images", run_id).to_pylist()}
    ids = sorted(preds)[:max_images]
    if not ids:
        log.info("run %s has no classified images: nothing to evaluate", run_id)
        return []
    truth = dataset_masks(dataset)
    lm = load_model(model)
    emb = text_classifier(lm, classes, templates)[-1]  # (C, D)
    pix = {iid: p for _, iid, p, _, err in prepared([Item(paths[i], "") for i in ids], lm.preprocess, 4, 64)
           if err is None}
    ids = [i for i in ids if i in pix]
    x = torch.stack([pix[i] for i in ids])
    pred = torch.tensor([classes.index(preds[i]["pred"]) for i in ids])
    label = torch.tensor([classes.index(preds[i]["label"]) for i in ids])
    rows = []
    for method, start in VARIANTS:
        base = {"run_id": run_id, "method": method, "start_layer": start}
        pmaps = relevancy_maps(lm, method, x, emb[pred], start)
        curves = perturbation_curves(lm, x, pmaps, emb, pred, label)
        rows += [base | {"metric": f"{k}_auc", "value": auc(v), "n": len(ids)} for k, v in curves.items()]
        gt = [(k, truth[paths[i]]) for k, i in enumerate(ids) if paths[i] in truth]
        hits = [(pointing_grid(pmaps[k].numpy(), t["mask"]), pointing_pixel(pmaps[k].numpy(), t["mask"]))
                for k, t in gt if pred[k] == label[k]]  # correct: the predicted-class map is the true-class map
        if hits:
            rows += [base | {"metric": "pointing_grid", "value": float(np.mean([h[0] for h in hits])), "n": len(hits)},
                     base | {"metric": "pointing_pixel", "value": float(np.mean([h[1] for h in hits])), "n": len(hits)}]
        two = [(k, t) for k, t in gt if t["second_mask"] is not None and t["second_label"] in classes]
        if two:
            ks = [k for k, _ in two]
            own = relevancy_maps(lm, method, x[ks], emb[label[ks]], start)
            other = relevancy_maps(lm, method, x[ks], emb[[classes.index(t["second_label"]) for _, t in two]], start)
            shares = [mass_share(own[j].numpy(), t["mask"], t["second_mask"]) for j, (_, t) in enumerate(two)]
            shares += [mass_share(other[j].numpy(), t["second_mask"], t["mask"]) for j, (_, t) in enumerate(two)]
            rows.append(base | {"metric": "discrimination", "value": float(np.mean(shares)), "n": len(shares)})
    write_table(root, "evaluations", run_id, "evaluations", rows, config={"max_images": max_images,
                "variants": VARIANTS}, versions=library_versions())
    log.info("run %s: %d evaluation rows over %d images", run_id, len(rows), len(ids))
    return rows


@task(name="evaluate-run", cache_policy=NO_CACHE)
def evaluate_run_task(root: str, run_id: str, model: ModelSpec, classes: tuple[str, ...],
                      templates: tuple[str, ...], dataset: str, max_images: int = 64) -> int:
    rows = evaluate_run(root, run_id, model, classes, templates, dataset, max_images, log=run_logger(__name__))
    return len(rows)
