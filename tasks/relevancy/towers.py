"""Image-tower kinds: found once per model, so each relevancy method can declare the kinds it explains.

- `vit`: open_clip's own VisionTransformer (ViT-*, coca_*), blocks with nn.MultiheadAttention, a class token; a
  CoCa's embedding is its attentional pooler's first query, which is then the explained token;
- `timm_vit`: a timm ViT trunk (EVA02-*, ViT-*-SigLIP*, SigLIP2): class token pooled, or an attention-pool
  ("map") head whose learned query is the explained token, or the token average;
- `resnet`: open_clip's ModifiedResNet (RN50, RN101, ...);
- `convnext`: a timm convolutional trunk with stages (convnext_*).
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch.nn as nn

from open_clip.modified_resnet import ModifiedResNet
from open_clip.timm_model import TimmModel
from open_clip.transformer import VisionTransformer

KINDS = ("vit", "timm_vit", "resnet", "convnext")


class UnsupportedTower(ValueError):
    """An image tower none of the relevancy methods knows."""


@dataclass(frozen=True)
class Tower:
    kind: str  # one of KINDS
    grid: tuple[int, int]  # (h, w) of the map: the patch grid (ViTs), the last stage's feature grid (CNNs)
    prefix: int = 0  # tokens before the patch tokens (class and register tokens), ViTs only
    pool: str = ""  # how a ViT's tokens become the embedding: 'token' (class token), 'map' (attention pool's first
    # query: timm's AttentionPoolLatent, open_clip's AttentionalPooler of CoCa), 'avg'


def _size(value) -> tuple[int, int]:
    return (int(value[0]), int(value[1])) if isinstance(value, (tuple, list)) else (int(value), int(value))


def _find(visual: nn.Module) -> Tower:
    if isinstance(visual, VisionTransformer):
        pooled = getattr(visual, "attn_pool", None) is not None and getattr(visual, "attn_pool_contrastive", 1) is None
        return Tower("vit", _size(visual.grid_size), 1, "map" if pooled else "token")
    if isinstance(visual, ModifiedResNet):
        h, w = _size(visual.image_size)
        return Tower("resnet", (h // 32, w // 32))
    if isinstance(visual, TimmModel):
        trunk = visual.trunk
        if hasattr(trunk, "blocks") and hasattr(trunk, "patch_embed"):
            pool = "map" if getattr(trunk, "attn_pool", None) is not None else getattr(trunk, "global_pool", "token")
            return Tower("timm_vit", _size(trunk.patch_embed.grid_size), int(getattr(trunk, "num_prefix_tokens", 0)),
                         "token" if pool in ("token", "") else pool)
        if hasattr(trunk, "stages"):
            h, w = _size(visual.image_size)
            return Tower("convnext", (h // 32, w // 32))
    raise UnsupportedTower(f"the image tower {type(visual).__name__} is none of the kinds relevancy maps explain "
                           f"({', '.join(KINDS)})")


_TOWERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def tower_of(visual: nn.Module) -> Tower:
    """The tower's kind and map grid, found once per model object."""
    if visual not in _TOWERS:
        _TOWERS[visual] = _find(visual)
    return _TOWERS[visual]


def vit_blocks(visual: nn.Module) -> list[nn.Module]:
    """The residual blocks of a ViT tower of either kind."""
    kind = tower_of(visual).kind
    if kind == "vit":
        return list(visual.transformer.resblocks)
    if kind == "timm_vit":
        return list(visual.trunk.blocks)
    raise UnsupportedTower(f"a {kind} tower has no attention blocks")
