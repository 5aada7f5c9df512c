"""Train the toy CLIP contrastively on toy scenes (CPU, minutes) and ship it as an fp16 checkpoint.

`mapcap toy train` runs this. The model is an open_clip config registered from toy/model_configs, with
open_clip's own tokenizer, so the result loads like any local open_clip checkpoint.
"""
from __future__ import annotations

import logging
import math
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from mapcap.toy import TOY_CHECKPOINT, TOY_MODEL_NAME
from mapcap.toy.captions import ABSENT, attributes, sample_caption, truth_matrix
from mapcap.toy.dataset import SIDE, make_scene
from mapcap.toy.shapes import SHAPES

log = logging.getLogger(__name__)
MEAN = torch.tensor((0.48145466, 0.4578275, 0.40821073)).view(1, 3, 1, 1)  # open_clip's default (OpenAI)
STD = torch.tensor((0.26862954, 0.26130258, 0.27577711)).view(1, 3, 1, 1)
KIND_MIX = (("single", 0.55), ("distractor", 0.20), ("pair", 0.25))


def _render_chunk(args: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    seed, n, px = args
    rng = np.random.default_rng(seed)
    kinds, probs = zip(*KIND_MIX)
    imgs = np.empty((n, px, px, 3), np.uint8)
    objs = np.full((n, 2, 4), ABSENT)
    labels = []
    for i in range(n):
        scene = make_scene(rng, kinds[rng.choice(len(kinds), p=probs)])
        imgs[i] = np.asarray(Image.fromarray(scene.image).resize((px, px), Image.BICUBIC))
        for k, o in enumerate(scene.objects):
            objs[i, k] = attributes(o, SIDE)
        labels.append(scene.label)
    return imgs, objs, labels


def render_pool(n: int, seed: int, px: int, workers: int = 2) -> tuple[torch.Tensor, np.ndarray]:
    """n scenes as a normalised (n, 3, px, px) tensor and their object codes (n, 2, 4)."""
    chunk = 2000
    jobs = [(seed * 100_003 + i, min(chunk, n - i * chunk), px) for i in range(math.ceil(n / chunk))]
    with ProcessPoolExecutor(workers) as ex:
        parts = list(ex.map(_render_chunk, jobs))
    imgs = torch.from_numpy(np.concatenate([p[0] for p in parts])).permute(0, 3, 1, 2).float() / 255
    return (imgs - MEAN) / STD, np.concatenate([p[1] for p in parts])


@torch.no_grad()
def zero_shot_accuracy(model, tokenizer, images: torch.Tensor, labels: list[str],
                       templates: list[str]) -> float:
    """Accuracy of the template ensemble (mean of normalised text embeddings) over SHAPES."""
    return prompt_accuracy(model, tokenizer, images, labels, {s: [t.format(s) for t in templates] for s in SHAPES})


@torch.no_grad()
def description_accuracy(model, tokenizer, images: torch.Tensor, labels: list[str]) -> float:
    """Accuracy of description-based classification with the toy concept bank (Menon & Vondrick)."""
    from mapcap.tasks.concept_bank import class_prompt
    from mapcap.toy.concepts import toy_concept_bank

    bank = toy_concept_bank()
    return prompt_accuracy(model, tokenizer, images, labels, {s: [class_prompt(s, d) for d in bank[s]] for s in SHAPES},
                           mean_scores=True)


@torch.no_grad()
def prompt_accuracy(model, tokenizer, images: torch.Tensor, labels: list[str], prompts: dict[str, list[str]],
                    mean_scores: bool = False) -> float:
    """Accuracy over SHAPES: each class scored by its prompts' mean embedding, or by the mean of their scores."""
    model.eval()
    img = F.normalize(torch.cat([model.encode_image(b) for b in images.split(256)]), dim=-1)  # (N, D)
    scores = []
    for shape in SHAPES:
        e = F.normalize(model.encode_text(tokenizer(prompts[shape])), dim=-1)  # (P, D)
        scores.append((img @ e.T).mean(-1) if mean_scores else img @ F.normalize(e.mean(0), dim=-1))  # (N,)
    pred = torch.stack(scores, -1).argmax(-1)  # (N,)
    truth = torch.tensor([SHAPES.index(l) for l in labels])
    return float((pred == truth).float().mean())


def heldout(n: int = 480, seed: int = 999, px: int = 64) -> tuple[torch.Tensor, list[str]]:
    """Single-shape held-out images (a seed the training pool never uses)."""
    rng = np.random.default_rng(seed)
    scenes = [make_scene(rng, "single", SHAPES[i % len(SHAPES)]) for i in range(n)]
    imgs = np.stack([np.asarray(Image.fromarray(s.image).resize((px, px), Image.BICUBIC)) for s in scenes])
    x = torch.from_numpy(imgs).permute(0, 3, 1, 2).float() / 255
    return (x - MEAN) / STD, [s.label for s in scenes]


EVAL_TEMPLATES = {"{}": ["{}"], "a photo of a {}.": ["a photo of a {}."],
                  "simple": ["{}", "a {}", "a photo of a {}.", "a picture of a {}", "an image of a {}"]}


def train(steps: int = 1800, batch: int = 128, pool: int = 40_000, lr: float = 5e-4, seed: int = 0,
          out: Path = TOY_CHECKPOINT, threads: int | None = None, init: Path | None = None,
          descriptors: float = 0.0) -> dict:
    """Train (from scratch, or on from `init`) and save an fp16 checkpoint with its training record.

    `descriptors` is the share of single-object captions that say a concept-bank descriptor (toy/concepts.py).
    """
    from mapcap.tasks.models import create_clip

    torch.manual_seed(seed)
    if threads:
        torch.set_num_threads(threads)
    model, _, tokenizer = create_clip(TOY_MODEL_NAME, str(init) if init else "")  # init: continue training
    px = model.visual.image_size[0] if isinstance(model.visual.image_size, tuple) else model.visual.image_size
    t0 = time.time()
    images, objs = render_pool(pool, seed, px)
    log.info("rendered %d training scenes in %.0fs", pool, time.time() - t0)
    val_x, val_y = heldout(px=px)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    rest = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.05}, {"params": rest, "weight_decay": 0.0}],
                            lr=lr, betas=(0.9, 0.98))
    warm = max(steps // 20, 1)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    rng = np.random.default_rng(seed)
    t0 = time.time()
    for step in range(steps):
        model.train()
        idx = rng.choice(len(images), batch, replace=False)
        caps, cons = zip(*(sample_caption(rng, objs[i], descriptors) for i in idx))
        truth = torch.from_numpy(truth_matrix(np.stack(cons), objs[idx])).float()  # (B texts, B images)
        img = F.normalize(model.encode_image(images[idx]), dim=-1)  # (B, D)
        txt = F.normalize(model.encode_text(tokenizer(list(caps))), dim=-1)  # (B, D)
        logits = model.logit_scale.exp() * txt @ img.T  # (B texts, B images)
        loss = (F.cross_entropy(logits, truth / truth.sum(1, keepdim=True))
                + F.cross_entropy(logits.T, truth.T / truth.T.sum(1, keepdim=True))) / 2
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        if step % 100 == 0 or step == steps - 1:
            acc = zero_shot_accuracy(model, tokenizer, val_x[:160], val_y[:160], ["{}"])
            dacc = description_accuracy(model, tokenizer, val_x[:160], val_y[:160]) if descriptors else float("nan")
            log.info("step %d/%d loss %.3f val-acc({}) %.3f val-acc(descriptors) %.3f %.0fs", step, steps,
                     loss.item(), acc, dacc, time.time() - t0)
    record = {"steps": steps, "batch": batch, "pool": pool, "lr": lr, "seed": seed, "init": str(init or ""), "descriptors": descriptors,
              "train_seconds": round(time.time() - t0, 1), "heldout_n": len(val_y)}
    for name, tpl in EVAL_TEMPLATES.items():
        record[f"heldout_acc[{name}]"] = zero_shot_accuracy(model, tokenizer, val_x, val_y, tpl)
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES
    record["heldout_acc[openai]"] = zero_shot_accuracy(
        model, tokenizer, val_x, val_y, [t("{}") for t in OPENAI_IMAGENET_TEMPLATES])
    record["heldout_acc[descriptors]"] = description_accuracy(model, tokenizer, val_x, val_y)
    sd = {k: v.detach().half() if v.is_floating_point() else v for k, v in model.state_dict().items()}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    torch.save({"state_dict": sd, "mapcap_train": record}, tmp)
    tmp.replace(out)
    log.info("saved %s (%.1f MB): %s", out, out.stat().st_size / 1e6, record)
    return record


# The shipped checkpoint's recipe: cosine phases (warm restarts), each on a freshly rendered pool. The first
# three learn the shapes from names; the last two add descriptor captions (issue 7) on top of them.
RECIPE = ({"steps": 1800, "lr": 5e-4, "seed": 0}, {"steps": 1000, "lr": 3e-4, "seed": 1},
          {"steps": 700, "lr": 1.5e-4, "seed": 2},
          {"steps": 1200, "lr": 2e-4, "seed": 3, "descriptors": 0.3},
          {"steps": 600, "lr": 1e-4, "seed": 4, "descriptors": 0.3})


def train_recipe(out: Path = TOY_CHECKPOINT, recipe: tuple[dict, ...] = RECIPE, first: int = 0,
                 init: Path | None = None) -> dict:
    """Run the phases of `recipe` from `first` on, each starting from the previous phase's checkpoint
    (the first of them from `init`: e.g. phases 3-4 on top of a checkpoint of phases 0-2)."""
    import tempfile

    before: list[dict] = []
    if first and init:  # keep the record of the phases the starting checkpoint went through
        start = torch.load(init, map_location="cpu", weights_only=False).get("mapcap_train", {})
        before = list(start.get("phases", [start] if start else []))[:first]
    phases = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, phase in list(enumerate(recipe))[first:]:
            last = i == len(recipe) - 1
            dest = Path(out) if last else Path(tmp) / f"phase{i}.pt"
            phases.append(train(**phase, init=init, out=dest))
            init = dest
    record = finish_record(Path(out), before + phases)
    return record


def finish_record(out: Path, phases: list[dict]) -> dict:
    """Store the whole recipe's record (every phase) in the final checkpoint; returns it."""
    record = dict(phases[-1])
    record["phases"] = phases
    record["train_seconds_total"] = round(sum(p["train_seconds"] for p in phases), 1)
    ckpt = torch.load(out, map_location="cpu", weights_only=False)
    ckpt["mapcap_train"] = record
    tmp = out.with_suffix(".tmp")
    torch.save(ckpt, tmp)
    tmp.replace(out)
    return record
