"""How faithful and how well-placed relevancy maps are.

Perturbation (Chefer et al. 2021's ViT evaluation): remove patches in order of relevancy and re-classify.
  positive: most relevant first; the accuracy curve should fall fast (lower AUC is better);
  negative: least relevant first; accuracy should hold (higher AUC is better).
  "Removed" cells show the perturbation base: `black` (pixels zeroed before normalisation, as Chefer et al.; the
  default) or `mean` (zeros of the normalised input, the dataset's mean colour). Fractions 0, 0.1, ..., 0.9;
  AUCs are trapezoids over the removed fraction, extended flat to 1.
Deletion / insertion (Petsiuk et al. 2018, RISE): tasks/metrics/causal.py, as the authors compute them.
Cells are ranked by value, ties by cell index (a stable sort): the same order on every run and device.
Ground truth (toy world): pointing game at grid level (the peak cell touches the object) and pixel level
(the peak of the upsampled map within a tolerance of the object: 15 px at 224 px, scaled), and class
discrimination on two-object images (share of a class map's mass on its own object vs the other).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import distance_transform_edt

from mapcap.tasks.metrics.causal import causal_curves, causal_passes, cell_order, rise_auc, substrate
from mapcap.tasks.models import LoadedModel, encode_pixels
from mapcap.tasks.report.overlay import upsample

FRACTIONS = tuple(i / 10 for i in range(10))  # share of patches removed (or inserted)


def _kept(order: torch.Tensor, cells: slice, g: int, size: int) -> torch.Tensor:
    """(B, 1, size, size) 1 = shown: the cells order[:, cells] of each image's relevance order (B, N)."""
    B = order.shape[0]
    keep = torch.zeros(B, g * g)
    keep.scatter_(1, order[:, cells], 1.0)
    return F.interpolate(keep.view(B, 1, g, g), size=(size, size), mode="nearest")


def perturbation_plan(maps: torch.Tensor) -> dict[str, list[tuple[str, int]]]:
    """Per curve and fraction, which image is shown: ("top", k) = only the k most relevant cells, ("bottom", k) =
    only the cells after the k most relevant. Positive at f removes the f·N most relevant cells; negative at f
    (its f·N least relevant cells removed) shows the N − f·N most relevant."""
    N = maps.shape[-1] * maps.shape[-2]
    ns = [round(f * N) for f in FRACTIONS]
    return {"positive": [("bottom", n) for n in ns], "negative": [("top", N - n) for n in ns]}


def perturbed_passes(g: int, steps: int | None = None) -> int:
    """Passes over the images one map of a g×g grid costs: the positive and negative perturbation images (the
    unperturbed images are classified once for every map, the blank image once per call) and RISE's deletion
    and insertion steps."""
    N = g * g
    keys = {k for keys in perturbation_plan(torch.zeros(g, g)).values() for k in keys}
    return len(keys - {("top", N), ("bottom", 0), ("top", 0), ("bottom", N)}) + causal_passes(g, steps)


@torch.no_grad()
def _probs(lm: LoadedModel, pixels: torch.Tensor, classifier: torch.Tensor) -> torch.Tensor:
    img = encode_pixels(lm, pixels)  # (B, D), unit
    return (lm.model.logit_scale.exp() * img @ classifier.T.to(img.device)).softmax(-1).cpu()  # (B, C)


