"""Model work of the sampled faithfulness evaluation, to size its default sample where forwards are dear (CPU).

The evaluation classifies each sampled image a few hundred times per map method: Chefer's positive and negative
perturbation (17 images), RISE's deletion and insertion (2 per step: one step per map cell on a GPU, CPU_STEPS
elsewhere) and the maps' forward and backward (tasks/metrics/faithfulness.py, causal.py). Little on a GPU, but on
2 CPU cores a 64-image ViT-B-16 run was still in the (then 84-forward) evaluation after 20 minutes, its
classification, maps, regions and captions having taken 41 s. So where the run's device is not a GPU and the user
left `evaluate.images` unset, the sample is sized so that the evaluation costs no more than the rest of the run
(or a small fixed amount of model work, where that is more), counted in FLOPs (deterministic for a model, unlike a
timing); when even 4 images would cost more, the stage is left out with that reason. The toy CLIP keeps its 64.
"""
from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from mapcap.tasks.metrics.faithfulness import perturbed_passes
from mapcap.tasks.cache import load_once
from mapcap.tasks.models import LoadedModel, model_lock
from mapcap.tasks.relevancy.methods import grid_size

EVAL_IMAGES = 64  # the evaluation's sample where forwards are cheap (a GPU) or the model small
CPU_EVAL_FLOP = 3e12  # model work the evaluation may always take off a GPU (the toy CLIP's 64 images: 1.4e12)
CPU_STEPS = 16  # RISE deletion/insertion steps off a GPU when the user sets none (a GPU: one per map cell)
MAP_PASSES = 3  # a map's forward and backward, in forwards (Chefer over all blocks; less for the others)
CAPTION_CROPS = 4  # crops a run's captions embed per image (top regions of both targets, the whole image)
MIN_EVAL_IMAGES = 4  # fewer scored images say nothing: the stage is left out instead (with the reason)


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


def rest_forwards(n_variants: int) -> int:
    """Image forwards the rest of a run makes per image: its classification, its maps (both targets, each
    variant) and its captions' crops (the top regions of both targets and the whole image)."""
    return 1 + 2 * n_variants * MAP_PASSES + CAPTION_CROPS


def default_eval_images(lm: LoadedModel, n_variants: int, steps: int | None = None, n_images: int = 0,
                        n_maps: int = 1) -> tuple[int, str | None]:
    """The evaluation's sample size when the user set none, and a note saying why when it is below EVAL_IMAGES.
    Off a GPU the evaluation may cost what the rest of the run costs (`n_images` images with `n_maps` map
    variants each), or a small fixed amount where that is more; 0 when even MIN_EVAL_IMAGES would cost more."""
    if lm.spec.device.startswith("cuda"):
        return EVAL_IMAGES, None
    flops, forwards = image_flops(lm), eval_forwards(lm, n_variants, steps)
    rest = n_images * rest_forwards(n_maps) * flops
    budget = max(CPU_EVAL_FLOP, rest)
    n = min(EVAL_IMAGES, int(budget // (flops * forwards)))
    if n == EVAL_IMAGES:
        return n, None
    cost = (f"on {lm.spec.device} each image costs {forwards} forwards of {lm.spec.name} ({flops / 1e9:.1f} GFLOP "
            f"each), the rest of the run {rest_forwards(n_maps)} per image")
    if n < MIN_EVAL_IMAGES:
        return 0, (f"scoring even {MIN_EVAL_IMAGES} images would cost "
                   f"{MIN_EVAL_IMAGES * forwards * flops / max(rest, 1):.0f}× the rest of this run ({cost}); "
                   f"--evaluate.images {MIN_EVAL_IMAGES} scores them anyway, --evaluate.steps 4 makes each cheaper")
    return n, (f"the faithfulness evaluation scores about {n} images, not {EVAL_IMAGES}, so that it costs no more "
               f"than the rest of the run ({cost}); set --evaluate.images N to score more, --evaluate.steps N for "
               f"fewer RISE steps, or leave the stage out (--stages)")
