"""`gradcam`: Grad-CAM (Selvaraju et al. 2017) on the last stage of a convolutional tower, as pytorch-grad-cam's
`GradCAM` computes it: channel weights = the spatial mean of d target / d A, map = relu(sum_c w_c A_c), with
target = the image–text cosine and A the output of ModifiedResNet's `layer4` or the timm trunk's last stage.
Kept at the feature grid, unscaled (pytorch-grad-cam min-max scales and resizes it for display)."""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn as nn
import torch.nn.functional as F

from mapcap.tasks.models import LoadedModel, autocast
from mapcap.tasks.relevancy.methods import register
from mapcap.tasks.relevancy.towers import tower_of


def target_layer(visual: nn.Module) -> nn.Module:
    """The last convolutional stage: its output is the feature grid the map is read at."""
    return visual.layer4 if tower_of(visual).kind == "resnet" else visual.trunk.stages[-1]


@contextmanager
def capturing(module: nn.Module) -> Iterator[list[torch.Tensor]]:
    """Within the block, the module's outputs are appended to the yielded list; nothing is kept after it."""
    out: list[torch.Tensor] = []
    handle = module.register_forward_hook(lambda _m, _i, o: out.append(o))
    try:
        yield out
    finally:
        handle.remove()
        out.clear()


@register("gradcam", kinds=("resnet", "convnext"))
def gradcam(lm: LoadedModel, pixels: torch.Tensor, text_emb: torch.Tensor, start_layer: int) -> torch.Tensor:
    visual = lm.model.visual
    tower = tower_of(visual)
    with capturing(target_layer(visual)) as acts, torch.enable_grad(), autocast(lm):
        img = F.normalize(lm.model.encode_image(pixels).float(), dim=-1)  # (B, D)
        target = (img * F.normalize(text_emb.float(), dim=-1)).sum(-1)  # (B,) cosine
        A = acts[-1]  # (B, C, h, w)
        (G,) = torch.autograd.grad(target.sum(), [A])
    weights = G.float().mean(dim=(2, 3), keepdim=True)  # (B, C, 1, 1)
    cam = (weights * A.detach().float()).sum(dim=1).clamp(min=0)  # (B, h, w)
    if cam.shape[-2:] != tower.grid:
        cam = F.adaptive_avg_pool2d(cam[:, None], tower.grid)[:, 0]
    return cam
