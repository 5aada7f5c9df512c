"""CLIPScore and RefCLIPScore (Hessel et al. 2021): how well a caption fits its crop, and its references."""
from __future__ import annotations

import torch
from PIL import Image

from mapcap.tasks.models import LoadedModel, encode_images, encode_texts

CLIPSCORE_PREFIX = "A photo depicts "


def clipscore(lm: LoadedModel, crops: list[Image.Image], captions: list[str],
              image_emb: torch.Tensor | None = None) -> torch.Tensor:
    """CLIPScore = 2.5 · max(cos(image, "A photo depicts " + caption), 0), per pair. `image_emb`: the crops'
    unit embeddings when the caller has them already (the captions stage encodes each crop once)."""
    img = encode_images(lm, crops) if image_emb is None else image_emb  # (N, D)
    txt = encode_texts(lm, [CLIPSCORE_PREFIX + c for c in captions])  # (N, D)
    return 2.5 * (img * txt).sum(-1).clamp(min=0)


def ref_clipscore(lm: LoadedModel, crops: list[Image.Image], captions: list[str], references: list[list[str]],
                  image_emb: torch.Tensor | None = None, scores: torch.Tensor | None = None) -> torch.Tensor:
    """RefCLIPScore: harmonic mean of CLIPScore and max(cos(caption, reference), 0) over the references.
    `scores`: the pairs' CLIPScores when already computed. Every text goes through the encoder in one batch."""
    cs = clipscore(lm, crops, captions, image_emb) if scores is None else scores  # (N,)
    refs = [r for rs in references for r in rs]
    emb = encode_texts(lm, list(captions) + refs)  # (N + R, D)
    cand, ref_emb = emb[:len(captions)], emb[len(captions):]
    owner = torch.repeat_interleave(torch.arange(len(references)), torch.tensor([len(r) for r in references]))
    sims = (ref_emb * cand[owner.to(cand.device)]).sum(-1)  # (R,) each reference against its own caption
    ref = torch.full((len(captions),), -1.0, device=sims.device).scatter_reduce(
        0, owner.to(sims.device), sims, reduce="amax").clamp(min=0)  # (N,)
    cs = cs.to(ref.device)
    return torch.where(cs + ref > 0, 2 * cs * ref / (cs + ref).clamp(min=1e-12), torch.zeros_like(cs))
