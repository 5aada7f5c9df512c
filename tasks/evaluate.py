"""The run's `evaluations` table: faithfulness of every stored map variant, and pointing game with masks.

Masks come from the dataset's manifest when it has a `mask` column (the toy world's manifest does).
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from prefect import task
from prefect.cache_policies import NO_CACHE

from storage.manifest import read_toy_manifest
from storage.writer import read_run, write_table
from tasks.classify import prepared, text_classifier
from tasks.data import Item
from tasks.faithfulness import auc, perturbation_curves, pointing_grid, pointing_pixel
from tasks.models import ModelSpec, load_model
from tasks.runinfo import library_versions, run_logger


def dataset_masks(dataset: str) -> dict[str, np.ndarray]:
    """{absolute image path: object mask} from a manifest with a `mask` column, else {}."""
    from toy.dataset import png_to_mask

    src = Path(dataset)
    manifest = src / "manifest.parquet" if src.is_dir() else src
    if manifest.suffix != ".parquet" or not manifest.is_file():
        return {}
    t = read_toy_manifest(manifest)
    if "mask" not in t.column_names:
        return {}
    return {str((manifest.parent / p).resolve()): png_to_mask(m)
            for p, m in zip(t.column("path").to_pylist(), t.column("mask").to_pylist()) if m}


def evaluate_run(root: str, run_id: str, model: ModelSpec, classes: tuple[str, ...], templates: tuple[str, ...],
                 dataset: str, max_images: int = 64, log: logging.Logger | None = None) -> list[dict]:
    log = log or logging.getLogger(__name__)
    rel = read_run(root, "relevancy", run_id).to_pylist()
    if not rel:
        log.info("run %s has no relevancy maps: nothing to evaluate", run_id)
        return []
    paths = {r["image_id"]: r["path"] for r in read_run(root, "images", run_id).to_pylist()}
    masks = dataset_masks(dataset)
    lm = load_model(model)
    emb = text_classifier(lm, classes, templates)[-1]
    ids = sorted({r["image_id"] for r in rel})[:max_images]
    pix = {iid: p for _, iid, p, _, err in prepared([Item(paths[i], "") for i in ids], lm.preprocess, 4, 64)
           if err is None}
    variants = sorted({(r["method"], r["start_layer"]) for r in rel}, key=str)
    rows = []
    for method, start in variants:
        mine = [r for r in rel if r["method"] == method and r["start_layer"] == start]
        pred = {r["image_id"]: r for r in mine if r["target"] == "pred" and r["image_id"] in pix}
        label = {r["image_id"]: r for r in mine if r["target"] == "label"}
        keys = sorted(pred)
        if not keys:
            continue
        g = pred[keys[0]]["grid"]
        maps = torch.tensor([pred[k]["map"] for k in keys]).view(-1, g, g)
        tgt = torch.tensor([classes.index(pred[k]["class_name"]) for k in keys])
        lab = torch.tensor([classes.index(label[k]["class_name"]) for k in keys])
        curves = perturbation_curves(lm, torch.stack([pix[k] for k in keys]), maps, emb, tgt, lab)
        base = {"run_id": run_id, "method": method, "start_layer": start}
        rows += [base | {"metric": f"{k}_auc", "value": auc(v), "n": len(keys)} for k, v in curves.items()]
        hits = [(pointing_grid(np.array(r["map"]).reshape(g, g), masks[paths[r["image_id"]]]),
                 pointing_pixel(np.array(r["map"]).reshape(g, g), masks[paths[r["image_id"]]]))
                for r in label.values() if paths[r["image_id"]] in masks and r["class_name"] == pred.get(
                    r["image_id"], {}).get("class_name")]  # correctly classified images
        if hits:
            rows.append(base | {"metric": "pointing_grid", "value": float(np.mean([h[0] for h in hits])),
                                "n": len(hits)})
            rows.append(base | {"metric": "pointing_pixel", "value": float(np.mean([h[1] for h in hits])),
                                "n": len(hits)})
    write_table(root, "evaluations", run_id, "evaluations", rows, config={"max_images": max_images},
                versions=library_versions())
    log.info("run %s: %d evaluation rows", run_id, len(rows))
    return rows


@task(name="evaluate-run", cache_policy=NO_CACHE)
def evaluate_run_task(root: str, run_id: str, model: ModelSpec, classes: tuple[str, ...],
                      templates: tuple[str, ...], dataset: str, max_images: int = 64) -> int:
    rows = evaluate_run(root, run_id, model, classes, templates, dataset, max_images, log=run_logger(__name__))
    return len(rows)
