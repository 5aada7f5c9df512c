"""CLIPScore and RefCLIPScore (Hessel et al. 2021): how well a caption fits its crop, and its references."""
from __future__ import annotations

import torch
from PIL import Image

from mapcap.tasks.models import LoadedModel, encode_images, encode_texts

CLIPSCORE_PREFIX = "A photo depicts "


def clipscore(lm: LoadedModel, crops: list[Image.Image], captions: list[str]) -> torch.Tensor:
    """CLIPScore = 2.5 · max(cos(image, "A photo depicts " + caption), 0), per pair."""
    img = encode_images(lm, crops)
    txt = encode_texts(lm, [CLIPSCORE_PREFIX + c for c in captions])
    return 2.5 * (img * txt).sum(-1).clamp(min=0)


def ref_clipscore(lm: LoadedModel, crops: list[Image.Image], captions: list[str],
                  references: list[list[str]]) -> torch.Tensor:
    """RefCLIPScore: harmonic mean of CLIPScore and max(cos(caption, reference), 0) over the references."""
    cs = clipscore(lm, crops, captions)
    cand = encode_texts(lm, captions)
    ref = torch.stack([(encode_texts(lm, refs) @ c).max().clamp(min=0) for refs, c in zip(references, cand)])
    return torch.where(cs + ref > 0, 2 * cs * ref / (cs + ref).clamp(min=1e-12), torch.zeros_like(cs))
