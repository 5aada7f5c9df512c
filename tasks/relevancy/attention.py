"""Recording attention probabilities in open_clip transformers, inside a context manager.

open_clip's blocks call `nn.MultiheadAttention(..., need_weights=False)`, so no probabilities are ever
materialised. `recording_attention` swaps each block's `attn` module for a drop-in that computes the same
attention explicitly from the module's public weights (in_proj_weight/bias, out_proj) and keeps the
probabilities in the autograd graph; on exit the original modules are back and nothing is retained.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn as nn
import torch.nn.functional as F


class UnsupportedArchitecture(ValueError):
    """The model has no ViT-style blocks with nn.MultiheadAttention (ResNet, ConvNeXt, timm towers...)."""


class RecordingAttention(nn.Module):
    """Self-attention equal to the wrapped nn.MultiheadAttention, keeping its probabilities (B, H, N, N)."""

    def __init__(self, mha: nn.MultiheadAttention, store: list[torch.Tensor]):
        super().__init__()
        if not mha._qkv_same_embed_dim or mha.in_proj_weight is None:
            raise UnsupportedArchitecture("attention with separate q/k/v projections is not supported")
        self.mha = mha
        self.store = store

    def forward(self, query, key=None, value=None, need_weights=False, attn_mask=None, key_padding_mask=None,
                **_):
        if key is not None and key is not query:
            raise UnsupportedArchitecture("cross-attention blocks are not supported by relevancy")
        if key_padding_mask is not None:
            raise UnsupportedArchitecture("key_padding_mask is not supported by relevancy")
        mha = self.mha
        x = query if mha.batch_first else query.transpose(0, 1)  # (B, N, D)
        B, N, D = x.shape
        H = mha.num_heads
        q, k, v = F.linear(x, mha.in_proj_weight, mha.in_proj_bias).chunk(3, dim=-1)  # 3 × (B, N, D)
        q, k, v = (t.reshape(B, N, H, D // H).transpose(1, 2) for t in (q, k, v))  # (B, H, N, hd)
        scores = (q * (D // H) ** -0.5) @ k.transpose(-2, -1)  # (B, H, N, N)
        if attn_mask is not None:
            if attn_mask.dtype == torch.bool:
                scores = scores.masked_fill(attn_mask, float("-inf"))
            else:
                scores = scores + attn_mask
        attn = scores.softmax(dim=-1)  # (B, H, N, N)
        self.store.append(attn)
        out = (attn @ v).transpose(1, 2).reshape(B, N, D)  # (B, N, D)
        out = mha.out_proj(out)
        return (out if mha.batch_first else out.transpose(0, 1)), None


def attention_blocks(tower: nn.Module, what: str) -> list[nn.Module]:
    """The residual blocks of a ViT-style tower (model.visual or the text model), with a clear error if none.
    A block another thread is recording (its `attn` swapped, under the model's lock) is one too: shards in flight
    share the model."""
    transformer = getattr(tower, "transformer", None)
    blocks = getattr(transformer, "resblocks", None)
    kinds = (nn.MultiheadAttention, RecordingAttention)
    if blocks is None or not all(isinstance(getattr(b, "attn", None), kinds) for b in blocks):
        raise UnsupportedArchitecture(
            f"the {what} tower ({type(tower).__name__}) has no ViT blocks with nn.MultiheadAttention; relevancy "
            f"supports open_clip ViT models (ViT-B-32, ViT-B-16, ViT-L-14, the toy model), not ResNet, ConvNeXt "
            f"or timm towers. Use method='gradient' for those.")
    return list(blocks)


def _without_grad(forward):
    def run(*args, **kwargs):
        with torch.no_grad():
            return forward(*args, **kwargs)
    return run


@contextmanager
def recording_attention(blocks: list[nn.Module], start: int = 0) -> Iterator[list[torch.Tensor]]:
    """Within the block, every forward through `blocks` appends the (B, H, N, N) probabilities of blocks[start:].

    The blocks before `start` run as they are (fused attention) under no_grad: a map from the last block needs
    neither their probabilities nor a graph through them, which is most of the memory and time of a batch.
    """
    store: list[torch.Tensor] = []
    originals = [b.attn for b in blocks[start:]]
    try:
        for b in blocks[:start]:
            b.forward = _without_grad(b.forward)  # an instance attribute shadows the class's method
        for b in blocks[start:]:
            b.attn = RecordingAttention(b.attn, store)
        yield store
    finally:
        for b in blocks[:start]:
            b.__dict__.pop("forward", None)
        for b, orig in zip(blocks[start:], originals):
            b.attn = orig
        store.clear()
