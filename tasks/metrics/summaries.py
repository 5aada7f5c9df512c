"""Per-class extractive summaries of region captions, and the properties the trend analysis correlates.

Per class and per class × (correct, wrong): embed the captions with the run's CLIP text encoder, start from the
caption closest to the centroid and add captions by maximal marginal relevance (close to the centroid, far from
what is already picked), skipping near-duplicates. No NLTK, no download: CLIP is the only model.
"""
from __future__ import annotations

import re
from collections import Counter

import numpy as np

from mapcap.tasks.masks import region_pixels
from mapcap.tasks.templates import prompt_name


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
    """Does the text name any of the words (whole words, case-insensitive, plural -s / -es allowed; a class
    name's underscores match spaces, as prompts say it)?"""
    return any(re.search(rf"\b{re.escape(prompt_name(w).lower())}(e?s)?\b", text.lower()) for w in words if w)


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
    distinct = set(texts)  # region captions repeat: each text is searched once
    own_of = {t: mentions(t, own) for t in distinct}
    other_of = {t: mentions(t, others) and not own_of[t] for t in distinct}
    return {
        "n_captions": len(texts), "n_distinct": len(distinct), "diversity": diversity(emb),
        "class_similarity": float(centroid @ class_emb / norm) if norm > 0 else None,
        "class_mention_share": float(np.mean([own_of[t] for t in texts])) if texts else None,
        "other_class_share": float(np.mean([other_of[t] for t in texts])) if texts else None,
        "mean_clipscore": float(np.mean(clipscores)) if clipscores else None,
    }


def on_object(region: dict, mask: np.ndarray) -> bool:
    """Does at least half of the region lie on the object mask?"""
    (x0, y0, x1, y1), reg = region_pixels(region)  # in image pixels (stored at the working size)
    return bool((reg & mask[y0:y1, x0:x1]).sum() >= 0.5 * max(reg.sum(), 1))
