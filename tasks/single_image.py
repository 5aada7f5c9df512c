"""Explaining one image against several texts (the interactive path: CLI now, the explorer page later)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from mapcap.tasks.data import load_image
from mapcap.tasks.models import LoadedModel, encode_texts, model_lock
from mapcap.tasks.report.overlay import overlay_row
from mapcap.tasks.relevancy.chefer import text_token_relevancy
from mapcap.tasks.relevancy.methods import DEFAULTS, relevancy_maps, resolve_start
from mapcap.tasks.relevancy.towers import tower_of


def explain_image(lm: LoadedModel, image_path: str | tuple[Image.Image, str], texts: list[str],
                  method: str | None = None, start_layer: int | None = None) -> dict:
    """Raw maps (T, g, g) float32, the softmax over the texts, the decoded image, and each text's per-token
    relevancy. `image_path` is a file, or an already decoded (image, image id). `method` None: the default of the
    model's image tower (chefer for ViTs, legrad for timm ViTs, gradcam for CNNs); the result names it."""
    if not texts or any(not t.strip() for t in texts):
        raise ValueError("every text must be non-empty; pass at least one --text")
    method = method or DEFAULTS[tower_of(lm.model.visual).kind][0]
    image, image_id = load_image(image_path) if isinstance(image_path, str) else image_path
    txt = encode_texts(lm, texts)
    pix = lm.preprocess(image).unsqueeze(0).expand(len(texts), -1, -1, -1)  # (T, 3, H, W)
    maps = relevancy_maps(lm, method, pix, txt, start_layer, batch_size=len(texts))  # (T, g, g)
    with torch.no_grad(), model_lock(lm.model):
        img = F.normalize(lm.model.encode_image(pix[:1].to(lm.spec.device)).float(), dim=-1)  # (1, D)
        probs = (lm.model.logit_scale.exp() * img @ txt.T).softmax(-1)[0].cpu()
    start = resolve_start(method, lm.spec.name, start_layer)
    return {"maps": maps.numpy().astype(np.float32), "probs": probs.numpy(), "image": image, "method": method,
            "image_id": image_id, "start_layer": start, "tokens": token_weights(lm, img, texts)}


def token_weights(lm: LoadedModel, image_emb: torch.Tensor, texts: list[str]) -> list[list[tuple[str, float]]]:
    """Per text, (word piece, relevancy share) for each of its tokens: which words mattered for the match."""
    from open_clip.tokenizer import SimpleTokenizer

    tokens = lm.tokenizer(texts).to(lm.spec.device)  # (T, L)
    rel = text_token_relevancy(lm, image_emb.expand(len(texts), -1), tokens, start_layer=0)  # (T, L)
    decoder = SimpleTokenizer()
    out = []
    for row, weights in zip(tokens.tolist(), rel.tolist()):
        eot = row.index(max(row))
        pieces = [(decoder.decode([t]).strip(), w) for t, w in zip(row[1:eot], weights[1:eot])]  # no SOT/EOT
        total = sum(max(w, 0) for _, w in pieces) or 1.0
        out.append([(p, max(w, 0) / total) for p, w in pieces])
    return out


def save_explanation(result: dict, texts: list[str], out: str, method: str) -> tuple[Path, Path]:
    """OUT.npz with `maps` (raw), `texts`, `probs`; and OUT.png with one overlay per text."""
    out_path = Path(out)
    if out_path.suffix != ".npz":
        raise ValueError(f"--out {out} must end in .npz (the overlay goes beside it as .png)")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(out_path, maps=result["maps"], texts=np.array(texts), probs=result["probs"], method=method,
             start_layer=-999 if result["start_layer"] is None else result["start_layer"])
    titles = [f"{t} ({p:.2f})" for t, p in zip(texts, result["probs"])]
    png = out_path.with_suffix(".png")
    overlay_row(result["image"], list(result["maps"]), titles).save(png)
    return out_path, png
