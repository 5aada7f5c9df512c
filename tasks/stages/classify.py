"""Zero-shot classification of one shard: every prompt template and their ensemble, top-k, per-image failures."""
from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from prefect import task
from prefect.cache_policies import NO_CACHE

from mapcap.storage.writer import count_rows, is_complete, shard_name, write_table
from mapcap.tasks.concept_bank import DESCRIPTION_TEMPLATE, ConceptBank, class_prompt
from mapcap.tasks.data import ImageLoadError, Item, load_image, image_id_of
from mapcap.tasks.models import LoadedModel, ModelSpec, encode_texts, in_batches, load_model, model_lock
from mapcap.tasks.provenance import SHARD_RETRIES, config_hash, library_versions, run_logger

STAGE_VERSION = 1  # bump when the stage's output for the same inputs changes; redoes finished shards
TABLES = ["images", "predictions", "failures"]
ENSEMBLE = "ensemble"


@dataclass(frozen=True)
class ClassifyConfig:
    model: ModelSpec  # resolved model (name, pretrained, device, precision)
    classes: tuple[str, ...]  # candidate class names, in index order
    templates: tuple[str, ...]  # prompt templates, each with one '{}'
    top_k: int = 5  # labels and probabilities kept per prediction
    batch_size: int = 64  # images per forward pass
    workers: int = 4  # decode threads per shard
    bank: ConceptBank | None = None  # descriptors: adds description-based rows (template 'descriptors')


_TEXT_CACHE: dict[tuple, torch.Tensor] = {}
_TEXT_LOCK = threading.Lock()


@torch.no_grad()
def text_classifier(lm: LoadedModel, classes: tuple[str, ...], templates: tuple[str, ...]) -> torch.Tensor:
    """(T + 1, C, D) unit text embeddings: one row per template, the last row their ensemble.

    The ensemble is the mean of the normalised per-template embeddings, normalised again (CLIP's recipe).
    Computed once per process for a model, class list and template list.
    """
    key = (lm.spec, classes, templates)
    with _TEXT_LOCK, model_lock(lm.model):
        if key not in _TEXT_CACHE:
            per_class = []
            for c in classes:
                tokens = lm.tokenizer([t.format(c) for t in templates]).to(lm.spec.device)  # (T, L)
                per_class.append(F.normalize(lm.model.encode_text(tokens).float(), dim=-1))  # (T, D)
            emb = torch.stack(per_class, dim=1)  # (T, C, D)
            ens = F.normalize(emb.mean(0, keepdim=True), dim=-1)  # (1, C, D)
            _TEXT_CACHE[key] = torch.cat([emb, ens], dim=0)  # (T + 1, C, D)
        return _TEXT_CACHE[key]


@torch.no_grad()
def description_classifier(lm: LoadedModel, bank: ConceptBank) -> tuple[torch.Tensor, torch.Tensor]:
    """Menon & Vondrick's description-based classifier: unit embeddings (P, D) of every prompt
    "{class}, which (is/has) {descriptor}" and the (C, P) matrix that averages each class's prompt scores."""
    key = ("descriptions", lm.spec, bank)
    with _TEXT_LOCK, model_lock(lm.model):
        if key not in _TEXT_CACHE:
            prompts = [class_prompt(c, d) for c, descs in zip(bank.classes, bank.descriptors) for d in descs]
            emb = in_batches(len(prompts), 512, lambda i, j: encode_texts(lm, prompts[i:j]))  # (P, D), unit
            avg = torch.zeros(len(bank.classes), len(prompts), device=emb.device)  # (C, P)
            start = 0
            for c, descs in enumerate(bank.descriptors):
                avg[c, start:start + len(descs)] = 1.0 / len(descs)
                start += len(descs)
            _TEXT_CACHE[key] = (emb, avg)
        return _TEXT_CACHE[key]


