"""`legrad`: LeGrad (Bousselham et al. 2024) as the authors' `LeWrapper.compute_legrad_clip` computes it.

For each block l from `start_layer` on (the authors' default -2: the last two), the block's output tokens become
an image embedding of their own, its cosine with the text is the target, and the map is
mean_heads, mean_rows(clamp(d target_l / dA_l, 0)) over the patch columns, summed over l and min-max scaled.
The per-layer embedding: open_clip ViT as the authors, ln_post(mean over tokens) @ proj; a timm ViT through its
own final norm and head (class token, or the attention pool, whose (B, H, 1, N) probabilities are then the
explained attention, as in the authors' SigLIP path); a CoCa as their `compute_legrad_coca`: the attentional
pooler's first query, projected, and its attention's gradient. Each target has its own backward (one per layer), every
image of the batch at once.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from mapcap.tasks.models import LoadedModel, autocast
from mapcap.tasks.relevancy.methods import min_max, register
from mapcap.tasks.relevancy.recording import recording
from mapcap.tasks.relevancy.towers import Tower, tower_of, vit_blocks


def layer_embedding(visual, tower: Tower, tokens: torch.Tensor) -> torch.Tensor:
    """(B, D) embedding of one block's output tokens (B, N, W)."""
    if tower.kind == "vit" and tower.pool == "map":  # CoCa, as the authors' compute_legrad_coca: the pool's
        x = visual.attn_pool(tokens)[:, 0]  # first query, (B, W); no ln_post in their code
        return x @ visual.proj if visual.proj is not None else x
    if tower.kind == "vit":
        x = visual.ln_post(tokens.mean(dim=1))  # (B, W) the authors average every token, class token included
        return x @ visual.proj if visual.proj is not None else x
    trunk = visual.trunk
    return visual.head(trunk.forward_head(trunk.norm(tokens)))


@register("legrad", kinds=("vit", "timm_vit"), start=-2)
def legrad(lm: LoadedModel, pixels: torch.Tensor, text_emb: torch.Tensor, start_layer: int) -> torch.Tensor:
    visual = lm.model.visual
    tower = tower_of(visual)
    start = start_layer % len(vit_blocks(visual))
    txt = F.normalize(text_emb.float(), dim=-1)  # (B, D)
    total = 0.0
    with recording(visual, start, outputs=True) as rec, torch.enable_grad(), autocast(lm):
        lm.model.encode_image(pixels)
        attns, outputs = list(rec.attns), list(rec.outputs)  # blocks[start:]: (B, H, N, N), (B, N, W)
        for A, tokens in zip(attns, outputs):
            emb = F.normalize(layer_embedding(visual, tower, tokens).float(), dim=-1)  # (B, D)
            target = (emb * txt).sum()  # each image against its own text
            explained = rec.pooled[-1] if tower.pool == "map" else A  # the pool's (B, H, 1, N) just recorded
            (grad,) = torch.autograd.grad(target, [explained], retain_graph=True)
            rows = grad.float().clamp(min=0).mean(dim=1)  # (B, L, N) mean over heads
            total = total + (rows[:, 0] if tower.pool == "map" else rows.mean(dim=1))  # (B, N) the query's / mean
    return min_max(total[:, tower.prefix:].reshape(-1, *tower.grid))
