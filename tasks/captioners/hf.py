"""The `hf` captioner: any local transformers image-to-text model directory (BLIP, GIT, ViT-GPT2, ...).

Loaded through the Auto classes with `local_files_only` (there is no model hub here), once per process.
A directory with a processor config uses it; one with only an image processor and a tokenizer (ViT-GPT2's
VisionEncoderDecoder) gets the two put together.
"""
from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image
from transformers import (AutoImageProcessor, AutoModelForImageTextToText, AutoProcessor, AutoTokenizer,
                          ProcessorMixin)

from mapcap.tasks.captioners.base import Captioner, CaptionerConfig, register_captioner
from mapcap.tasks.cache import load_once
from mapcap.tasks.models import LoadedModel, model_lock, resolve_device

def load_image_to_text(path: str, device: str) -> tuple:
    """(model, image processor, tokenizer, processor or None) from a local directory, once per process."""
    return load_once(("hf", str(Path(path).resolve()), device), lambda: _read(path, device))


def _read(path: str, device: str) -> tuple:
    try:
        model = AutoModelForImageTextToText.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as e:
        raise ValueError(f"hf captioner: {path} holds no image-to-text model the Auto classes know: {e}") from e
    try:
        processor = AutoProcessor.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError, TypeError):
        processor = None  # no processor config: image processor and tokenizer are loaded on their own
    if isinstance(processor, ProcessorMixin):
        return model.to(device).eval(), processor.image_processor, processor.tokenizer, processor
    try:
        image_proc = AutoImageProcessor.from_pretrained(path, local_files_only=True)
        tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as e:
        raise ValueError(f"hf captioner: {path} lacks an image processor or tokenizer: {e}") from e
    return model.to(device).eval(), image_proc, tok, None


@register_captioner("hf")
class HFCaptioner(Captioner):
    """Captions from `model.generate`, greedy or beam search, `batch_size` crops per call."""

    @classmethod
    def check(cls, cfg: CaptionerConfig, model_name: str) -> None:
        if not cfg.path:
            raise ValueError("the hf captioner needs captioner_path: a local transformers image-to-text model "
                             "directory (e.g. a saved BLIP, GIT or ViT-GPT2)")
        if not Path(cfg.path).is_dir():
            raise FileNotFoundError(f"hf captioner: {cfg.path} is not a directory; pass captioner_path=DIR holding "
                                    "a transformers image-to-text model (config.json, weights, processor files)")

    def __init__(self, lm: LoadedModel | None, cfg: CaptionerConfig):
        self.check(cfg, lm.spec.name if lm is not None else "")
        self.device = lm.spec.device if lm is not None else resolve_device("auto")
        self.model, self.image_proc, self.tok, self.processor = load_image_to_text(cfg.path, self.device)
        self.cfg = cfg

    @torch.no_grad()
    def token_ids(self, crops: list[Image.Image]) -> torch.Tensor:
        images = [c.convert("RGB") for c in crops]
        if self.processor is not None and self.cfg.prompt:
            inputs = self.processor(images=images, text=[self.cfg.prompt] * len(images), return_tensors="pt")
        else:
            inputs = self.image_proc(images=images, return_tensors="pt")
        inputs = {k: v.to(self.device) for k, v in inputs.items()}
        pad = self.tok.pad_token_id if self.tok.pad_token_id is not None else self.tok.eos_token_id
        with model_lock(self.model):
            return self.model.generate(**inputs, max_new_tokens=self.cfg.max_tokens, num_beams=self.cfg.beams,
                                       do_sample=False, pad_token_id=pad)

    def caption(self, crops: list[Image.Image]) -> list[str]:
        out: list[str] = []
        for b in range(0, len(crops), self.cfg.batch_size):
            for text in self.tok.batch_decode(self.token_ids(crops[b:b + self.cfg.batch_size]),
                                              skip_special_tokens=True):
                text = text.strip()
                if self.cfg.prompt and text.lower().startswith(self.cfg.prompt.lower()):
                    text = text[len(self.cfg.prompt):].strip()  # conditional models repeat the prompt
                out.append(text)
        return out
