"""`random`: a uniform random map seeded by the image itself, the baseline every method must beat."""
from __future__ import annotations

import torch

from mapcap.tasks.models import LoadedModel
from mapcap.tasks.relevancy.methods import grid_size, register


@register("random")
def random_map(lm: LoadedModel, pixels: torch.Tensor, text_emb: torch.Tensor, start_layer: int) -> torch.Tensor:
    g = grid_size(lm)
    maps = []
    for img in pixels.detach().float().cpu():  # seeded by the image itself: reproducible, batch-independent
        gen = torch.Generator().manual_seed(int(img.abs().sum().item() * 1000) % (2**31))
        maps.append(torch.rand(g, g, generator=gen))
    return torch.stack(maps).to(pixels.device)
