"""Stage `concepts`: visual and language concepts, mutual knowledge and its faithfulness.

Reads the shard's predictions (ensemble rows) and the regions of the predicted class's primary map; writes
`concepts` (top-k descriptors per image, per region, and per predicted class) and `mutual_knowledge` (one row
per image). The measures are defined in tasks/metrics/mutual_knowledge.py.

On a GPU (with a plain resize / crop / normalise preprocess, the captions stage's gate) views, masks and the
deletion / insertion images come from the shard's device frames, no file decoded again in PIL
(tasks/concept_views.py); elsewhere the PIL path below, the reference (tests/tasks/test_concept_views.py holds
the two together).
"""
from __future__ import annotations

import functools
from typing import Any

import numpy as np
import torch
from pydantic import Field

from mapcap.tasks.captioners.base import crop_region
from mapcap.tasks.concept_bank import ConceptBank
from mapcap.tasks.device_turn import on_device
from mapcap.tasks.metrics.mutual_knowledge import (class_probs, concept_embeddings, cumulative_masks, curve_auc,
                                                   faithfulness, language_concepts, mi_curve, top_k,
                                                   visual_concepts)
from mapcap.tasks.data import full_size
from mapcap.tasks.frames import crop_boxes, frames, scale_box
from mapcap.tasks.masks import mask_at
from mapcap.tasks.metrics.perturb import perturbed_pixels
from mapcap.tasks.concept_views import device_chunk, device_geometry, device_perturbed, model_masks
from mapcap.tasks.models import ModelSpec, encode_images, encode_pixels, in_batches, load_model
from mapcap.tasks.pipeline.sharding import sampled
from mapcap.tasks.pipeline.base import Section, Stage, StageUnavailable, register_stage
from mapcap.tasks.provenance import frozen_config
from mapcap.tasks.pipeline.context import StageContext, draft_size
from mapcap.tasks.pipeline.facts import Facts, sample_share
from mapcap.tasks.pipeline.embeddings import embed_views, view_key
from mapcap.tasks.zeroshot import ENSEMBLE, text_classifier


CHUNK = 32  # images whose views and perturbations go through the model together


def encode_all(lm, images: list) -> torch.Tensor:
    """(N, D) raw embeddings of PIL images, 256 per forward pass."""
    return in_batches(len(images), 256, lambda i, j: encode_images(lm, images[i:j], normalize=False).cpu())


def encode_batches(lm, pixels: list[torch.Tensor]) -> torch.Tensor:
    """(N, D) raw embeddings of (3, S, S) model pixels on the device, 256 per forward pass."""
    return in_batches(len(pixels), 256, lambda i, j: encode_pixels(lm, torch.stack(pixels[i:j]), False).cpu())


@frozen_config
class ConceptsConfig:
    model: ModelSpec  # the run's CLIP
    classes: tuple[str, ...]  # the run's classes, in index order
    templates: tuple[str, ...]  # the run's templates (the predicted class's embedding is their ensemble)
    bank: ConceptBank  # descriptors per class; their union is the concept vocabulary
    subject: str = "an object"  # class-free subject of concept prompts: "an object, which has four corners"
    top_k: int = 3  # visual concepts per region (and per whole image)
    language_k: int = 5  # language concepts of the predicted class
    method: str = "chefer"  # the primary relevancy method: its regions (of the 'pred' target) are the parts
    start_layer: int | None = -1  # ... and its start layer
    context: float = 1.0  # crop context around a region, × its size (as for captions)
    sample: float = 1.0  # share of images that get concepts, picked by image id (1: all)


class ConceptsParams(Section):
    """textual concepts, mutual knowledge"""

    descriptors: str | None = Field(None, description="concept bank: JSON {class: [descriptor, ...]} (Menon & "
                                                      "Vondrick's format) for description-based classification "
                                                      "and the concepts stage; the toy model has its own")
    subject: str = Field("an object", description="subject of class-free concept prompts: '<subject>, which has "
                                                  "<descriptor>'")
    top_k: int = Field(3, ge=1, description="visual concepts (descriptors) per region and per image")
    language_top_k: int = Field(5, ge=1, description="language concepts (descriptors nearest the predicted class)")
    images: int | None = Field(256, ge=1, description="about this many images of the run get concepts (within "
                                                      "a factor √2: a sample fixed by image id, the same whatever "
                                                      "the sharding and while the dataset grows within that "
                                                      "factor); empty: all")


