"""Stage `classify`: every image against every prompt template, their ensemble and (with a concept bank
covering the classes) description-based scores; top-k, label probability and rank per row."""
from __future__ import annotations

from typing import Any

import pyarrow as pa
import torch
import torch.nn.functional as F
from pydantic import Field

from mapcap.storage.schemas import schema_for
from mapcap.tasks.concept_bank import ConceptBank
from mapcap.tasks.device_turn import on_device
from mapcap.tasks.models import ModelSpec, encode_pixels, in_batches, load_model
from mapcap.tasks.relevancy.attention import UnsupportedArchitecture, attention_blocks
from mapcap.tasks.relevancy.fused import classify_and_explain
from mapcap.tasks.relevancy.methods import resolve_start
from mapcap.tasks.relevancy.towers import tower_of
from mapcap.tasks.pipeline.base import Section, Stage, register_stage
from mapcap.tasks.limits import DEFAULT_LIMITS, DecodeLimits
from mapcap.tasks.provenance import frozen_config, omit_default
from mapcap.tasks.pipeline.plan import default_batch
from mapcap.tasks.pipeline.context import StageContext
from mapcap.tasks.pipeline.facts import Facts
from mapcap.tasks.pipeline.shared import MapKey
from mapcap.tasks.pipeline.embeddings import remember, view_key
from mapcap.tasks.zeroshot import description_classifier, prediction_table, probabilities, text_classifier


@frozen_config
class ClassifyConfig:
    model: ModelSpec  # resolved model (name, pretrained, device, precision)
    classes: tuple[str, ...]  # candidate class names, in index order
    templates: tuple[str, ...]  # prompt templates, each with one '{}'
    top_k: int = 5  # labels and probabilities kept per prediction
    batch_size: int = 64  # images per forward pass (halved on CUDA out-of-memory)
    bank: ConceptBank | None = None  # descriptors covering the classes: adds rows with template 'descriptors'
    limits: DecodeLimits = omit_default(DEFAULT_LIMITS)  # per-image bounds: raising them redoes the failed images



class ClassifyParams(Section):
    """zero-shot classification"""

    templates: str | list[str] = Field("simple", description="template set (openai, simple, compare) or a list of "
                                                             "templates with one '{}' each")
    top_k: int = Field(5, ge=1, description="labels and probabilities kept per prediction")
    batch_size: int | None = Field(None, ge=1, description="images per forward pass (default: 256 on a GPU, 64 on "
                                                           "CPU)")
    descriptions: bool = Field(True, description="add description-based rows (template 'descriptors') when the "
                                                 "concept bank covers the dataset's classes")


# version 2: a class name's underscores are spaces in its prompts (templates.fill); ViT tags trained with QuickGELU
@register_stage("classify", ClassifyConfig, reads=(), writes=("images", "predictions"), order=0, version=2,
                summary="zero-shot classification: every template, their ensemble, descriptions "
                        "(always; the other stages read it)",
                settings=ClassifyParams, old_names={"templates": "templates", "top_k": "top_k", "batch_size": "batch_size"})
