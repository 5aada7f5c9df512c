"""The relevancy stage of a shard: maps for the predicted and the true class of every classified image."""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from prefect import task
from prefect.cache_policies import NO_CACHE

from mapcap.storage.writer import is_complete, read_table, shard_name, write_table
from mapcap.tasks.stages.classify import ENSEMBLE, prepared, text_classifier
from mapcap.tasks.data import Item
from mapcap.tasks.models import ModelSpec, load_model
from mapcap.tasks.relevancy.methods import default_start_layer, map_stats, relevancy_maps
from mapcap.tasks.provenance import SHARD_RETRIES, chained_hash, library_versions, run_logger

STAGE_VERSION = 1
TARGETS = ("pred", "label")


@dataclass(frozen=True)
class RelevancyConfig:
    model: ModelSpec  # the run's model
    classes: tuple[str, ...]  # class names, as classified
    templates: tuple[str, ...]  # the class text is the ensemble of these templates
    methods: tuple[str, ...] = ("chefer", "gradient")  # registered relevancy methods
    start_layers: tuple[int, ...] | None = None  # chefer's first block(s); None: the model's default
    batch_size: int = 32  # images per backward pass (halved on CUDA out-of-memory)
    workers: int = 4  # decode threads


def method_variants(cfg: RelevancyConfig) -> list[tuple[str, int | None]]:
    """(method, start_layer) pairs to compute; start_layer only varies for attention-based methods."""
    out = []
    for m in cfg.methods:
        if m == "chefer":
            for s in cfg.start_layers or (default_start_layer(cfg.model.name),):
                out.append((m, s))
        else:
            out.append((m, None))
    return out


def relevancy_rows(run_id: str, shard: int, image_ids: list[str], targets: list[str], classes: list[str],
                   method: str, start_layer: int | None, maps: torch.Tensor) -> list[dict]:
    stats = map_stats(maps)
    g = maps.shape[-1]
    return [{"run_id": run_id, "image_id": iid, "shard": shard, "target": tgt, "class_name": cls,
             "method": method, "start_layer": start_layer, "grid": g, "map": maps[i].flatten().tolist(),
             "peak": int(stats["peak"][i]), "entropy": float(stats["entropy"][i]),
             "top10_mass": float(stats["top10_mass"][i])}
            for i, (iid, tgt, cls) in enumerate(zip(image_ids, targets, classes))]


def relevancy_shard(cfg: RelevancyConfig, run_id: str, shard: int, root: str, force: bool = False,
                    log: logging.Logger | None = None) -> dict:
    """Compute and write the shard's relevancy table from its classify outputs; skip it if complete."""
    log = log or logging.getLogger(__name__)
    name = shard_name(shard)
    chash = chained_hash(root, run_id, shard, "predictions", "relevancy", STAGE_VERSION, cfg)
    if not force and is_complete(root, ["relevancy"], run_id, name, chash):
        log.info("shard %d relevancy already complete: skipped", shard)
        return {"shard": shard, "skipped": True}
    preds = read_table(root, "predictions", run_id, name).to_pylist()
    ens = {r["image_id"]: r for r in preds if r["template"] == ENSEMBLE}
    paths = {r["image_id"]: r["path"] for r in read_table(root, "images", run_id, name).to_pylist()}
    lm = load_model(cfg.model)
    text = text_classifier(lm, cfg.classes, cfg.templates)[-1]  # (C, D) ensemble embedding per class
    ids = sorted(ens)
    items = [Item(paths[i], ens[i]["label"]) for i in ids]
    pixels = {}
    for item, image_id, pix, _, err in prepared(items, lm.preprocess, cfg.workers, 2 * cfg.batch_size):
        if err is None:
            pixels[image_id] = pix
    # one map per distinct (image, class); pred and label share it when the prediction is right
    pairs = sorted({(i, ens[i][t]) for i in ids if i in pixels for t in TARGETS})
    rows, failures = [], []
    for method, start in method_variants(cfg):
        done: dict[tuple[str, str], torch.Tensor] = {}
        for b in range(0, len(pairs), cfg.batch_size):
            chunk = pairs[b:b + cfg.batch_size]
            pix = torch.stack([pixels[i] for i, _ in chunk])
            txt = text[[cfg.classes.index(c) for _, c in chunk]]
            maps = relevancy_maps(lm, method, pix, txt, start, cfg.batch_size)
            bad = ~torch.isfinite(maps).flatten(1).all(1)
            for (pair, m, is_bad) in zip(chunk, maps, bad):
                if is_bad:
                    failures.append({"run_id": run_id, "image_id": pair[0], "path": paths[pair[0]], "shard": shard,
                                     "stage": f"relevancy:{method}", "error_type": "NonFiniteMap",
                                     "error": f"the {method} map for class {pair[1]!r} has NaN/inf values"})
                else:
                    done[pair] = m
        keys = [(i, t) for i in ids for t in TARGETS if (i, ens[i][t]) in done]
        if keys:
            maps = torch.stack([done[(i, ens[i][t])] for i, t in keys])
            rows += relevancy_rows(run_id, shard, [i for i, _ in keys], [t for _, t in keys],
                                   [ens[i][t] for i, t in keys], method, start, maps)
    meta = {"config": cfg, "stage": "relevancy", "stage_version": STAGE_VERSION, "shard": shard}
    write_table(root, "failures", run_id, f"{name}-relevancy", failures, config=meta, config_hash=chash,
                versions=library_versions())
    write_table(root, "relevancy", run_id, name, rows, config=meta, config_hash=chash, versions=library_versions())
    log.info("shard %d: %d relevancy maps, %d failures", shard, len(rows), len(failures))
    return {"shard": shard, "skipped": False, "n_maps": len(rows), "n_failures": len(failures)}


@task(name="relevancy-shard", task_run_name="relevancy-shard-{shard}", tags=["mapcap-gpu"], cache_policy=NO_CACHE,
      **SHARD_RETRIES)
def relevancy_shard_task(cfg: RelevancyConfig, run_id: str, shard: int, root: str, force: bool = False,
                         upstream: dict | None = None) -> dict:
    """`upstream` is the shard's classify result: passing its future makes Prefect order the two."""
    return relevancy_shard(cfg, run_id, shard, root, force, log=run_logger(__name__))
