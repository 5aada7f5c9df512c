"""Train the toy ClipCap on crops of toy scenes, captioned from their known objects (CPU, minutes).

`mapcap toy train-captioner` runs this. The decoder is a small GPT-2 (`transformers`) over a word-level
tokenizer of the toy vocabulary (built with `tokenizers`, saved beside the weights), the prefix comes from
the shipped toy CLIP, and the result is a `save_clipcap` directory that the `clipcap` captioner loads like
any other ClipCap checkpoint.
"""
from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from mapcap.tasks.articles import with_article
from mapcap.tasks.captioners.base import crop_region, square_box
from mapcap.tasks.captioners.clipcap_model import ClipCapConfig, ClipCapModel, save_clipcap
from mapcap.tasks.models import encode_images, load_model, resolve_spec
from mapcap.toy import TOY_CLIPCAP, TOY_MODEL_NAME
from mapcap.toy.dataset import make_scene
from mapcap.toy.shapes import COLOURS, SHAPES

log = logging.getLogger(__name__)
EOS = "<|endoftext|>"
WORDS = ("a", "an", "and", "empty", "background", *COLOURS, *SHAPES)
KIND_MIX = (("single", 0.5), ("distractor", 0.25), ("pair", 0.25))


def build_tokenizer() -> PreTrainedTokenizerFast:
    """A word-level tokenizer of the toy vocabulary (GPT-2's convention: one <|endoftext|> for bos/eos/pad)."""
    vocab = {w: i for i, w in enumerate((EOS, "<unk>", *WORDS))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=EOS, eos_token=EOS, pad_token=EOS,
                                   unk_token="<unk>")


