"""Model work of the sampled faithfulness evaluation, to size its default sample where forwards are dear (CPU).

The evaluation classifies each sampled image a few hundred times per map method: Chefer's positive and negative
perturbation (17 images), RISE's deletion and insertion (2 per step: one step per map cell on a GPU, CPU_STEPS
elsewhere) and the maps' forward and backward (tasks/metrics/faithfulness.py, causal.py). Little on a GPU, but on
2 CPU cores a 64-image ViT-B-16 run was still in the (then 84-forward) evaluation after 20 minutes, its
classification, maps, regions and captions having taken 41 s. So where the run's device is not a GPU and the user
left `evaluate.images` unset, the sample is sized to a fixed amount of model work, counted in FLOPs (deterministic
for a model, unlike a timing), at least 4 images; the toy CLIP keeps its 64.
"""
from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from mapcap.tasks.metrics.faithfulness import perturbed_passes
from mapcap.tasks.cache import load_once
from mapcap.tasks.models import LoadedModel, model_lock
from mapcap.tasks.relevancy.methods import grid_size

EVAL_IMAGES = 64  # the evaluation's sample where forwards are cheap (a GPU) or the model small
CPU_EVAL_FLOP = 15e12  # model work of the default sample elsewhere (ViT-B-16's 8 images: 99 s on 2 cores)
CPU_STEPS = 16  # RISE deletion/insertion steps off a GPU when the user sets none (a GPU: one per map cell)
MAP_PASSES = 3  # a map's forward and backward, in forwards (Chefer over all blocks; less for the others)


def image_flops(lm: LoadedModel) -> float:
    """FLOPs of one image through the image tower, as torch counts them (once per model and process: one forward,
    batch 1)."""
    def count() -> float:
        size = lm.model.visual.image_size
        size = size if isinstance(size, (tuple, list)) else (size, size)
        pixels = torch.zeros(1, 3, *size, device=lm.spec.device)
        with model_lock(lm.model):
            # parameters frozen while counting: the counter's module tracker fails on a parameter's view made under
            # no_grad (timm's attention pool expands its latent query)
            grads = [(p, p.requires_grad) for p in lm.model.visual.parameters()]
            try:
                for p, _ in grads:
                    p.requires_grad_(False)
                with FlopCounterMode(display=False) as counter, torch.no_grad():
                    lm.model.encode_image(pixels)  # eager: counting never compiles the tower
            finally:
                for p, flag in grads:
                    p.requires_grad_(flag)
        return float(counter.get_total_flops())
    return load_once(("image-flops", lm.spec), count)


def eval_forwards(lm: LoadedModel, n_variants: int, steps: int | None = None) -> int:
    """Image forwards the evaluation makes per sampled image (`steps`: RISE's deletion/insertion steps)."""
    return n_variants * (perturbed_passes(grid_size(lm), steps) + MAP_PASSES)


def default_eval_images(lm: LoadedModel, n_variants: int, steps: int | None = None) -> tuple[int, str | None]:
    """The evaluation's sample size when the user set none, and a note saying why when it is below EVAL_IMAGES."""
    if lm.spec.device.startswith("cuda"):
        return EVAL_IMAGES, None
    flops, forwards = image_flops(lm), eval_forwards(lm, n_variants, steps)
    n = max(4, min(EVAL_IMAGES, int(CPU_EVAL_FLOP // (flops * forwards))))
    if n == EVAL_IMAGES:
        return n, None
    return n, (f"the faithfulness evaluation scores about {n} images, not {EVAL_IMAGES}: on {lm.spec.device} each "
               f"costs {forwards} forwards of {lm.spec.name} ({flops / 1e9:.1f} GFLOP each); set evaluate.images "
               f"(--evaluate.images N) to score more, --evaluate.steps N for fewer RISE steps, or leave the stage out "
               f"(--stages)")
