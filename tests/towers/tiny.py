"""Tiny open_clip models of every tower family, registered with open_clip (and timm) for the tests' grid.

Each family is built by open_clip's own factory from a config, exactly as its full-size sibling is:
- `Tiny-ViT`: open_clip's VisionTransformer (class token), 2 blocks;
- `Tiny-EVA`: a timm Eva tower with a class token and rotary embeddings (as EVA02-*), 2 blocks;
- `Tiny-MapViT`: a timm ViT with the attention-pool ("map") head and no class token (as ViT-*-SigLIP*; a name
  with "siglip" would make open_clip fetch the SigLIP tokenizer), 2 blocks;
- `Tiny-RN`: open_clip's ModifiedResNet (as RN50), one bottleneck per stage;
- `Tiny-ConvNeXt`: a timm ConvNeXt (as convnext_*), one block per stage;
- `Tiny-CoCa`: open_clip's CoCa (as coca_*: a ViT with an attention pool, a text decoder), for its captioner.
"""
from __future__ import annotations

import open_clip
import torch
from timm.models import is_model, register_model
from timm.models.convnext import ConvNeXt
from timm.models.eva import Eva
from timm.models.vision_transformer import VisionTransformer

from mapcap.tasks.models import init_coca_decoder

TEXT = {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}


def _timm(name, fn):
    if not is_model(name):  # registering twice warns
        fn.__name__ = name
        register_model(fn)


def _own(kw: dict) -> dict:
    """timm.create_model's loading arguments are not the architecture's."""
    return {k: v for k, v in kw.items() if k not in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir")}


def _vit_map(pretrained=False, **kw):
    kw = _own(kw)
    kw.setdefault("global_pool", "map")
    return VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, class_token=False,
                             no_embed_class=True, **kw)


def _eva(pretrained=False, **kw):
    kw = _own(kw)
    kw.setdefault("global_pool", "token")
    return Eva(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, mlp_ratio=4 * 2 / 3, swiglu_mlp=True,
               use_rot_pos_emb=True, ref_feat_shape=(4, 4), **kw)


def _convnext(pretrained=False, **kw):
    kw = _own(kw)
    model = ConvNeXt(depths=(1, 1, 1, 1), dims=(8, 16, 24, 32), **kw)
    model.default_cfg = {"pool_size": (4, 4)}  # open_clip's TimmModel reads it (timm's builder would set it)
    return model


CONFIGS = {
    "Tiny-ViT": {"embed_dim": 24, "vision_cfg": {"image_size": 64, "layers": 2, "width": 32, "head_width": 16,
                                                 "patch_size": 8}, "text_cfg": TEXT},
    "Tiny-EVA": {"embed_dim": 24, "vision_cfg": {"image_size": 32, "timm_model_name": "mapcap_tiny_eva",
                                                 "timm_model_pretrained": False, "timm_pool": "token",
                                                 "timm_proj": None}, "text_cfg": TEXT, "custom_text": True},
    "Tiny-MapViT": {"embed_dim": 32, "init_logit_bias": -10, "custom_text": True,
                    "vision_cfg": {"image_size": 32, "timm_model_name": "mapcap_tiny_vit_map",
                                   "timm_model_pretrained": False, "timm_pool": "map", "timm_proj": "none"},
                    "text_cfg": TEXT},
    "Tiny-RN": {"embed_dim": 24, "vision_cfg": {"image_size": 128, "layers": [1, 1, 1, 1], "width": 8,
                                                "patch_size": None}, "text_cfg": TEXT},
    "Tiny-ConvNeXt": {"embed_dim": 24, "vision_cfg": {"image_size": 128, "timm_model_name": "mapcap_tiny_convnext",
                                                      "timm_model_pretrained": False, "timm_pool": "",
                                                      "timm_proj": "linear"}, "text_cfg": TEXT},
    "Tiny-CoCa": {"embed_dim": 32, "custom_text": True,
                  "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "head_width": 16, "patch_size": 8,
                                 "attentional_pool": True, "attn_pooler_heads": 2, "output_tokens": True},
                  "text_cfg": {**TEXT, "embed_cls": True, "output_tokens": True},
                  "multimodal_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2,
                                     "layers": 1, "attn_pooler_heads": 2}},
}
FAMILIES = {"Tiny-ViT": "vit", "Tiny-CoCa": "vit", "Tiny-EVA": "timm_vit", "Tiny-MapViT": "timm_vit",
            "Tiny-RN": "resnet", "Tiny-ConvNeXt": "convnext"}


def register() -> None:
    """Add the tiny timm trunks and open_clip configs (idempotent)."""
    _timm("mapcap_tiny_vit_map", _vit_map)
    _timm("mapcap_tiny_eva", _eva)
    _timm("mapcap_tiny_convnext", _convnext)
    for name, cfg in CONFIGS.items():
        open_clip.factory._MODEL_CONFIGS[name] = cfg


def build(name: str, seed: int = 0):
    """(model in eval mode, preprocess, tokenizer) with seeded random weights."""
    register()
    torch.manual_seed(seed)
    model, _, pre = open_clip.create_model_and_transforms(name)
    init_coca_decoder(model)  # open_clip leaves a CoCa's decoder projection uninitialised (torch.empty)
    return model.eval(), pre, open_clip.get_tokenizer(name)
