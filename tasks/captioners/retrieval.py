"""The `retrieval` captioner: the best phrases of a phrase bank by CLIP similarity (any CLIP, no extra model): the
user's bank, the model preset's (the toy's), or the general bank of ImageNet's objects, stuff and the run's classes."""
from __future__ import annotations

import torch.nn.functional as F
from PIL import Image

from mapcap.tasks.captioners.base import Captioner, CaptionerConfig, register_captioner
from mapcap.tasks.concept_bank import load_descriptors
from mapcap.tasks.captioners.general_bank import GENERAL, general_phrases
from mapcap.tasks.cache import load_once
from mapcap.tasks.models import LoadedModel, encode_images, encode_texts
from mapcap.tasks.plugins import preset_for_model


def phrase_bank(cfg: CaptionerConfig, model_name: str) -> str:
    """The retrieval captioner's phrase bank: the configured JSON (or `general`), else the model preset's, else the
    general bank (tasks/captioners/general_bank.py)."""
    p = preset_for_model(model_name)
    return cfg.concept_bank or (p.phrases if p is not None else None) or GENERAL


@register_captioner("retrieval")
class RetrievalCaptioner(Captioner):
    """The `k` concept-bank phrases closest to the crop, joined with ', '."""

    needs_crops = False

    @classmethod
    def check(cls, cfg: CaptionerConfig, model_name: str) -> None:
        if cfg.concept_bank and cfg.concept_bank != GENERAL:
            load_descriptors(cfg.concept_bank)

    def __init__(self, lm: LoadedModel, cfg: CaptionerConfig):
        self.check(cfg, lm.spec.name)
        source = phrase_bank(cfg, lm.spec.name)
        k = cfg.phrases
        if source == GENERAL:
            phrases = general_phrases(cfg.classes)
        else:
            phrases = sorted({p for ps in load_descriptors(source).values() for p in ps})
        if not phrases:
            raise ValueError("the concept bank has no phrases")
        self.lm, self.phrases, self.k = lm, phrases, k
        self.text = load_once(("retrieval-bank", lm.spec, tuple(phrases)),  # (P, D), encoded once per process
                              lambda: encode_texts(lm, phrases))

    def caption(self, crops: list[Image.Image]) -> list[str]:
        return self.caption_embedded(crops, encode_images(self.lm, crops, normalize=False) if crops else None)

    def caption_embedded(self, crops: list[Image.Image], image_emb) -> list[str]:
        if not crops:
            return []
        sims = F.normalize(image_emb.to(self.text.device), dim=-1) @ self.text.T  # (N, P) cosines
        top = sims.topk(min(self.k, len(self.phrases)), dim=-1).indices
        return [", ".join(self.phrases[j] for j in row) for row in top.tolist()]
