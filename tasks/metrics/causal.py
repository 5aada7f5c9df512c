"""Deletion and insertion as RISE defines them (Petsiuk, Das & Saenko 2018; github.com/eclique/RISE,
`evaluation.py`: `CausalMetric`, `auc`, and the notebook's substrates).

Cells of the map are taken in order of relevance: by value, highest first, ties by cell index (a stable sort, so
the order, hence the AUC, is the same on every run and device; RISE's `np.argsort` leaves ties to the sort).
Deletion starts from the image and replaces `step` cells per step with the deletion substrate; insertion starts
from the insertion substrate and restores `step` cells of the image per step. Every step, including the first
and the last, scores the target class's probability (RISE: the class the model predicts on the clean image);
the AUC is RISE's: the trapezoid over the n + 1 scores normalised by n. The substrates, at model resolution:
- deletion `mean` (RISE's `torch.zeros_like` of the normalised input: the dataset's mean colour, the default) or
  `black` (zero pixels before normalisation, as Chefer et al.'s perturbation test);
- insertion `blur` (RISE's notebook: the image convolved with its `gkern(11, 5)`, zero padded, the default) or
  `mean` (as deletion's `mean`).
"""
from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter

BLUR_SIZE, BLUR_SIGMA = 11, 5.0  # RISE's notebook: gkern(klen=11, nsig=5)


def cell_order(maps: torch.Tensor) -> torch.Tensor:
    """(B, N) cell indices of (B, g, g) maps, most relevant first, ties by cell index."""
    return torch.sort(maps.flatten(1).float(), dim=1, descending=True, stable=True).indices


def gaussian_kernel(size: int = BLUR_SIZE, sigma: float = BLUR_SIGMA) -> torch.Tensor:
    """(3, 1, size, size) RISE's blur kernel: a Dirac delta smoothed by scipy's gaussian_filter, per channel."""
    delta = np.zeros((size, size))
    delta[size // 2, size // 2] = 1.0
    k = torch.from_numpy(gaussian_filter(delta, sigma).astype(np.float32))
    return k.expand(3, 1, size, size).contiguous()


def substrate(pixels: torch.Tensor, kind: str, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """(B, 3, S, S) what replaces the image: `mean` (zeros of the normalised input), `black` (pixel value 0 before
    normalisation) or `blur` (RISE's Gaussian blur of the normalised input, zero padded)."""
    if kind == "mean":
        return torch.zeros_like(pixels)
    if kind == "black":
        return ((0 - mean) / std).view(1, 3, 1, 1).to(pixels).expand_as(pixels).clone()
    if kind == "blur":
        k = gaussian_kernel().to(pixels)
        return F.conv2d(pixels, k, padding=BLUR_SIZE // 2, groups=3)
    raise ValueError(f"perturbation substrate {kind!r} is unknown; choose mean, black or blur")


def n_steps(cells: int, steps: int | None) -> tuple[int, int]:
    """(cells per step, number of steps): every cell a step by default, or about `steps` steps."""
    per = 1 if not steps or steps >= cells else math.ceil(cells / steps)
    return per, math.ceil(cells / per)


def causal_passes(g: int, steps: int | None) -> int:
    """Model passes over the images one map's deletion and insertion curves make (the clean image, the fully
    deleted one and the insertion start are shared by every map of an image)."""
    return 2 * (n_steps(g * g, steps)[1] - 1)


def blend(start: torch.Tensor, finish: torch.Tensor, order: torch.Tensor, k: int, g: int) -> torch.Tensor:
    """(B, 3, S, S) `start` with each image's first k cells of `order` (B, N) taken from `finish`."""
    B, size = start.shape[0], start.shape[-1]
    m = torch.zeros(B, g * g, device=start.device)
    m.scatter_(1, order[:, :k].to(start.device), 1.0)
    m = F.interpolate(m.view(B, 1, g, g), size=(size, size), mode="nearest")  # (B, 1, S, S) 1 = from finish
    return start * (1 - m) + finish * m


def rise_auc(scores: torch.Tensor) -> np.ndarray:
    """(B,) RISE's `auc` of (B, n + 1) scores: (sum − first/2 − last/2) / n."""
    s = scores.double().numpy()
    return (s.sum(1) - s[:, 0] / 2 - s[:, -1] / 2) / (s.shape[1] - 1)


def causal_curves(probs: Callable[[torch.Tensor], torch.Tensor], pixels: torch.Tensor, maps: torch.Tensor,
                  target: torch.Tensor, ends: dict[str, torch.Tensor], steps: int | None = None,
                  tick: Callable[[int], None] = lambda n: None, batch: int = 256) -> dict[str, torch.Tensor]:
    """{"deletion", "insertion"}: (B, n + 1) target-class probabilities. `probs(images) -> (N, C)`; `ends`: the
    shared images' probabilities and substrates: "clean" (B, C), "deleted" (B, C), "inserted" (B, C) and the
    substrates "deletion" / "insertion" (B, 3, S, S). The perturbed images of several steps go through `probs`
    together, about `batch` at a time."""
    B, g = len(target), maps.shape[-1]
    per, n = n_steps(g * g, steps)
    order = cell_order(maps)
    rows = torch.arange(B)
    inner = [(curve, i) for i in range(1, n) for curve in ("deletion", "insertion")]  # the images to score
    scores: dict[tuple[str, int], torch.Tensor] = {}
    group = max(1, batch // max(B, 1))
    for j in range(0, len(inner), group):
        part = inner[j:j + group]
        images = torch.cat([blend(pixels, ends["deletion"], order, per * i, g) if curve == "deletion" else
                            blend(ends["insertion"], pixels, order, per * i, g) for curve, i in part])  # (k·B, ...)
        for key, p in zip(part, probs(images).split(B)):
            scores[key] = p[rows, target]
        tick(len(part) * B)
    deletion = [ends["clean"][rows, target]] + [scores["deletion", i] for i in range(1, n)] + \
        [ends["deleted"][rows, target]]
    insertion = [ends["inserted"][rows, target]] + [scores["insertion", i] for i in range(1, n)] + \
        [ends["clean"][rows, target]]
    return {"deletion": torch.stack(deletion, 1), "insertion": torch.stack(insertion, 1)}
