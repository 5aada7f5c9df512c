"""Captioners: crops in, strings out, registered by name; and CLIPScore (Hessel et al. 2021).

A captioner implements one method, `caption(crops) -> list[str]`, and registers with `@register_captioner`.
This module holds the interface, its typed config and the crop helpers; each backend is one file of this package
(`retrieval`, `clipcap`, `hf`, `coca`, listed in builtin.py and imported on first lookup) or of a plugin.
"""
from __future__ import annotations


from PIL import Image, ImageStat

from mapcap.tasks.models import LoadedModel
from mapcap.tasks.provenance import frozen_config, omit_default
from mapcap.tasks.registry import Registry

CAPTIONERS: Registry[type[Captioner]] = Registry("captioner", "mapcap.tasks.captioners.builtin")


@frozen_config
class CaptionerConfig:
    name: str = "retrieval"  # a registered captioner: retrieval, clipcap, hf, coca
    path: str | None = None  # clipcap: checkpoint (.pt) or save_clipcap dir; hf: model dir; None: toy default
    tokenizer: str | None = None  # clipcap with an authors' .pt: local GPT-2 tokenizer directory
    concept_bank: str | None = None  # retrieval: JSON {class: [phrase]} or "general"; None: the preset's, else general
    phrases: int = 1  # retrieval: best phrases joined into one caption
    beams: int = 1  # generative captioners: 1 = greedy, more = beam search
    max_tokens: int = 20  # generative captioners: longest caption, in tokens
    prompt: str | None = None  # hf: text prompt for conditional models (BLIP: "a picture of")
    batch_size: int = 32  # crops per captioning call
    # retrieval with the general bank: the run's class names, phrases of it too (left out of stored configs while
    # empty, so configs from before it hash as they did)
    classes: tuple[str, ...] = omit_default(())


class Captioner:
    """Base class: `caption` turns a list of RGB crops into one string each.

    Subclasses are built as `cls(lm, cfg)` with the run's CLIP and a CaptionerConfig.
    """

    name = "base"
    needs_crops = True  # False: `caption_embedded` reads only the embeddings (the crops may stay on the GPU)

    def caption(self, crops: list[Image.Image]) -> list[str]:
        raise NotImplementedError

    def caption_embedded(self, crops: list[Image.Image], image_emb) -> list[str]:
        """`caption`, given the crops' raw (N, D) embeddings by the run's CLIP, as its image tower gives them (the
        captions stage computes them once for captioning and CLIPScore); captioners that read the run's CLIP
        override it to reuse them."""
        return self.caption(crops)

    @classmethod
    def check(cls, cfg: CaptionerConfig, model_name: str) -> None:
        """Cheap checks of cfg before a run starts (no model loading); raise ValueError naming the fix."""


def register_captioner(name: str):
    def deco(cls):
        cls.name = name
        return CAPTIONERS.register(name, cls)
    return deco


def captioner_class(name: str) -> type[Captioner]:
    return CAPTIONERS.get(name)


def make_captioner(cfg: CaptionerConfig, lm: LoadedModel | None = None) -> Captioner:
    return captioner_class(cfg.name)(lm, cfg)


def check_captioner(cfg: CaptionerConfig, model_name: str) -> None:
    """Fail before any shard runs when the captioner cannot work with this config and model."""
    captioner_class(cfg.name).check(cfg, model_name)


def square_box(bbox: tuple[float, float, float, float], context: float) -> tuple[int, int, int, int]:
    """The square (x0, y0, x1, y1) centred on bbox, its side (1 + context) × the bbox's longer side."""
    x0, y0, x1, y1 = bbox
    half = max(x1 - x0, y1 - y0) * (1 + context) / 2
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    return tuple(int(round(v)) for v in (cx - half, cy - half, cx + half, cy + half))


def crop_region(image: Image.Image, bbox: tuple[int, int, int, int], context: float = 1.0) -> Image.Image:
    """A square crop around a region's bbox, its side (1 + context) × the bbox's longer side.

    Tight crops are far from what CLIP saw in training (objects with surroundings): on the toy world the
    retrieval captioner names the shape of 30 % of tight crops, 67 % with context 0.5, 91 % with 1.0.
    Outside the image is filled with the image's mean colour.
    """
    box = square_box(bbox, context)
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    inside = rgb.crop((max(box[0], 0), max(box[1], 0), min(box[2], image.width), min(box[3], image.height)))
    if box[0] >= 0 and box[1] >= 0 and box[2] <= image.width and box[3] <= image.height:
        return inside  # nothing to fill
    # the exact mean from PIL's histogram: the same numbers as numpy's mean, ~10× faster on a photo
    canvas = Image.new("RGB", (box[2] - box[0], box[3] - box[1]), tuple(int(v) for v in ImageStat.Stat(rgb).mean))
    canvas.paste(inside, (max(-box[0], 0), max(-box[1], 0)))
    return canvas
