"""`grad_eclip`: Grad-ECLIP (Zhao et al., ICML 2024) as the authors' `grad_eclip` on `clip_encode_dense` computes it.

The last block's attention is recomputed as the authors' dense encoder does (one head over the full width:
their `attention_layer(q, k, v, 1)`); the target is the cosine of the class token's embedding with the text; the
map over patches p is relu(sum_d dc/dO[cls, d] · v[p, d] · s[p]) where O is that attention's output before its
projection and s the min-max scaled cosine of the out-projected class query with each out-projected patch key
(`withksim=True`). Earlier blocks run as they are, without a graph.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn as nn
import torch.nn.functional as F

from mapcap.tasks.models import LoadedModel, autocast
from mapcap.tasks.relevancy.attention import _without_grad
from mapcap.tasks.relevancy.methods import register
from mapcap.tasks.relevancy.towers import tower_of, vit_blocks


@contextmanager
def dense_last_block(blocks: list[nn.Module]) -> Iterator[dict[str, torch.Tensor]]:
    """Within the block, the last block runs the authors' single-head attention and keeps q, k, v and its
    output (each (B, N, W)); the blocks before it run under no_grad."""
    last, saved = blocks[-1], {}

    def forward(q_x: torch.Tensor, k_x=None, v_x=None, attn_mask=None) -> torch.Tensor:
        mha = last.attn
        q, k, v = F.linear(last.ln_1(q_x), mha.in_proj_weight, mha.in_proj_bias).chunk(3, dim=-1)  # (B, N, W)
        attn = ((q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)).softmax(dim=-1)  # (B, N, N) one head
        out = attn @ v  # (B, N, W)
        saved.update(q=q, k=k, v=v, out=out)
        x = q_x + last.ls_1(mha.out_proj(out))
        return x + last.ls_2(last.mlp(last.ln_2(x)))

    try:
        for b in blocks[:-1]:
            b.forward = _without_grad(b.forward)
        last.forward = forward
        yield saved
    finally:
        for b in blocks:
            b.__dict__.pop("forward", None)
        saved.clear()


@register("grad_eclip", kinds=("vit",))
def grad_eclip(lm: LoadedModel, pixels: torch.Tensor, text_emb: torch.Tensor, start_layer: int) -> torch.Tensor:
    visual = lm.model.visual
    tower = tower_of(visual)
    blocks = vit_blocks(visual)
    with dense_last_block(blocks) as saved, torch.enable_grad(), autocast(lm):
        img = F.normalize(lm.model.encode_image(pixels).float(), dim=-1)  # (B, D)
        c = (img * F.normalize(text_emb.float(), dim=-1)).sum(-1)  # (B,) cosine with each image's own text
        (grad,) = torch.autograd.grad(c.sum(), [saved["out"]])  # (B, N, W)
        q, k, v = (saved[n].detach().float() for n in "qkv")
    with torch.no_grad():
        proj = blocks[-1].attn.out_proj
        q_cls = F.normalize(F.linear(q[:, :1], proj.weight.float(), proj.bias.float()), dim=-1)  # (B, 1, W)
        k_patch = F.normalize(F.linear(k[:, 1:], proj.weight.float(), proj.bias.float()), dim=-1)  # (B, P, W)
        cos = (q_cls * k_patch).sum(-1)  # (B, P)
        lo, hi = cos.min(1, keepdim=True).values, cos.max(1, keepdim=True).values
        cos = (cos - lo) / (hi - lo)  # (B, P) min-max over the patches, as the authors
        emap = F.relu((grad[:, :1].float() * v[:, 1:] * cos[..., None]).sum(-1))  # (B, P)
    return emap.reshape(-1, *tower.grid)