def _concept_rows(base: dict, source: str, region_id: int, class_name: str | None, vals, idx, vocab, label_set,
                  pred_set) -> list[dict]:
    return [base | {"source": source, "region_id": region_id, "class_name": class_name, "rank": rank,
                    "descriptor": vocab[v], "similarity": float(s), "of_label": vocab[v] in label_set,
                    "of_pred": vocab[v] in pred_set}
            for rank, (s, v) in enumerate(zip(vals, idx))]


def parts_of(cfg: ConceptsConfig, image, regions: list[dict]) -> list:
    """The image's parts: a crop per region (with context), or the whole image when it has none."""
    return [crop_region(image, scale_box(r["bbox"], image), cfg.context) for r in regions] or [image]


def view_keys(cfg: ConceptsConfig, image_id: str, regions: list[dict]) -> list:
    """Memo keys of the views `parts_of` gives, after the whole image (tasks/pipeline/embeddings.py)."""
    whole = view_key(cfg.model, image_id)
    return [whole] + ([view_key(cfg.model, image_id, r["bbox"], cfg.context) for r in regions] or [whole])


def frame_masks(regions: list[dict], image) -> list[np.ndarray]:
    """The regions' bool masks at the PIL frame's size (h, w); one all-True mask when the image has none (the
    whole image is its one part)."""
    return [mask_at(r, image.size, full_size(image)) for r in regions] or [np.ones((image.size[1], image.size[0]),
                                                                                  dtype=bool)]


def visual_rows(cfg: ConceptsConfig, masks: list[np.ndarray], regions: list[dict], pred: dict, emb: torch.Tensor,
                concept_emb: torch.Tensor, language: dict[str, tuple[list[int], list[float]]],
                base: dict) -> tuple[list[dict], dict, list[np.ndarray]]:
    """Concept rows, the mutual-knowledge row without faithfulness, and the concept steps (unions of `masks`, one
    per region, at whatever resolution the caller perturbs at) of one image, from the unit embeddings (1 + R, D)
    of the image and its parts."""
    vocab = cfg.bank.vocabulary
    label_set, pred_set = set(cfg.bank.of(pred["label"])), set(cfg.bank.of(pred["pred"]))
    sims = emb @ concept_emb.T  # (1 + R, V)
    vals, idx = top_k(sims, cfg.top_k)  # (1 + R, k)
    rows = _concept_rows(base, "image", -1, None, vals[0].tolist(), idx[0].tolist(), vocab, label_set, pred_set)
    for r, reg in enumerate(regions):
        rows += _concept_rows(base, "region", reg["region_id"], None, vals[r + 1].tolist(), idx[r + 1].tolist(),
                              vocab, label_set, pred_set)
    lang_idx, lang_vals = language[pred["pred"]]
    rows += _concept_rows(base, "language", -1, pred["pred"], lang_vals, lang_idx, vocab, label_set, pred_set)
    order, tied = visual_concepts(idx[1:], sims[0])
    curve = mi_curve(order, lang_idx)
    visual = [vocab[v] for v in order]
    language_words = [vocab[v] for v in lang_idx]
    mk = base | {"label": pred["label"], "pred": pred["pred"], "correct": pred["correct"], "method": cfg.method,
                 "n_regions": len(regions), "n_visual": len(visual), "n_language": len(language_words),
                 "visual": visual, "language": language_words,
                 "shared": [w for w in visual if w in language_words],
                 "n_shared": sum(w in language_words for w in visual),
                 "top_visual": visual[0] if visual else None,
                 "top_visual_of_label": bool(visual) and visual[0] in label_set,
                 "mi": curve[0], "mi_curve": curve, "auc": curve_auc(curve)}
    return rows, mk, cumulative_masks(order, tied, masks)


# version 2: deletion / insertion images drawn at the model's input resolution (tasks/metrics/perturb.py)
# version 3: crops, masks and perturbations from frames decoded at a reduced scale where the crops allow
@register_stage("concepts", ConceptsConfig, reads=("predictions", "images", "regions"),
                writes=("concepts", "mutual_knowledge"), order=3, version=3,
                summary="visual / language concepts and mutual knowledge (needs a concept bank covering the classes)",
                settings=ConceptsParams, old_names={"descriptors": "descriptors", "concept_subject": "subject",
                                                    "concept_top_k": "top_k", "language_top_k": "language_top_k"})
