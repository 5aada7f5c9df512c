"""The text tower over the positions a batch uses, not the tokenizer's whole context.

CLIP's tokenizer pads every prompt to 77 tokens and `encode_text` runs all 77 through the transformer, but a
prompt is ~10-20 tokens and CLIP's text tower is causal with the embedding taken at the end-of-text token: the
positions after the batch's last end-of-text token cannot change any output. Running the first n positions
gives the same embeddings (to float rounding) for ~n/77 of the work: 100 classes × CLIP's 80 templates with
ViT-B-16 on 2 CPU cores 353 s → 69.5 s, largest difference 1.9e-7 (`bench/text.py` measures it).
"""
from __future__ import annotations

from typing import Any

import torch
from open_clip.model import CLIP, text_global_pool


def truncatable(model: Any) -> bool:
    """Whether `model`'s text embedding ignores the positions after each prompt's end-of-text token: open_clip's
    CLIP with a causal mask and argmax pooling (OpenAI's and LAION's CLIPs; not SigLIP, whose text attends both
    ways, nor the towers of other classes, which keep `encode_text`)."""
    return (type(model) is CLIP and getattr(model, "text_pool_type", None) == "argmax"
            and getattr(model, "attn_mask", None) is not None and model.positional_embedding.ndim == 2)


def text_features(model: Any, tokens: torch.Tensor) -> torch.Tensor:
    """(B, D) raw text embeddings of tokens (B, L), as `model.encode_text(tokens)` gives them, through the first
    n positions only, n = one past the batch's last end-of-text token (the largest token id)."""
    if not truncatable(model):
        return model.encode_text(tokens)
    n = int(tokens.argmax(dim=-1).max()) + 1  # one host read per batch
    if n >= tokens.shape[1]:
        return model.encode_text(tokens)
    tokens = tokens[:, :n]  # (B, n)
    cast = model.transformer.get_cast_dtype()
    x = model.token_embedding(tokens).to(cast) + model.positional_embedding[:n].to(cast)  # (B, n, W)
    x = model.transformer(x, attn_mask=model.attn_mask[:n, :n])  # (B, n, W)
    x = text_global_pool(model.ln_final(x), tokens, "argmax")  # (B, W)
    proj = model.text_projection
    if proj is None:
        return x
    return proj(x) if isinstance(proj, torch.nn.Linear) else x @ proj  # (B, D)
