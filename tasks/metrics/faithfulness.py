"""How faithful and how well-placed relevancy maps are.

Perturbation (Chefer et al.'s ViT evaluation): remove patches in order of relevancy and re-classify.
  positive: most relevant first; the accuracy curve should fall fast (lower AUC is better);
  negative: least relevant first; accuracy should hold (higher AUC is better).
Deletion / insertion (Petsiuk et al. 2018): the target class probability as the most relevant patches are
  removed from the image (lower AUC is better) / added to an empty image (higher AUC is better).
"Removed" means set to 0 in normalised pixel space, i.e. the dataset mean colour; insertion at fraction f
shows exactly the f·N cells that deletion at f removes (f = 0: nothing shown). AUCs are trapezoids over
the removed fraction in [0, 1], averaged over images.
Ground truth (toy world): pointing game at grid level (the peak cell touches the object) and pixel level
(the peak of the upsampled map within a tolerance of the object: 15 px at 224 px, scaled), and class
discrimination on two-object images (share of a class map's mass on its own object vs the other).
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import distance_transform_edt

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
    only the cells after the k most relevant. One relevance order (descending) defines both, so positive at f
    removes exactly what insertion at f shows, and negative at f (its f·N least relevant cells removed) is
    ("top", N - f·N), the image insertion shows at 1 - f: equal images are classified once."""
    N = maps.shape[-1] * maps.shape[-2]
    ns = [round(f * N) for f in FRACTIONS]
    return {"positive": [("bottom", n) for n in ns], "negative": [("top", N - n) for n in ns],
            "insertion": [("top", n) for n in ns]}


def perturbed_passes(g: int) -> int:
    """Passes over the images `perturbation_curves` makes for one map of a g×g grid (the unperturbed images are
    classified once for every map, the blank image once per call)."""
    N = g * g
    keys = {k for keys in perturbation_plan(torch.zeros(g, g)).values() for k in keys}
    return len(keys - {("top", N), ("bottom", 0), ("top", 0), ("bottom", N)})


@torch.no_grad()
def _probs(lm: LoadedModel, pixels: torch.Tensor, classifier: torch.Tensor) -> torch.Tensor:
    img = encode_pixels(lm, pixels)  # (B, D), unit
    return (lm.model.logit_scale.exp() * img @ classifier.T.to(img.device)).softmax(-1).cpu()  # (B, C)


def perturbation_curves(lm: LoadedModel, pixels: torch.Tensor, maps: torch.Tensor, classifier: torch.Tensor,
                        target: torch.Tensor, label: torch.Tensor, clean: torch.Tensor | None = None,
                        tick: Callable[[int], None] = lambda n: None) -> dict[str, torch.Tensor]:
    """Curves (B, F) over FRACTIONS: accuracy under positive / negative perturbation, target probability
    under deletion and insertion, and "clean": the unperturbed images' probabilities (B, C). `target`, `label`:
    (B,) class indices; classifier (C, D). `clean`: those probabilities when the caller has them already (they
    do not depend on the map: pass them back for the next variant). `tick(n)` follows each pass over n images."""
    B, size, g = len(target), pixels.shape[-1], maps.shape[-1]
    N = g * g
    order = maps.flatten(1).argsort(dim=1, descending=True)  # (B, N) most relevant first
    plan = perturbation_plan(maps)
    probs: dict[tuple[str, int], torch.Tensor] = {}
    for key in dict.fromkeys(k for keys in plan.values() for k in keys):
        kind, n = key
        if (kind, n) in (("top", N), ("bottom", 0)):  # everything shown
            probs[key] = _probs(lm, pixels, classifier) if clean is None else clean
            clean = probs[key]
        elif (kind, n) in (("top", 0), ("bottom", N)):  # nothing shown: the same blank image for every row
            probs[key] = _probs(lm, torch.zeros_like(pixels[:1]), classifier).expand(B, -1)
        else:
            cells = slice(None, n) if kind == "top" else slice(n, None)
            probs[key] = _probs(lm, pixels * _kept(order, cells, g, size), classifier)
            tick(B)
    rows = torch.arange(B)
    out = {"positive": [(probs[k].argmax(-1) == label).float() for k in plan["positive"]],
           "negative": [(probs[k].argmax(-1) == label).float() for k in plan["negative"]],
           "deletion": [probs[k][rows, target] for k in plan["positive"]],
           "insertion": [probs[k][rows, target] for k in plan["insertion"]]}
    return {k: torch.stack(v, dim=1) for k, v in out.items()} | {"clean": clean}


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