def perturbation_curves(lm: LoadedModel, pixels: torch.Tensor, maps: torch.Tensor, classifier: torch.Tensor,
                        label: torch.Tensor, clean: torch.Tensor | None = None,
                        tick: Callable[[int], None] = lambda n: None,
                        base: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Accuracy curves (B, F) over FRACTIONS under positive and negative perturbation, and "clean": the
    unperturbed images' probabilities (B, C). `label`: (B,) class indices; classifier (C, D). `clean`: those
    probabilities when the caller has them already (pass them back for the next variant). `base` (B, 3, S, S):
    what removed cells show (None: zeros of the normalised input). `tick(n)` follows each pass over n images."""
    B, size, g = len(label), pixels.shape[-1], maps.shape[-1]
    N = g * g
    base = torch.zeros_like(pixels) if base is None else base
    order = cell_order(maps)  # (B, N) most relevant first, ties by index
    plan = perturbation_plan(maps)
    probs: dict[tuple[str, int], torch.Tensor] = {}
    for key in dict.fromkeys(k for keys in plan.values() for k in keys):
        kind, n = key
        if (kind, n) in (("top", N), ("bottom", 0)):  # everything shown
            probs[key] = _probs(lm, pixels, classifier) if clean is None else clean
            clean = probs[key]
        elif (kind, n) in (("top", 0), ("bottom", N)):  # nothing shown: the base
            probs[key] = _probs(lm, base, classifier)
        else:
            cells = slice(None, n) if kind == "top" else slice(n, None)
            probs[key] = _probs(lm, base + (pixels - base) * _kept(order, cells, g, size), classifier)
            tick(B)
    out = {name: torch.stack([(probs[k].argmax(-1) == label).float() for k in keys], dim=1)
           for name, keys in plan.items()}
    return out | {"clean": clean}


@dataclass
class Shared:
    """What every map variant of the same images shares: the images' probabilities unperturbed, the perturbation
    base and RISE's substrates, and the probabilities of the fully deleted image and of the insertion start."""
    clean: torch.Tensor  # (B, C)
    base: torch.Tensor  # (B, 3, S, S) what positive/negative perturbation shows where cells are removed
    deletion: torch.Tensor  # (B, 3, S, S) RISE's deletion substrate
    insertion: torch.Tensor  # (B, 3, S, S) RISE's insertion substrate
    deleted: torch.Tensor  # (B, C)
    inserted: torch.Tensor  # (B, C)


def norm_stats(preprocess) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, std) of the preprocess's Normalize (OpenAI's when it has none)."""
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
    from torchvision.transforms import Normalize

    norm = [t for t in getattr(preprocess, "transforms", []) if isinstance(t, Normalize)]
    mean, std = (norm[0].mean, norm[0].std) if norm else (OPENAI_DATASET_MEAN, OPENAI_DATASET_STD)
    return torch.tensor(mean, dtype=torch.float32), torch.tensor(std, dtype=torch.float32)


def shared_images(lm: LoadedModel, pixels: torch.Tensor, classifier: torch.Tensor, base: str = "black",
                  deletion: str = "mean", insertion: str = "blur") -> Shared:
    """The Shared of a batch (B, 3, S, S) of preprocessed images; base / deletion / insertion name substrates."""
    mean, std = norm_stats(lm.preprocess)
    sub = {k: substrate(pixels, k, mean, std) for k in {base, deletion, insertion}}
    return Shared(_probs(lm, pixels, classifier), sub[base], sub[deletion], sub[insertion],
                  _probs(lm, sub[deletion], classifier), _probs(lm, sub[insertion], classifier))


def map_aucs(lm: LoadedModel, pixels: torch.Tensor, maps: torch.Tensor, classifier: torch.Tensor,
             target: torch.Tensor, label: torch.Tensor, shared: Shared, steps: int | None = None,
             tick: Callable[[int], None] = lambda n: None) -> dict[str, np.ndarray]:
    """Per image (B,): positive_auc and negative_auc (accuracy of `label`), deletion_auc and insertion_auc
    (RISE's, on the probability of `target`: the class predicted on the clean image)."""
    curves = perturbation_curves(lm, pixels, maps, classifier, label, shared.clean, tick, shared.base)
    ends = {"clean": shared.clean, "deleted": shared.deleted, "inserted": shared.inserted,
            "deletion": shared.deletion, "insertion": shared.insertion}
    causal = causal_curves(lambda x: _probs(lm, x, classifier), pixels, maps, target, ends, steps, tick)
    return {"positive_auc": aucs(curves["positive"]), "negative_auc": aucs(curves["negative"]),
            "deletion_auc": rise_auc(causal["deletion"]), "insertion_auc": rise_auc(causal["insertion"])}


def aucs(curves: torch.Tensor) -> np.ndarray:
    """(B,) areas under (B, F) curves sampled at FRACTIONS (extended flat to 1.0)."""
    x = np.array(list(FRACTIONS) + [1.0])
    y = torch.cat([curves, curves[:, -1:]], dim=1).numpy()
    return np.trapezoid(y, x, axis=1)


def auc(curves: torch.Tensor) -> float:
    """Mean area under (B, F) curves: the mean of `aucs`."""
    return float(aucs(curves).mean())


def pointing_grid(grid_map: np.ndarray, mask: np.ndarray) -> bool:
    """The peak cell's footprint in the image overlaps the object mask (H, W)."""
    g = grid_map.shape[0]
    r, c = np.unravel_index(int(np.argmax(grid_map)), grid_map.shape)
    H, W = mask.shape
    cell = mask[r * H // g:(r + 1) * H // g, c * W // g:(c + 1) * W // g]
    return bool(cell.any())


def pointing_pixel(grid_map: np.ndarray, mask: np.ndarray, tolerance_at_224: float = 15.0) -> bool:
    """The peak of the bilinearly upsampled map lies within the tolerance of the object."""
    H, W = mask.shape
    up = upsample(grid_map, (W, H))
    y, x = np.unravel_index(int(np.argmax(up)), up.shape)
    tol = tolerance_at_224 * max(H, W) / 224
    return bool(distance_transform_edt(~mask)[y, x] <= tol)


def mass_share(grid_map: np.ndarray, own: np.ndarray, other: np.ndarray) -> float:
    """Share of the (non-negative, upsampled) map's mass on its own object among the two objects."""
    H, W = own.shape
    up = np.clip(upsample(grid_map, (W, H)), 0, None)
    a, b = float(up[own].sum()), float(up[other].sum())
    return a / (a + b) if a + b > 0 else 0.5


def top_region_iou(grid_map: np.ndarray, mask: np.ndarray) -> float:
    """IoU of the map's above-mean area (upsampled) with the object: a quick region-quality proxy."""
    H, W = mask.shape
    up = upsample(grid_map, (W, H))
    pred = up > up.mean()
    union = (pred | mask).sum()
    return float((pred & mask).sum() / union) if union else 0.0
