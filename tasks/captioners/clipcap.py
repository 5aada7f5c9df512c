"""The `clipcap` captioner: crops → the ClipCap's own CLIP → prefix → GPT-2 captions (tasks/clipcap.py).

A checkpoint is tied to the CLIP it was trained on: a `save_clipcap` directory names it in its config; an
authors' `.pt` file uses the run's CLIP, whose embedding width must match the checkpoint's.
"""
from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image

from mapcap.tasks.captioners.base import Captioner, CaptionerConfig, register_captioner
from mapcap.tasks.captioners.clipcap_model import ClipCapModel, load_clipcap
from mapcap.tasks.cache import load_once
from mapcap.tasks.models import (LoadedModel, autocast, encode_images, load_model, model_lock,
                          resolve_spec)
from mapcap.tasks.plugins import preset_for_model

def _load(path: str, tokenizer: str | None, device: str) -> tuple:
    """Model and tokenizer, loaded once per process and device."""
    def build() -> tuple:
        model, tok = load_clipcap(path, tokenizer)
        return model.to(device), tok
    return load_once(("clipcap", path, tokenizer, device), build)


def decode(tok, ids: torch.Tensor) -> list[str]:
    """Token ids → captions, cut after the first full stop (the authors' models go on after it)."""
    out = []
    for text in tok.batch_decode(ids, skip_special_tokens=True):
        text = text.strip()
        out.append(text[:text.index(".") + 1] if "." in text else text)
    return out


def default_path(model_name: str) -> str | None:
    """The model preset's ClipCap directory (the toy model ships one), or None."""
    p = preset_for_model(model_name)
    return p.captioner_path if p is not None else None


@register_captioner("clipcap")
class ClipCapCaptioner(Captioner):
    """ClipCap captions, greedy (beams=1) or beam search, `batch_size` crops per generate call."""

    @classmethod
    def check(cls, cfg: CaptionerConfig, model_name: str) -> None:
        if cfg.path is None and default_path(model_name) is None:
            raise ValueError("the clipcap captioner needs captioner_path: a ClipCap .pt checkpoint (with "
                             "captioner_tokenizer, a local GPT-2 tokenizer dir) or a save_clipcap directory")
        if cfg.path is not None and not Path(cfg.path).exists():
            raise ValueError(f"ClipCap checkpoint {cfg.path} does not exist")
        if cfg.path is not None and Path(cfg.path).is_file() and not cfg.tokenizer:
            raise ValueError(f"{cfg.path} is an authors' ClipCap checkpoint: pass captioner_tokenizer=DIR, a local "
                             "directory with GPT-2's tokenizer files")

    def __init__(self, lm: LoadedModel | None, cfg: CaptionerConfig):
        if lm is None:
            raise ValueError("the clipcap captioner needs the run's CLIP (lm)")
        self.check(cfg, lm.spec.name)
        run_spec = lm.spec
        path = cfg.path or default_path(lm.spec.name)
        self.model, self.tok = _load(path, cfg.tokenizer, lm.spec.device)
        mc = self.model.cfg
        if mc.clip_model:
            lm = load_model(resolve_spec(mc.clip_model, mc.clip_pretrained, lm.spec.device, lm.spec.precision,
                                           lm.spec.compile))
        width = getattr(lm.model.visual, "output_dim", None)
        if width is not None and width != mc.prefix_size:
            raise ValueError(f"ClipCap {path} maps {mc.prefix_size}-d CLIP embeddings but {lm.spec.name} makes "
                             f"{width}-d ones: use the CLIP it was trained with (model=..., pretrained=...)")
        self.needs_crops = lm.spec != run_spec  # prefixes from another CLIP than the run's: encode the crops
        self.lm, self.cfg = lm, cfg
        stop = [self.tok.eos_token_id] if self.tok.eos_token_id is not None else []
        dot = self.tok.convert_tokens_to_ids(".")
        if dot is not None and dot != self.tok.unk_token_id:
            stop.append(dot)
        if not stop:
            raise ValueError(f"tokenizer of {path} has neither an eos token nor '.': captions would never stop")
        self.stop = stop
        self.pad = self.tok.pad_token_id if self.tok.pad_token_id is not None else stop[0]

    def token_ids(self, crops: list[Image.Image], use_cache: bool = True) -> torch.Tensor:
        return self.generate_from(encode_images(self.lm, crops, normalize=False), use_cache)

    def generate_from(self, emb: torch.Tensor, use_cache: bool = True) -> torch.Tensor:
        """Token ids (N, L) of captions from raw CLIP image embeddings (N, D)."""
        with model_lock(self.model), autocast(self.lm):
            return self.model.generate(emb.to(self.lm.spec.device), self.stop, self.pad, self.cfg.max_tokens,
                                       self.cfg.beams, use_cache)

    def caption(self, crops: list[Image.Image]) -> list[str]:
        out: list[str] = []
        for b in range(0, len(crops), self.cfg.batch_size):
            out += decode(self.tok, self.token_ids(crops[b:b + self.cfg.batch_size]))
        return out

    def caption_embedded(self, crops: list[Image.Image], image_emb) -> list[str]:
        """Captions from the run's raw crop embeddings (N, D) when this ClipCap was trained on the run's CLIP:
        the crops are not preprocessed and encoded a second time."""
        if self.needs_crops:
            return self.caption(crops)
        step = self.cfg.batch_size
        return [t for b in range(0, len(image_emb), step)
                for t in decode(self.tok, self.generate_from(image_emb[b:b + step]))]


__all__ = ["ClipCapCaptioner", "ClipCapModel", "decode"]
