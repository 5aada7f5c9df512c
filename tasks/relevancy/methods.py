"""Relevancy maps: where in the image CLIP found evidence for a text. The registry and the batched driver.

A method is one file of this package (listed in builtin.py) or of a plugin: one function (model, pixels (B, 3, H, W), text embeddings (B, D), start
layer) -> (B, g, g) maps, registered by name with the tower kinds it explains (towers.py) and, for methods that
read a range of blocks, its default first block:
- `chefer` (chefer.py): Chefer, Gur & Wolf 2021 as its authors apply it to CLIP, on ViTs of both kinds;
- `legrad` (legrad.py): Bousselham et al. 2024, the authors' `compute_legrad_clip`, on ViTs of both kinds;
- `grad_eclip` (grad_eclip.py): Zhao et al. 2024, the authors' `grad_eclip` + `clip_encode_dense`, open_clip ViT;
- `gradcam` (gradcam.py): Selvaraju et al. 2017 on the last stage of ResNet and ConvNeXt towers;
- `gradient` (gradient.py): input-gradient saliency pooled per cell, every tower;
- `random` (random_map.py): a uniform random map, the baseline every method must beat.
Every image's target depends only on its own row, so one backward pass of the summed targets gives every
map of a batch.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from mapcap.tasks.models import LoadedModel, in_batches, model_lock
from mapcap.tasks.plugins import preset_for_model
from mapcap.tasks.registry import Registry
from mapcap.tasks.relevancy.towers import KINDS, tower_of

MethodFn = Callable[[LoadedModel, torch.Tensor, torch.Tensor, int | None], torch.Tensor]  # start: None without one


@dataclass(frozen=True)
class Method:
    fn: MethodFn
    kinds: tuple[str, ...]  # tower kinds it explains
    start: int | None  # default first block for methods that read a range of blocks; None: no start layer


METHODS: Registry[Method] = Registry("relevancy method", "mapcap.tasks.relevancy.builtin")
# the default `relevancy.methods` per tower kind: the primary (first) method is the one regions, captions and
# summaries use; `evaluate` scores every method the tower supports anyway
DEFAULTS: dict[str, tuple[str, ...]] = {"vit": ("chefer",), "timm_vit": ("legrad",), "resnet": ("gradcam",),
                                        "convnext": ("gradcam",)}


def register(name: str, kinds: tuple[str, ...] = KINDS, start: int | None = None) -> Callable[[MethodFn], MethodFn]:
    def deco(fn: MethodFn) -> MethodFn:
        METHODS.register(name, Method(fn, tuple(kinds), start))
        return fn
    return deco


def get_method(name: str) -> Method:
    return METHODS.get(name)


def supported(kind: str) -> list[str]:
    """The registered methods that explain a tower of this kind: the built-in ones in their order, then others."""
    return [n for n, m in METHODS.items() if kind in m.kinds]


def check_supported(name: str, kind: str, model_name: str) -> None:
    """A clear planning error for a method the model's tower cannot do."""
    if kind not in get_method(name).kinds:
        raise ValueError(f"relevancy method {name!r} does not explain {model_name}'s {kind} image tower (it "
                         f"supports {', '.join(get_method(name).kinds)} towers); methods for a {kind} tower: "
                         f"{', '.join(supported(kind))}")


def default_start_layer(model_name: str, method: str = "chefer") -> int:
    """A method's first block: chefer's is -1 (last block only, the authors' current CLIP default) unless the
    model's measured default differs; others' is the one they register (legrad: -2, the authors' default)."""
    if method == "chefer":
        p = preset_for_model(model_name)
        if p is not None and p.start_layer is not None:
            return p.start_layer
    start = get_method(method).start
    return -1 if start is None else start


def resolve_start(method: str, model_name: str, start: int | None = None, depth: int | None = None) -> int | None:
    """The one place a map's first block is decided: None for a method without one; the user's `start`,
    checked against the tower's `depth` when known; else the method's default, within the tower's blocks."""
    if get_method(method).start is None:
        return None
    if start is None:
        default = default_start_layer(model_name, method)
        return default if depth is None else max(default, -depth)  # (a tower with fewer blocks: all of them)
    if depth is not None and not -depth <= start < depth:
        raise ValueError(f"relevancy start layer {start} is out of range for {model_name}, whose vision tower has "
                         f"{depth} blocks: use 0..{depth - 1} (0 = all blocks) or -{depth}..-1 (-1 = the last "
                         f"block)")
    return start


def grid_size(lm: LoadedModel) -> int:
    """The map's side: the ViT patch grid, or the last stage's feature grid of a convolutional tower."""
    return tower_of(lm.model.visual).grid[0]


def image_text_logit(lm: LoadedModel, pixels: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
    """(B,) target: logit_scale · cos(image_b, text_b), each image against its own text row (B, D)."""
    img = F.normalize(lm.model.encode_image(pixels).float(), dim=-1)  # (B, D)
    return lm.model.logit_scale.exp().float() * (img * text_emb.float()).sum(-1)


def min_max(maps: torch.Tensor) -> torch.Tensor:
    """(B, ...) maps scaled to [0, 1] each (a constant map becomes 0)."""
    flat = maps.flatten(1)
    lo, hi = flat.min(1, keepdim=True).values, flat.max(1, keepdim=True).values
    return ((flat - lo) / (hi - lo).clamp(min=1e-12)).reshape(maps.shape)


def relevancy_maps(lm: LoadedModel, method: str, pixels: torch.Tensor, text_emb: torch.Tensor,
                   start_layer: int | None = None, batch_size: int = 32) -> torch.Tensor:
    """(B, g, g) float32 maps on CPU, computed in batches; a CUDA out-of-memory halves the batch and retries."""
    m = get_method(method)
    check_supported(method, tower_of(lm.model.visual).kind, lm.spec.name)
    start = resolve_start(method, lm.spec.name, start_layer)
    dev = lm.spec.device

    def batch(i: int, j: int) -> torch.Tensor:
        with model_lock(lm.model):
            return m.fn(lm, pixels[i:j].to(dev), text_emb[i:j].to(dev), start).detach().float().cpu()

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
