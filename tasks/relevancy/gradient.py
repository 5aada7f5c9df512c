"""`gradient`: plain input-gradient saliency, |d target / d pixels| summed over channels, pooled per map cell
(a patch of a ViT, a feature cell of a convolutional tower): the baseline every tower gets."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from mapcap.tasks.models import LoadedModel, autocast
from mapcap.tasks.relevancy.methods import grid_size, image_text_logit, register


@register("gradient")
def gradient(lm: LoadedModel, pixels: torch.Tensor, text_emb: torch.Tensor, start_layer: int) -> torch.Tensor:
    x = pixels.detach().clone().requires_grad_(True)  # (B, 3, H, W)
    with torch.enable_grad(), autocast(lm):
        target = image_text_logit(lm, x, text_emb)
        (grad,) = torch.autograd.grad(target.sum(), x)
    g = grid_size(lm)
    sal = grad.float().abs().sum(1, keepdim=True)  # (B, 1, H, W)
    return F.adaptive_avg_pool2d(sal, g).squeeze(1)  # (B, g, g)