def _bbox(mask: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(mask)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def _inside(mask: np.ndarray, box: tuple[int, int, int, int]) -> float:
    x0, y0, x1, y1 = box
    return mask[max(y0, 0):max(y1, 0), max(x0, 0):max(x1, 0)].sum() / max(mask.sum(), 1)


def _phrase(obj) -> str:
    return with_article(f"{obj.colour} {obj.shape}")


def sample_crops(n_scenes: int, seed: int, jitter: bool = True,
                 targets_only: bool = False) -> list[tuple[Image.Image, str, str, str]]:
    """(crop, caption, shape, colour) for every object of n_scenes scenes, plus some background crops.

    With jitter, boxes are rescaled and shifted and context varies, as regions cut from relevancy maps are;
    the caption names the crop's object first, then any other object mostly inside the crop. Some whole
    images and background patches are mixed in, as the captions stage also captions those. `targets_only`
    keeps only crops of each scene's labelled object (the true object).
    """
    rng = np.random.default_rng(seed)
    kinds, probs = zip(*KIND_MIX)
    out = []
    for _ in range(n_scenes):
        scene = make_scene(rng, kinds[rng.choice(len(kinds), p=probs)])
        image = Image.fromarray(scene.image)
        for k, (obj, mask) in enumerate(zip(scene.objects, scene.masks)):
            if mask.sum() < 16 or (targets_only and k > 0):
                continue
            x0, y0, x1, y1 = _bbox(mask)
            context = 1.0
            if jitter:
                w, h = x1 - x0, y1 - y0
                s, dx, dy = rng.uniform(0.8, 1.25), rng.uniform(-0.15, 0.15) * w, rng.uniform(-0.15, 0.15) * h
                cx, cy = (x0 + x1) / 2 + dx, (y0 + y1) / 2 + dy
                x0, x1, y0, y1 = cx - s * w / 2, cx + s * w / 2, cy - s * h / 2, cy + s * h / 2
                context = rng.uniform(0.5, 1.5)
            words = [_phrase(obj)]
            box = square_box((x0, y0, x1, y1), context)
            for j, (other, omask) in enumerate(zip(scene.objects, scene.masks)):
                if j != k and _inside(omask, box) >= 0.5:
                    words.append(_phrase(other))
            out.append((crop_region(image, (x0, y0, x1, y1), context), " and ".join(words), obj.shape, obj.colour))
        if jitter and rng.random() < 0.4:  # the whole image (captions of region -1), objects by visible area
            order = sorted(range(len(scene.objects)), key=lambda j: -scene.masks[j].sum())
            out.append((image, " and ".join(_phrase(scene.objects[j]) for j in order if scene.masks[j].sum() >= 16),
                        scene.objects[order[0]].shape, scene.objects[order[0]].colour))
        if jitter and rng.random() < 0.15:  # a patch of background, as a random map's region may be
            side = int(rng.integers(16, 40))
            x, y = (int(v) for v in rng.integers(0, scene.image.shape[0] - side, 2))
            if all(_inside(m, (x, y, x + side, y + side)) < 0.05 for m in scene.masks):
                out.append((image.crop((x, y, x + side, y + side)), "an empty background", "", ""))
    return out


def _tokens(tok: PreTrainedTokenizerFast, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, T) ids ending in eos, padded with eos, and the (N, T) mask of positions to learn (caption + 1 eos)."""
    ids = [tok(c)["input_ids"] + [tok.eos_token_id] for c in captions]
    t = max(map(len, ids))
    out = torch.full((len(ids), t), tok.eos_token_id, dtype=torch.long)
    mask = torch.zeros(len(ids), t, dtype=torch.long)
    for i, row in enumerate(ids):
        out[i, :len(row)], mask[i, :len(row)] = torch.tensor(row), 1
    return out, mask


def caption_accuracy(captions: list[str], truth: list[tuple[str, str]]) -> tuple[float, float]:
    """Shares of captions whose first object has the true shape, and the true colour."""
    shape_ok = colour_ok = 0
    for text, (shape, colour) in zip(captions, truth):
        words = text.split()
        shapes = [w for w in words if w in SHAPES]
        colours = [w for w in words if w in COLOURS]
        shape_ok += bool(shapes) and shapes[0] == shape
        colour_ok += bool(colours) and colours[0] == colour
    return shape_ok / len(truth), colour_ok / len(truth)


def train_captioner(out: Path = TOY_CLIPCAP, scenes: int = 20000, steps: int = 3000, batch: int = 256,
                    lr: float = 1e-3, seed: int = 0) -> dict:
    """Train and save the toy ClipCap; returns its held-out shape / colour accuracy (greedy)."""
    torch.manual_seed(seed)
    t0 = time.time()
    lm = load_model(resolve_spec(TOY_MODEL_NAME, "toy", "cpu", "fp32"))
    data = sample_crops(scenes, seed)
    emb = torch.cat([encode_images(lm, [c for c, *_ in data[i:i + 512]], normalize=False)
                     for i in range(0, len(data), 512)])  # (N, D)
    tok = build_tokenizer()
    ids, mask = _tokens(tok, [cap for _, cap, *_ in data])
    log.info("%d crops from %d scenes embedded in %.0fs", len(data), scenes, time.time() - t0)
    cfg = ClipCapConfig(prefix_length=4, prefix_size=emb.shape[1], mapping="mlp", normalize_prefix=True,
                        n_embd=128, n_layer=2, n_head=4, vocab_size=len(tok), n_positions=32, eos_token_id=tok.eos_token_id,
                        clip_model=TOY_MODEL_NAME, clip_pretrained="toy")
    model = ClipCapModel(cfg).train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 100) * 0.5 * (1 + math.cos(math.pi * min(s / steps, 1.0))))
    gen = torch.Generator().manual_seed(seed)
    for step in range(steps):
        idx = torch.randint(len(data), (batch,), generator=gen)
        logits = model(emb[idx], ids[idx], mask[idx])  # (B, T, V)
        loss = (F.cross_entropy(logits.transpose(1, 2), ids[idx], reduction="none") * mask[idx]).sum() / mask[idx].sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 500 == 0 or step == steps - 1:
            log.info("step %d/%d loss %.3f %.0fs", step, steps, loss.item(), time.time() - t0)
    model.eval()
    held = [d for d in sample_crops(600, seed + 10_000, jitter=False)]
    texts = []
    with torch.no_grad():
        for i in range(0, len(held), 256):
            e = encode_images(lm, [c for c, *_ in held[i:i + 256]], normalize=False)
            texts += tok.batch_decode(model.generate(e, [tok.eos_token_id], tok.eos_token_id, 12),
                                      skip_special_tokens=True)
    shape_acc, colour_acc = caption_accuracy(texts, [(s, c) for _, _, s, c in held])
    save_clipcap(model, tok, out)
    record = {"crops": len(data), "steps": steps, "loss": round(loss.item(), 4), "heldout_crops": len(held),
              "shape_acc": round(shape_acc, 4), "colour_acc": round(colour_acc, 4),
              "seconds": round(time.time() - t0)}
    log.info("saved %s: %s", out, record)
    return record
