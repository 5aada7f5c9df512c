"""Per-class extractive summaries of region captions, and the properties the trend analysis correlates.

Per class and per class × (correct, wrong): embed the captions with the run's CLIP text encoder, start from the
caption closest to the centroid and add captions by maximal marginal relevance (close to the centroid, far from
what is already picked), skipping near-duplicates. No NLTK, no download: CLIP is the only model.
"""
from __future__ import annotations

import logging
import re
from collections import Counter
from dataclasses import dataclass

import numpy as np
from prefect import task
from prefect.cache_policies import NO_CACHE

from mapcap.storage.writer import read_run, write_table
from mapcap.tasks.stages.evaluate import dataset_masks
from mapcap.tasks.models import ModelSpec, encode_texts, load_model
from mapcap.tasks.provenance import library_versions, run_logger
from mapcap.tasks.segment import rle_decode

SUBSETS = ("all", "correct", "wrong")


@dataclass(frozen=True)
class SummarizeConfig:
    model: ModelSpec  # the run's CLIP: its text encoder embeds the captions
    captioner: str = "retrieval"  # whose captions to summarise
    target: str = "pred"  # maps of the predicted class (what drove the decision) or 'label'
    method: str = "chefer"  # whose regions were captioned
    k: int = 3  # captions per summary
    mmr_lambda: float = 0.7  # MMR trade-off: 1 = closest to the centroid only, 0 = most diverse only
    duplicate_cos: float = 0.95  # a candidate this close to a picked caption is a duplicate
    synonyms: tuple[tuple[str, tuple[str, ...]], ...] = ()  # (class, (synonym, ...)) for class mentions
    dataset: str = ""  # its manifest's masks give the on-object share (toy world)


def mmr_summary(texts: list[str], emb: np.ndarray, k: int, lam: float = 0.7, dup: float = 0.95) -> list[str]:
    """k distinct captions: first the one nearest the centroid, then by MMR. emb: (N, D) unit rows."""
    if not texts:
        return []
    counts = Counter(texts)
    uniq = list(counts)
    first = {t: i for i, t in reversed(list(enumerate(texts)))}
    u = emb[[first[t] for t in uniq]]  # (U, D)
    w = np.array([counts[t] for t in uniq], dtype=np.float64)
    centroid = (u * w[:, None]).sum(0)
    centroid /= max(np.linalg.norm(centroid), 1e-12)
    rel = u @ centroid  # (U,)
    picked: list[int] = []
    while len(picked) < min(k, len(uniq)):
        red = (u @ u[picked].T).max(1) if picked else np.zeros(len(uniq))  # (U,) similarity to the picked
        score = lam * rel - (1 - lam) * red
        score[picked] = -np.inf
        score[red > dup] = -np.inf
        best = int(np.argmax(score))
        if not np.isfinite(score[best]):
            break
        picked.append(best)
    return [uniq[i] for i in picked]


def mentions(text: str, words: tuple[str, ...]) -> bool:
    """Does the text name any of the words (whole words, case-insensitive, plural -s / -es allowed)?"""
    return any(re.search(rf"\b{re.escape(w.lower())}(e?s)?\b", text.lower()) for w in words if w)


def diversity(emb: np.ndarray, max_n: int = 1000) -> float:
    """Mean pairwise cosine distance (0 = every caption the same)."""
    if len(emb) < 2:
        return 0.0
    e = emb[:max_n]
    sims = e @ e.T
    n = len(e)
    return float(1 - (sims.sum() - np.trace(sims)) / (n * (n - 1)))


def class_properties(class_name: str, classes: tuple[str, ...], texts: list[str], emb: np.ndarray,
                     class_emb: np.ndarray, clipscores: list[float], synonyms: dict[str, tuple[str, ...]]) -> dict:
    """The summary properties of one class × subset (caption-level; region-level ones are added by the caller)."""
    own = (class_name, *synonyms.get(class_name, ()))
    others = tuple(w for c in classes if c != class_name for w in (c, *synonyms.get(c, ())))
    centroid = emb.mean(0) if len(emb) else np.zeros(class_emb.shape)
    norm = np.linalg.norm(centroid)
    own_hits = [mentions(t, own) for t in texts]
    return {
        "n_captions": len(texts), "n_distinct": len(set(texts)), "diversity": diversity(emb),
        "class_similarity": float(centroid @ class_emb / norm) if norm > 0 else None,
        "class_mention_share": float(np.mean(own_hits)) if texts else None,
        "other_class_share": float(np.mean([mentions(t, others) and not o for t, o in zip(texts, own_hits)]))
        if texts else None,
        "mean_clipscore": float(np.mean(clipscores)) if clipscores else None,
    }