class Classify(Stage):
    """Every image decoded once, classified against every template row at once; when the chain's relevancy
    stage is pending with Chefer maps, the same forward pass computes them (tasks/relevancy/fused.py)."""

    def plan(self, params: Any, facts: Facts) -> ClassifyConfig:
        s, plan = params.classify, facts.plan
        return ClassifyConfig(model=plan.model, classes=plan.classes, templates=plan.templates, top_k=s.top_k,
                              batch_size=s.batch_size or default_batch(plan.model.device, 64, 256),
                              bank=facts.bank if s.descriptions else None,
                              limits=params.limits)

    @on_device  # one shard at a time on the device, decode included (tasks/device_turn.py)
    def compute(self, cfg: ClassifyConfig, ctx: StageContext) -> dict:
        lm = load_model(cfg.model)
        classifier = text_classifier(lm, cfg.classes, cfg.templates)  # (T + 1, C, D)
        descriptions = description_classifier(lm, cfg.bank) if cfg.bank else None
        images, good = [], []
        with ctx.phase("decode", cfg.model.device):
            decoded = ctx.decode_items(lm.preprocess, cfg.model.device)
        for item, image_id, size in decoded:
            images.append({"run_id": ctx.run_id, "image_id": image_id, "path": item.path, "label": item.label,
                           "shard": ctx.shard, "width": size[0] if size else None,
                           "height": size[1] if size else None,
                           "content_id": ctx.pictures.content_ids.get(item.path)})
            if size is not None:
                good.append((image_id, item.label, item.path))
        starts = fused_starts(cfg, ctx.shared.pending.get("relevancy"))
        preds = []
        for b in range(0, len(good), cfg.batch_size):
            chunk = good[b:b + cfg.batch_size]
            with ctx.phase("pixels"):  # PIL-decoded images preprocessed (the GPU path's are ready)
                pix = ctx.pixels_of(lm.preprocess, {iid: path for iid, _, path in chunk})
                pixels = torch.stack([pix[iid] for iid, _, _ in chunk])  # (B, 3, H, W)
                if pixels.device.type == "cpu" and cfg.model.device.startswith("cuda"):
                    pixels = pixels.pin_memory()  # page-locked: the copy to the GPU runs asynchronously
            with ctx.phase("model", cfg.model.device):
                probs = self._explain(cfg, ctx, lm, chunk, pixels, classifier, descriptions, starts) if starts \
                    else None
                if probs is None:  # the plain path (its batches halve on CUDA out-of-memory)
                    raw = in_batches(len(chunk), len(chunk),
                                     lambda i, j: encode_pixels(lm, pixels[i:j], False))  # (B, D)
                    with torch.no_grad():
                        probs = probabilities(lm, F.normalize(raw, dim=-1), classifier, descriptions)  # (R, B, C)
                    remember_embeddings(ctx, cfg.model, [c[0] for c in chunk], raw)
            with ctx.phase("rows"):
                preds.append(prediction_table(ctx.run_id, ctx.shard, [c[0] for c in chunk], [c[1] for c in chunk],
                                              cfg.classes, cfg.templates, probs, cfg.top_k))
            ctx.progress(b + len(chunk), len(good), "images")
        return {"images": images, "predictions": pa.concat_tables(preds) if preds else schema_for("predictions")
                .empty_table()}

    @staticmethod
    def _explain(cfg, ctx, lm, chunk, pixels, classifier, descriptions, starts) -> torch.Tensor | None:
        """Probabilities (R, B, C) from the pass that also computes the pending relevancy stage's Chefer maps
        (kept in ctx.shared.maps for it); None when the batch does not fit on the device (the plain path then runs)."""
        try:
            out = classify_and_explain(lm, pixels, classifier, [s for _, s in starts], descriptions)
        except torch.cuda.OutOfMemoryError:
            ctx.log.warning("CUDA out of memory classifying and explaining %d images in one pass: separate passes",
                            len(chunk))
            torch.cuda.empty_cache()
            return None
        pred = out.pred.tolist()
        remember_embeddings(ctx, cfg.model, [c[0] for c in chunk], out.embedding)
        for key, s in starts:  # keyed (image, class): a right prediction's label map is this map too
            for k, (iid, _, _) in enumerate(chunk):
                ctx.shared.maps[MapKey(*key, iid, cfg.classes[pred[k]])] = out.maps[s][k]
        return out.probs


def remember_embeddings(ctx: StageContext, model: ModelSpec, image_ids: list[str], emb: torch.Tensor) -> None:
    """Keep the raw whole-image embeddings (B, D) of this pass for the shard's later stages (concepts and
    captions embed whole images too: tasks/pipeline/embeddings.py)."""
    remember(ctx, [view_key(model, iid) for iid in image_ids], emb)


def fused_starts(cfg: ClassifyConfig, rel) -> list[tuple[tuple[str, int | None], int]]:
    """[(relevancy variant, its start block)] of the pending relevancy stage's Chefer variants that the
    classification pass can compute: same model, classes and templates, a ViT with recordable attention."""
    if rel is None or (rel.model, rel.classes, rel.templates) != (cfg.model, cfg.classes, cfg.templates):
        return []
    visual = load_model(cfg.model).model.visual
    try:
        attention_blocks(visual, "image")
    except UnsupportedArchitecture:
        return []
    if tower_of(visual).pool != "token":  # a CoCa's maps explain its pool's query: relevancy.py computes them
        return []
    return [((m, s), resolve_start(m, cfg.model.name, s)) for m, s in rel.variants if m == "chefer"]