@torch.no_grad()
def classify_pixels(lm: LoadedModel, pixels: torch.Tensor, classifier: torch.Tensor,
                    descriptions: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """(R, B, C) class probabilities of a preprocessed batch (B, 3, H, W): one row per template, the ensemble,
    and with `descriptions` a last row scoring each class by the mean similarity to its descriptor prompts."""
    dev = lm.spec.device
    amp = torch.autocast(dev.split(":")[0], dtype=lm.autocast_dtype) if lm.autocast_dtype else nullcontext()
    with model_lock(lm.model), amp:
        img = lm.model.encode_image(pixels.to(dev, non_blocking=True))  # (B, D)
    img = F.normalize(img.float(), dim=-1)
    scale = lm.model.logit_scale.exp().float()
    logits = scale * torch.einsum("bd,tcd->tbc", img, classifier)  # (T+1, B, C)
    if descriptions is not None:
        emb, avg = descriptions  # (P, D), (C, P)
        desc = scale * (img @ emb.T) @ avg.T  # (B, C): mean cosine over each class's prompts, scaled
        logits = torch.cat([logits, desc.unsqueeze(0)], dim=0)  # (T+2, B, C)
    return logits.softmax(-1)


def prediction_rows(run_id: str, shard: int, image_ids: list[str], labels: list[str], classes: tuple[str, ...],
                    templates: tuple[str, ...], probs: torch.Tensor, top_k: int) -> list[dict]:
    """One row per image × template (+ the ensemble row, + a 'descriptors' row when probs has one more)."""
    k = min(top_k, len(classes))
    top_p, top_i = probs.topk(k, dim=-1)  # (T + 1, B, k)
    label_idx = torch.tensor([classes.index(l) for l in labels])  # (B,)
    label_p = probs.gather(-1, label_idx.view(1, -1, 1).expand(probs.shape[0], -1, 1)).squeeze(-1)  # (T+1, B)
    rank = (probs > label_p.unsqueeze(-1)).sum(-1) + 1  # (T + 1, B)
    rows = []
    names = list(templates) + [ENSEMBLE] + [DESCRIPTION_TEMPLATE] * (probs.shape[0] - len(templates) - 1)
    for t, name in enumerate(names):
        for b, (iid, label) in enumerate(zip(image_ids, labels)):
            pred = classes[int(top_i[t, b, 0])]
            rows.append({"run_id": run_id, "image_id": iid, "shard": shard, "template": name, "label": label,
                         "pred": pred, "correct": pred == label, "pred_prob": float(top_p[t, b, 0]),
                         "label_prob": float(label_p[t, b]), "label_rank": int(rank[t, b]),
                         "topk_labels": [classes[int(i)] for i in top_i[t, b]],
                         "topk_probs": [float(p) for p in top_p[t, b]]})
    return rows


def _prepare(item: Item, preprocess) -> tuple[Item, str, torch.Tensor | None, tuple[int, int] | None, Exception | None]:
    """Decode and preprocess one image in a worker thread; a bad image comes back as its error."""
    try:
        img, image_id = load_image(item.path)
        return item, image_id, preprocess(img), img.size, None
    except ImageLoadError as e:
        return item, getattr(e, "image_id", None) or image_id_of(item.path.encode()), None, None, e


def prepared(items: list[Item], preprocess, workers: int, window: int) -> Iterator[tuple]:
    """Decoded images in order, with at most `window` in flight (bounded memory on big shards)."""
    with ThreadPoolExecutor(max(workers, 1)) as ex:
        pending = []
        for item in items:
            pending.append(ex.submit(_prepare, item, preprocess))
            if len(pending) >= window:
                yield pending.pop(0).result()
        for f in pending:
            yield f.result()


def classify_shard(cfg: ClassifyConfig, run_id: str, shard: int, items: list[Item], root: str,
                   force: bool = False, log: logging.Logger | None = None) -> dict:
    """Classify one shard and write its images, predictions and failures files; skip it if already complete."""
    log = log or logging.getLogger(__name__)
    name = shard_name(shard)
    chash = config_hash("classify", STAGE_VERSION, cfg, [(it.path, it.label) for it in items])
    if not force and is_complete(root, TABLES, run_id, name, chash):
        log.info("shard %d already complete (config %s): skipped", shard, chash)
        return {"shard": shard, "skipped": True, "n_images": len(items),
                "n_failures": count_rows(root, "failures", run_id, name)}
    lm = load_model(cfg.model)
    classifier = text_classifier(lm, cfg.classes, cfg.templates)
    descriptions = description_classifier(lm, cfg.bank) if cfg.bank else None
    images, preds, failures = [], [], []
    batch: list[tuple[str, str, torch.Tensor]] = []

    def flush():
        if batch:
            ids, labels, pix = zip(*batch)
            pixels = torch.stack(pix)  # (B, 3, H, W)
            probs = in_batches(len(pix), len(pix), lambda i, j: classify_pixels(lm, pixels[i:j], classifier, descriptions).cpu()
                               .transpose(0, 1)).transpose(0, 1)  # (T + 1, B, C); OOM halves the batch
            preds.extend(prediction_rows(run_id, shard, list(ids), list(labels), cfg.classes, cfg.templates,
                                         probs, cfg.top_k))
            batch.clear()

    for item, image_id, pix, size, err in prepared(items, lm.preprocess, cfg.workers, 2 * cfg.batch_size):
        images.append({"run_id": run_id, "image_id": image_id, "path": item.path, "label": item.label,
                       "shard": shard, "width": size[0] if size else None, "height": size[1] if size else None})
        if err is not None:
            log.warning("image failed to load: %s", err)
            failures.append({"run_id": run_id, "image_id": image_id, "path": item.path, "shard": shard,
                             "stage": "load", "error_type": type(err.__cause__ or err).__name__, "error": str(err)})
            continue
        batch.append((image_id, item.label, pix))
        if len(batch) >= cfg.batch_size:
            flush()
    flush()
    meta = {"config": cfg, "stage": "classify", "stage_version": STAGE_VERSION, "shard": shard}
    for table, rows in (("failures", failures), ("predictions", preds), ("images", images)):
        write_table(root, table, run_id, name, rows, config=meta, config_hash=chash, versions=library_versions())
    log.info("shard %d: %d images, %d failures", shard, len(images), len(failures))
    return {"shard": shard, "skipped": False, "n_images": len(images), "n_failures": len(failures)}


@task(name="classify-shard", task_run_name="classify-shard-{shard}", tags=["mapcap-gpu"], cache_policy=NO_CACHE,
      **SHARD_RETRIES)
def classify_shard_task(cfg: ClassifyConfig, run_id: str, shard: int, items: list[Item], root: str,
                        force: bool = False) -> dict:
    return classify_shard(cfg, run_id, shard, items, root, force, log=run_logger(__name__))