def on_object(region: dict, mask: np.ndarray) -> bool:
    """Does at least half of the region lie on the object mask?"""
    x0, y0, x1, y1 = region["bbox"]
    reg = rle_decode(region["mask_rle"], (y1 - y0, x1 - x0))
    return bool((reg & mask[y0:y1, x0:x1]).sum() >= 0.5 * max(reg.sum(), 1))


def summarize_run(root: str, run_id: str, cfg: SummarizeConfig, classes: tuple[str, ...],
                  log: logging.Logger | None = None) -> int:
    """Write the run's `class_summaries` (one file per captioner); returns the number of rows."""
    log = log or logging.getLogger(__name__)
    preds = {r["image_id"]: r for r in read_run(root, "predictions", run_id).to_pylist() if r["template"] == "ensemble"}
    caps = [c for c in read_run(root, "captions", run_id).to_pylist()
            if c["captioner"] == cfg.captioner and c["region_id"] >= 0 and c["target"] == cfg.target
            and c["method"] == cfg.method and c["image_id"] in preds]
    regions = [r for r in read_run(root, "regions", run_id).to_pylist()
               if r["target"] == cfg.target and r["method"] == cfg.method and r["image_id"] in preds]
    masks = {}
    if cfg.dataset:
        by_path = dataset_masks(cfg.dataset)
        masks = {r["image_id"]: by_path[r["path"]]["mask"] for r in read_run(root, "images", run_id).to_pylist()
                 if r["path"] in by_path}
    lm = load_model(cfg.model)
    texts_all = sorted({c["text"] for c in caps})
    emb_of = dict(zip(texts_all, encode_texts(lm, texts_all).cpu().numpy())) if texts_all else {}
    class_emb = encode_texts(lm, [f"a photo of a {c}." for c in classes]).cpu().numpy()  # (C, D)
    synonyms = dict(cfg.synonyms)
    rows = []
    for ci, cname in enumerate(classes):
        for subset in SUBSETS:
            keep = {i for i, p in preds.items() if p["label"] == cname
                    and (subset == "all" or p["correct"] == (subset == "correct"))}
            if not keep and subset != "all":
                continue
            sel = [c for c in caps if c["image_id"] in keep]
            texts = [c["text"] for c in sel]
            emb = np.stack([emb_of[t] for t in texts]) if texts else np.zeros((0, class_emb.shape[1]))
            props = class_properties(cname, classes, texts, emb, class_emb[ci], [c["clipscore"] for c in sel],
                                     synonyms)
            regs = [r for r in regions if r["image_id"] in keep]
            tops = [r for r in regs if r["region_id"] == 0]
            summary = mmr_summary(texts, emb, cfg.k, cfg.mmr_lambda, cfg.duplicate_cos)
            on = [on_object(r, masks[r["image_id"]]) for r in regs if r["image_id"] in masks]
            rows.append({
                "run_id": run_id, "class_name": cname, "subset": subset, "captioner": cfg.captioner,
                "n_images": len(keep), "accuracy": float(np.mean([preds[i]["correct"] for i in keep])) if keep else None,
                "summary": summary, "summary_text": "; ".join(summary), **props,
                "mass_outside_top": float(np.mean([1 - r["mass_share"] for r in tops])) if tops else None,
                "on_object_share": float(np.mean(on)) if on else None,
            })
    write_table(root, "class_summaries", run_id, f"summaries-{cfg.captioner}", rows, config={"config": cfg},
                versions=library_versions())
    log.info("run %s: %d class summaries (%s captions)", run_id, len(rows), cfg.captioner)
    return len(rows)


@task(name="summarize-run", cache_policy=NO_CACHE)
def summarize_run_task(root: str, run_id: str, cfg: SummarizeConfig, classes: tuple[str, ...]) -> int:
    return summarize_run(root, run_id, cfg, classes, log=run_logger(__name__))
