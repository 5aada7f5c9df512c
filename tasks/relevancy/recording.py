"""Recording what relevancy methods read from a ViT tower of either kind, inside a context manager.

For open_clip's own ViT the blocks' nn.MultiheadAttention modules are swapped (attention.py). For timm ViTs
(EVA02, SigLIP) the attention modules of the recorded blocks run their own unfused path (`fused_attn` off only
while recording) and a forward hook on their `attn_drop` keeps the probabilities (B, H, N, N) in the graph; the
attention pool ("map" head), which has no such module, runs an equal explicit forward that keeps its (B, H, 1, N).
Blocks before `start` run under no_grad. On exit every hook, flag and forward is as it was.
"""
from __future__ import annotations

import types
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from mapcap.tasks.relevancy.attention import _without_grad, recording_attention
from mapcap.tasks.relevancy.towers import UnsupportedTower, tower_of, vit_blocks


@dataclass
class Recorded:
    attns: list[torch.Tensor] = field(default_factory=list)  # blocks[start:], each (B, H, N, N)
    pooled: list[torch.Tensor] = field(default_factory=list)  # attention pool's probabilities, each (B, H, L, N)
    outputs: list[torch.Tensor] = field(default_factory=list)  # blocks[start:] outputs, each (B, N, D)


def _pool_forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
    """timm's AttentionPoolLatent.forward on its unfused path, keeping the probabilities in `self._mapcap_store`."""
    B, N, C = x.shape  # (B, N, C)
    if self.pos_embed is not None:
        x = x + self.pos_embed.unsqueeze(0).to(x.dtype)
    q = self.q(self.latent.expand(B, -1, -1)).reshape(B, self.latent_len, self.num_heads, self.head_dim).transpose(1, 2)
    k, v = self.kv(x).reshape(B, N, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
    q, k = self.q_norm(q), self.k_norm(k)  # (B, H, L, hd), (B, H, N, hd)
    attn = (q * self.scale) @ k.transpose(-2, -1)  # (B, H, L, N)
    if attn_mask is not None:
        attn = attn + attn_mask
    attn = attn.softmax(dim=-1)
    self._mapcap_store.append(attn)
    x = (attn @ v).transpose(1, 2).reshape(B, self.latent_len, C)  # (B, L, C)
    x = self.proj_drop(self.proj(x))
    if self.mlp is not None:
        x = x + self.mlp(self.norm(x))
    if self.pool == "token":
        return x[:, 0]
    return x.mean(1) if self.pool == "avg" else x


def _pooler_forward(mha: nn.MultiheadAttention, store: list[torch.Tensor]):
    """open_clip's AttentionalPooler attention (batch-first cross-attention of learned queries over the tokens),
    computed explicitly from the module's weights, keeping its probabilities (B, H, L, N)."""
    def forward(query, key, value, need_weights=False, attn_mask=None, key_padding_mask=None, **_):
        B, L, D = query.shape  # (B, L, D) queries; key/value (B, N, kdim)
        N, H = key.shape[1], mha.num_heads
        if mha._qkv_same_embed_dim:
            wq, wk, wv = mha.in_proj_weight.chunk(3)
        else:
            wq, wk, wv = mha.q_proj_weight, mha.k_proj_weight, mha.v_proj_weight
        bq, bk, bv = mha.in_proj_bias.chunk(3) if mha.in_proj_bias is not None else (None, None, None)
        q = F.linear(query, wq, bq).reshape(B, L, H, -1).transpose(1, 2)  # (B, H, L, hd)
        k = F.linear(key, wk, bk).reshape(B, N, H, -1).transpose(1, 2)  # (B, H, N, hd)
        v = F.linear(value, wv, bv).reshape(B, N, H, -1).transpose(1, 2)  # (B, H, N, hd)
        attn = ((q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)).softmax(dim=-1)  # (B, H, L, N)
        store.append(attn)
        return mha.out_proj((attn @ v).transpose(1, 2).reshape(B, L, D)), None
    return forward


@contextmanager
def _timm(visual: nn.Module, start: int, rec: Recorded, outputs: bool) -> Iterator[None]:
    blocks = vit_blocks(visual)
    pool = getattr(visual.trunk, "attn_pool", None)
    with ExitStack() as stack:
        for b in blocks[:start]:
            b.forward = _without_grad(b.forward)
            stack.callback(b.__dict__.pop, "forward", None)
        for b in blocks[start:]:
            if not (hasattr(b.attn, "fused_attn") and isinstance(getattr(b.attn, "attn_drop", None), nn.Module)):
                raise UnsupportedTower(f"the timm tower's attention {type(b.attn).__name__} has no unfused path with "
                                       f"an attn_drop to record; use relevancy.methods=['gradient'] for this model")
            fused = b.attn.fused_attn
            b.attn.fused_attn = False
            stack.callback(setattr, b.attn, "fused_attn", fused)
            hook = b.attn.attn_drop.register_forward_hook(lambda _m, _i, out: rec.attns.append(out))
            stack.callback(hook.remove)
            if outputs:
                stack.callback(b.register_forward_hook(lambda _m, _i, out: rec.outputs.append(out)).remove)
        if pool is not None:
            pool._mapcap_store = rec.pooled
            pool.forward = types.MethodType(_pool_forward, pool)
            stack.callback(pool.__dict__.pop, "forward", None)
            stack.callback(pool.__dict__.pop, "_mapcap_store", None)
        yield


@contextmanager
def recording(visual: nn.Module, start: int = 0, outputs: bool = False) -> Iterator[Recorded]:
    """Within the block, a forward through the ViT tower fills a `Recorded` with the attention probabilities of
    blocks[start:] (and of the attention pool), and with those blocks' outputs when `outputs`."""
    rec = Recorded()
    try:
        if tower_of(visual).kind == "vit":
            blocks = vit_blocks(visual)
            with recording_attention(blocks, start) as store, ExitStack() as stack:
                if tower_of(visual).pool == "map":  # a CoCa: its attentional pooler's probabilities
                    mha = visual.attn_pool.attn
                    mha.forward = _pooler_forward(mha, rec.pooled)
                    stack.callback(mha.__dict__.pop, "forward", None)
                if outputs:
                    for b in blocks[start:]:
                        stack.callback(b.register_forward_hook(lambda _m, _i, out: rec.outputs.append(out)).remove)
                rec.attns = store  # filled by the swapped modules as the forward runs
                yield rec
        else:
            with _timm(visual, start, rec, outputs):
                yield rec
    finally:  # nothing recorded outlives the block: use (or copy) it inside
        rec.attns, rec.pooled, rec.outputs = [], [], []