class Concepts(Stage):
    """Mutual knowledge of each image's parts (primary map's regions) and its predicted class."""

    def plan(self, params: Any, facts: Facts) -> ConceptsConfig:
        if facts.bank is None:
            raise StageUnavailable(facts.bank_reason)
        c, plan = params.concepts, facts.plan
        return ConceptsConfig(model=plan.model, classes=plan.classes, templates=plan.templates, bank=facts.bank,
                              subject=c.subject, top_k=c.top_k, language_k=c.language_top_k, method=facts.primary[0],
                              start_layer=facts.primary[1], context=params.captions.context,
                              sample=1.0 if c.images is None else sample_share(c.images, plan.n_images))

    @on_device  # one shard at a time on the device, for the whole stage (tasks/device_turn.py)
    def compute(self, cfg: ConceptsConfig, ctx: StageContext) -> dict:
        lm = load_model(cfg.model)
        concept_emb = concept_embeddings(lm, cfg.bank.vocabulary, cfg.subject)  # (V, D)
        class_emb = text_classifier(lm, cfg.classes, cfg.templates)[-1].cpu()  # (C, D) ensemble
        language = {c: language_concepts(class_emb[i], concept_emb, cfg.language_k)
                    for i, c in enumerate(cfg.classes)}
        paths = {r["image_id"]: r["path"] for r in ctx.table("images")}
        preds = {r["image_id"]: r for r in ctx.table("predictions") if r["template"] == ENSEMBLE}
        regions: dict[str, list[dict]] = {}
        for r in ctx.table("regions"):
            if r["target"] == "pred" and r["method"] == cfg.method and r["start_layer"] == cfg.start_layer:
                regions.setdefault(r["image_id"], []).append(r)
        todo = [i for i in sorted(preds) if sampled(i, cfg.sample)]
        sizes = {r["image_id"]: (r["width"], r["height"]) for r in ctx.table("images") if r["image_id"] in preds}
        geo = device_geometry(lm)  # None: PIL frames, crops and perturbations; else all on the device
        if geo is None:  # each image decoded once, as coarse as its crops allow (tasks/frames.py)
            boxes = {i: crop_boxes([r["bbox"] for r in regions.get(i, [])], cfg.context) for i in todo}
            decoded = frames(ctx, {i: paths[i] for i in todo}, sizes, boxes, draft_size(lm.preprocess))
            todo = sorted(decoded)
        concept_rows, mk_rows = [], []
        for c in range(0, len(todo), CHUNK):  # many images per forward pass, bounded memory
            chunk = todo[c:c + CHUNK]
            regs = {i: sorted(regions.get(i, []), key=lambda r: r["region_id"]) for i in chunk}
            if geo is None:
                views = [v for i in chunk for v in [decoded[i]] + parts_of(cfg, decoded[i], regs[i])]
                masks = {i: frame_masks(regs[i], decoded[i]) for i in chunk}
                encode = functools.partial(encode_all, lm)
            else:  # frames from the shard's cache, views and masks at the model's resolution (concept_views.py)
                dc = device_chunk(ctx, lm.spec.device, geo, chunk, paths, sizes, regs, cfg.context)
                chunk, views = dc.ids, dc.views
                if not chunk:  # none of them readable: failure rows
                    continue
                masks = {i: model_masks(regs[i], dc.shapes[i], sizes[i], geo) for i in chunk}
                encode = functools.partial(encode_batches, lm)
            names = [k for i in chunk for k in view_keys(cfg, i, regs[i])]
            emb = embed_views(ctx, names, views, encode).cpu()  # (sum(1 + R), D), unit
            steps, start = {}, 0
            for i in chunk:
                base = {"run_id": ctx.run_id, "image_id": i, "shard": ctx.shard}
                n = 1 + max(len(regs[i]), 1)  # the whole image and its parts
                rows, mk, steps[i] = visual_rows(cfg, masks[i], regs[i], preds[i], emb[start:start + n],
                                                 concept_emb, language, base)
                start += n
                concept_rows += rows
                mk_rows.append(mk)
            # deletions, then insertions, drawn at the model's resolution: (2(N+1), 3, S, S) per image
            if geo is None:
                pert = torch.cat([perturbed_pixels(lm.preprocess, decoded[i], steps[i]) for i in chunk])
            else:
                pert = device_perturbed(dc, steps, geo)  # (sum 2(N+1), 3, S, S), one batch for the chunk
            probs = class_probs(lm, pert, class_emb)  # (sum 2(N+1), C)
            start = 0
            for mk, i in zip(mk_rows[-len(chunk):], chunk):
                n = 2 * len(steps[i])
                mk |= faithfulness(probs[start:start + n], cfg.classes.index(preds[i]["pred"]),
                                   cfg.classes.index(preds[i]["label"]))
                start += n
            ctx.progress(c + len(chunk), len(todo), "images")
        return {"concepts": concept_rows, "mutual_knowledge": mk_rows}
