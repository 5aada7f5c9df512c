"""The `coca` captioner: a CoCa model (coca_ViT-B-32, coca_ViT-L-14) captions with its own text decoder.

open_clip's `CoCa.generate` builds on transformers' logits processors and beam scorer, which transformers 5
removed; this decodes with the model's own parts instead: the image tokens once per crop (`_encode_image`), then
per step the text tower over the sequence so far and the multimodal decoder's logits at its last position — the
same logits `CoCa.forward(..., output_labels=False)` gives. Greedy (beams = 1) or a batched beam search (beams > 1,
the best beam by log-probability per token, as transformers' default length penalty of 1.0), every crop of a
batch at once; a caption ends at the end-of-text token or after `max_tokens`.
"""
from __future__ import annotations

import open_clip
import torch
from PIL import Image

from mapcap.tasks.captioners.base import Captioner, CaptionerConfig, register_captioner
from mapcap.tasks.models import LoadedModel, autocast, model_lock


def step_logits(model, image_embs: torch.Tensor, seq: torch.Tensor) -> torch.Tensor:
    """(N, V) next-token logits for sequences (N, L) given their images' tokens (N, T, W)."""
    _, token_embs = model._encode_text(seq)  # (N, L, W)
    return model.text_decoder(image_embs, token_embs)[:, -1].float()


def greedy(model, image_embs: torch.Tensor, sot: int, eot: int, max_tokens: int) -> torch.Tensor:
    """(B, ≤ max_tokens) token ids after the start token, end token included where reached."""
    B = image_embs.shape[0]
    seq = torch.full((B, 1), sot, dtype=torch.long, device=image_embs.device)
    done = torch.zeros(B, dtype=torch.bool, device=seq.device)
    for _ in range(max_tokens):
        nxt = step_logits(model, image_embs, seq).argmax(-1).masked_fill(done, eot)  # (B,)
        seq = torch.cat([seq, nxt[:, None]], dim=1)
        done |= nxt == eot
        if done.all():
            break
    return seq[:, 1:]


def beam_search(model, image_embs: torch.Tensor, sot: int, eot: int, max_tokens: int, beams: int) -> torch.Tensor:
    """(B, ≤ max_tokens) the best of `beams` beams per image (sum of log-probabilities / length)."""
    B, K = image_embs.shape[0], beams
    dev = image_embs.device
    embs = image_embs.repeat_interleave(K, dim=0)  # (B*K, T, W)
    seq = torch.full((B * K, 1), sot, dtype=torch.long, device=dev)
    score = torch.full((B, K), float("-inf"), device=dev)
    score[:, 0] = 0.0  # one live beam to start: the others would repeat it
    done = torch.zeros(B * K, dtype=torch.bool, device=dev)
    length = torch.zeros(B * K, device=dev)
    for _ in range(max_tokens):
        logp = step_logits(model, embs, seq).log_softmax(-1)  # (B*K, V)
        V = logp.shape[-1]
        logp[done] = float("-inf")
        logp[done, eot] = 0.0  # a finished beam only goes on with end tokens, at no cost
        score, idx = (score.reshape(-1, 1) + logp).reshape(B, K * V).topk(K, dim=-1)  # (B, K)
        rows = (torch.arange(B, device=dev)[:, None] * K + idx // V).reshape(-1)  # (B*K,) the beams extended
        tok = (idx % V).reshape(-1)  # (B*K,)
        seq = torch.cat([seq[rows], tok[:, None]], dim=1)
        length = length[rows] + (~done[rows]).float()
        done = done[rows] | (tok == eot)
        if done.all():
            break
    best = (score.reshape(-1) / length.clamp(min=1)).reshape(B, K).argmax(-1)  # (B,)
    return seq.reshape(B, K, -1)[torch.arange(B, device=dev), best, 1:]


def is_coca(model_name: str) -> bool:
    return "multimodal_cfg" in (open_clip.get_model_config(model_name) or {})


@register_captioner("coca")
class CocaCaptioner(Captioner):
    """Captions from the run's CoCa model, `batch_size` crops per decoding loop."""

    @classmethod
    def check(cls, cfg: CaptionerConfig, model_name: str) -> None:
        if not is_coca(model_name):
            raise ValueError(f"the coca captioner decodes with a CoCa model's own text decoder, and the run's model "
                             f"{model_name!r} is not a CoCa: pass --model coca_ViT-B-32 (or coca_ViT-L-14), or "
                             f"choose another captioner (retrieval, clipcap, hf)")

    def __init__(self, lm: LoadedModel | None, cfg: CaptionerConfig):
        if lm is None:
            raise ValueError("the coca captioner needs the run's CoCa model")
        self.check(cfg, lm.spec.name)
        self.lm, self.cfg = lm, cfg
        self.sot, self.eot = lm.tokenizer.sot_token_id, lm.tokenizer.eot_token_id

    def text(self, ids: list[int]) -> str:
        ids = ids[:ids.index(self.eot)] if self.eot in ids else ids
        return self.lm.tokenizer.decode(ids).strip()

    @torch.no_grad()
    def caption(self, crops: list[Image.Image]) -> list[str]:
        lm, cfg, out = self.lm, self.cfg, []
        for i in range(0, len(crops), cfg.batch_size):
            pix = torch.stack([lm.preprocess(c.convert("RGB")) for c in crops[i:i + cfg.batch_size]])
            with model_lock(lm.model), autocast(lm):
                _, image_embs = lm.model._encode_image(pix.to(lm.spec.device))  # (B, T, W)
                ids = (greedy(lm.model, image_embs, self.sot, self.eot, cfg.max_tokens) if cfg.beams == 1 else
                       beam_search(lm.model, image_embs, self.sot, self.eot, cfg.max_tokens, cfg.beams))
            out += [self.text(row) for row in ids.tolist()]
        return out
