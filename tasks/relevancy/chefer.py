"""`chefer`: Chefer, Gur & Wolf 2021 as applied to CLIP by its authors. Target = image-text logit; for each
vision block from `start_layer` on, R <- R + mean_heads(clamp(dA ⊙ A, 0)) @ R, R0 = I; the map is the explained
token's row over the patch columns. The explained token is the class token (open_clip ViT, EVA02), or for a
tower pooled by attention (SigLIP's "map" head, CoCa's attentional pooler) its (first) learned query, whose row
is Chefer's rule for attention from outside the sequence: mean_heads(clamp(dA_pool ⊙ A_pool, 0)) @ R; a
token-average tower reads R's mean row.
Also the same rule over the text tower (per-token relevancy, read at the EOT row)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from mapcap.tasks.models import LoadedModel, autocast, model_lock
from mapcap.tasks.relevancy.attention import attention_blocks, recording_attention
from mapcap.tasks.relevancy.methods import image_text_logit, register
from mapcap.tasks.relevancy.recording import recording
from mapcap.tasks.relevancy.towers import Tower, tower_of, vit_blocks


def rollout(attns: list[torch.Tensor], grads: tuple[torch.Tensor, ...] | list[torch.Tensor]) -> torch.Tensor:
    """(B, N, N) relevancy R over the recorded blocks: R0 = I, R <- R + mean_heads(clamp(dA ⊙ A, 0)) @ R."""
    B, _, N, _ = attns[0].shape
    R = torch.eye(N, device=attns[0].device).expand(B, N, N)  # (B, N, N)
    for A, G in zip(attns, grads):
        cam = (G.float() * A.detach().float()).clamp(min=0).mean(dim=1)  # (B, N, N), mean over heads
        R = R + torch.bmm(cam, R)
    return R


def explained_row(tower: Tower, R: torch.Tensor, pooled: list[torch.Tensor], pooled_grads) -> torch.Tensor:
    """(B, g, g) relevancy of the token the embedding is read from, over the patch tokens."""
    if tower.pool == "map":
        cam = (pooled_grads[-1].float() * pooled[-1].detach().float()).clamp(min=0).mean(dim=1)  # (B, L, N)
        row = torch.bmm(cam[:, :1], R)[:, 0]  # (B, N) the first query's: the one the embedding is read from
    elif tower.pool == "avg":
        row = R.mean(dim=1)  # (B, N)
    else:
        row = R[:, 0]  # (B, N) the class token's row
    return row[:, tower.prefix:].reshape(-1, *tower.grid)


@register("chefer", kinds=("vit", "timm_vit"), start=-1)
def chefer(lm: LoadedModel, pixels: torch.Tensor, text_emb: torch.Tensor, start_layer: int) -> torch.Tensor:
    visual = lm.model.visual
    tower = tower_of(visual)
    start = start_layer % len(vit_blocks(visual))
    with recording(visual, start) as rec, torch.enable_grad(), autocast(lm):
        target = image_text_logit(lm, pixels, text_emb)  # (B,)
        attns, pooled = list(rec.attns), list(rec.pooled)  # blocks[start:] (B, H, N, N); the pool's (B, H, 1, N)
        grads = torch.autograd.grad(target.sum(), attns + pooled[-1:])  # one backward for the whole batch
    return explained_row(tower, rollout(attns, grads[:len(attns)]), pooled, grads[len(attns):])


def text_token_relevancy(lm: LoadedModel, image_emb: torch.Tensor, tokens: torch.Tensor,
                         start_layer: int = 0) -> torch.Tensor:
    """(B, L) relevancy of each text token for its image (B, D), read at the EOT row, Chefer's rule."""
    tower = lm.model if hasattr(lm.model, "transformer") else getattr(lm.model, "text")
    blocks = attention_blocks(tower, "text")
    start = start_layer % len(blocks)
    with model_lock(lm.model), recording_attention(blocks, start) as attns, torch.enable_grad(), autocast(lm):
        txt = F.normalize(lm.model.encode_text(tokens).float(), dim=-1)  # (B, D)
        target = lm.model.logit_scale.exp().float() * (txt * F.normalize(image_emb.float(), dim=-1)).sum(-1)
        attns = list(attns)
        grads = torch.autograd.grad(target.sum(), attns)
    R = rollout(attns, grads)  # (B, L, L)
    B = R.shape[0]
    eot = tokens.argmax(dim=-1)  # open_clip pools text at the EOT token (the highest id)
    return R[torch.arange(B), eot].detach().cpu()  # (B, L)
