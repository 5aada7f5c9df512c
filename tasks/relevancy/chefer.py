"""`chefer`: Chefer, Gur & Wolf 2021 as applied to CLIP by its authors. Target = image-text logit; for each
vision block from `start_layer` on, R <- R + mean_heads(clamp(dA ⊙ A, 0)) @ R, R0 = I; map = R[CLS, 1:].
Also the same rule over the text tower (per-token relevancy, read at the EOT row)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from mapcap.tasks.models import LoadedModel, autocast, model_lock
from mapcap.tasks.relevancy.attention import attention_blocks, recording_attention
from mapcap.tasks.relevancy.methods import grid_size, image_text_logit, register


def rollout(attns: list[torch.Tensor], grads: tuple[torch.Tensor, ...] | list[torch.Tensor]) -> torch.Tensor:
    """(B, N, N) relevancy R over the recorded blocks: R0 = I, R <- R + mean_heads(clamp(dA ⊙ A, 0)) @ R."""
    B, _, N, _ = attns[0].shape
    R = torch.eye(N, device=attns[0].device).expand(B, N, N)  # (B, N, N)
    for A, G in zip(attns, grads):
        cam = (G.float() * A.detach().float()).clamp(min=0).mean(dim=1)  # (B, N, N), mean over heads
        R = R + torch.bmm(cam, R)
    return R


@register("chefer")
def chefer(lm: LoadedModel, pixels: torch.Tensor, text_emb: torch.Tensor, start_layer: int) -> torch.Tensor:
    blocks = attention_blocks(lm.model.visual, "image")
    start = start_layer % len(blocks)
    with recording_attention(blocks, start) as attns, torch.enable_grad(), autocast(lm):
        target = image_text_logit(lm, pixels, text_emb)  # (B,)
        attns = list(attns)  # blocks[start:] (a copy: the store is emptied when the context exits)
        grads = torch.autograd.grad(target.sum(), attns)  # one backward for the whole batch
    g = grid_size(lm)
    return rollout(attns, grads)[:, 0, 1:].reshape(-1, g, g)  # CLS row, patch columns


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
