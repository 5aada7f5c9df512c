"""CLIPScore and RefCLIPScore (Hessel et al. 2021) as the authors' code computes them (jmhessel/clipscore).

Every text — candidate and reference alike — is encoded as "A photo depicts " + text (their `CLIPCapDataset`
puts the prefix on both). CLIPScore = 2.5 · max(cos(image, candidate), 0); the text side of RefCLIPScore is the
largest cos(candidate, reference), *not* clamped (their `get_refonlyclipscore`; the paper writes max(·, 0)); the
RefCLIPScore is the harmonic mean 2ab / (a + b) of the two, unguarded as theirs.
"""
from __future__ import annotations

import torch
from PIL import Image

from mapcap.tasks.models import LoadedModel, encode_images, encode_texts

CLIPSCORE_PREFIX = "A photo depicts "
CLIPSCORE_W = 2.5  # their w: rescales the image–text cosine


def clipscore(lm: LoadedModel, crops: list[Image.Image], captions: list[str],
              image_emb: torch.Tensor | None = None) -> torch.Tensor:
    """CLIPScore = 2.5 · max(cos(image, "A photo depicts " + caption), 0), per pair. `image_emb`: the crops'
    unit embeddings when the caller has them already (the captions stage encodes each crop once)."""
    img = encode_images(lm, crops) if image_emb is None else image_emb  # (N, D)
    txt = encode_texts(lm, [CLIPSCORE_PREFIX + c for c in captions])  # (N, D)
    return _image_text(img, txt)


def _image_text(img: torch.Tensor, txt: torch.Tensor) -> torch.Tensor:
    """2.5 · max(cos, 0) of unit image (N, D) and text (N, D) embeddings: (N,), their `np.clip(…, 0, None)`."""
    return CLIPSCORE_W * (img * txt.to(img.device)).sum(-1).clamp(min=0)


def refclipscore_from(scores: torch.Tensor, cand: torch.Tensor, refs: torch.Tensor,
                      owner: torch.Tensor) -> torch.Tensor:
    """RefCLIPScore from the CLIPScores (N,), the unit candidate embeddings (N, D), the unit reference
    embeddings (R, D) and each reference's candidate index (R,): harmonic mean of the CLIPScore and the
    candidate's largest (unclamped) cosine to its own references, as in the authors' code."""
    if owner.numel() == 0 or torch.bincount(owner, minlength=len(cand)).min() == 0:
        raise ValueError("every candidate needs at least one reference caption for RefCLIPScore; score only "
                         "captions of images whose manifest has a reference")
    owner = owner.to(cand.device)
    sims = (refs.to(cand.device) * cand[owner]).sum(-1)  # (R,) each reference against its own candidate
    text = torch.full((len(cand),), -torch.inf, device=cand.device, dtype=sims.dtype).scatter_reduce(
        0, owner, sims, reduce="amax")  # (N,) max over the candidate's references
    a = scores.to(text)
    return 2 * a * text / (a + text)


def ref_clipscore(lm: LoadedModel, crops: list[Image.Image], captions: list[str], references: list[list[str]],
                  image_emb: torch.Tensor | None = None, scores: torch.Tensor | None = None) -> torch.Tensor:
    """RefCLIPScore per pair (see the module doc). `scores`: the pairs' CLIPScores when already computed.
    Candidates and references, each with the prefix, go through the text encoder in one batch."""
    refs = [r for rs in references for r in rs]
    emb = encode_texts(lm, [CLIPSCORE_PREFIX + t for t in [*captions, *refs]])  # (N + R, D)
    cand, ref_emb = emb[:len(captions)], emb[len(captions):]
    if scores is None:
        img = encode_images(lm, crops) if image_emb is None else image_emb  # (N, D)
        scores = _image_text(img, cand)  # (N,)
    owner = torch.repeat_interleave(torch.arange(len(references)), torch.tensor([len(r) for r in references]))
    return refclipscore_from(scores, cand, ref_emb, owner)
