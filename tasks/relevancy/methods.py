"""Relevancy maps: where in the image CLIP found evidence for a text. The registry and the batched driver.

Methods register by name and implement one call: (model, pixels, text embeddings) -> (B, g, g) maps; each
built-in method is one file of this package (chefer.py, gradient.py, random_map.py).
- `chefer`: Chefer, Gur & Wolf 2021 as applied to CLIP by its authors: target = image–text logit; for each
  vision block from `start_layer` on, R <- R + mean_heads(clamp(dA ⊙ A, 0)) @ R, R0 = I; map = R[CLS, 1:].
- `gradient`: plain input-gradient saliency, |d target / d pixels| summed over channels, pooled per patch.
- `random`: a uniform random map, the baseline every method must beat.
Every image's target depends only on its own row, so one backward pass of the summed targets gives every
map of a batch.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from mapcap.tasks.models import LoadedModel, in_batches, model_lock
from mapcap.tasks.plugins import preset_for_model

MethodFn = Callable[[LoadedModel, torch.Tensor, torch.Tensor, int], torch.Tensor]
METHODS: dict[str, MethodFn] = {}


def register(name: str) -> Callable[[MethodFn], MethodFn]:
    def deco(fn: MethodFn) -> MethodFn:
        METHODS[name] = fn
        return fn
    return deco


def get_method(name: str) -> MethodFn:
    if name not in METHODS:
        raise ValueError(f"unknown relevancy method {name!r}; registered methods are {sorted(METHODS)}")
    return METHODS[name]


def default_start_layer(model_name: str) -> int:
    """-1 (last block only, the authors' current CLIP default) unless the model's measured default differs."""
    p = preset_for_model(model_name)
    return p.start_layer if p is not None and p.start_layer is not None else -1


def grid_size(lm: LoadedModel) -> int:
    """The ViT patch grid; for convolutional towers (gradient baseline only), the stride-32 feature grid."""
    visual = lm.model.visual
    if hasattr(visual, "grid_size"):
        return int(visual.grid_size[0])
    size = visual.image_size
    return int((size[0] if isinstance(size, (tuple, list)) else size) // 32)


def image_text_logit(lm: LoadedModel, pixels: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
    """(B,) target: logit_scale · cos(image_b, text_b), each image against its own text row (B, D)."""
    img = F.normalize(lm.model.encode_image(pixels).float(), dim=-1)  # (B, D)
    return lm.model.logit_scale.exp().float() * (img * text_emb.float()).sum(-1)


def relevancy_maps(lm: LoadedModel, method: str, pixels: torch.Tensor, text_emb: torch.Tensor,
                   start_layer: int | None = None, batch_size: int = 32) -> torch.Tensor:
    """(B, g, g) float32 maps on CPU, computed in batches; a CUDA out-of-memory halves the batch and retries."""
    fn = get_method(method)
    start = default_start_layer(lm.spec.name) if start_layer is None else start_layer
    dev = lm.spec.device

    def batch(i: int, j: int) -> torch.Tensor:
        with model_lock(lm.model):
            return fn(lm, pixels[i:j].to(dev), text_emb[i:j].to(dev), start).detach().float().cpu()

    return in_batches(pixels.shape[0], batch_size, batch)


@torch.no_grad()
def map_stats(maps: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per map (B, g, g): peak cell index, entropy (nats) of the map as a distribution, top-10% cells' mass."""
    flat = maps.flatten(1).clamp(min=0)  # (B, g*g)
    p = flat / flat.sum(1, keepdim=True).clamp(min=1e-12)
    entropy = -(p * p.clamp(min=1e-12).log()).sum(1)
    k = max(1, math.ceil(0.1 * flat.shape[1]))
    top = p.topk(k, dim=1).values.sum(1)
    return {"peak": flat.argmax(1), "entropy": entropy, "top10_mass": top}


# the built-in methods register themselves on import (one file each)
from mapcap.tasks.relevancy import chefer, gradient, random_map  # noqa: E402,F401
