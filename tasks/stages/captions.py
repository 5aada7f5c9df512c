"""Stage `captions`: caption the top regions of the primary map and the whole image; CLIPScore each.

Each captioner writes its own file per shard (`shard-<n>-<captioner>`), so captioners can be compared and a
rerun with another captioner reuses the stored maps and regions.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from pydantic import Field

from mapcap.storage.columns import table_of
from mapcap.storage.manifest import annotations
from mapcap.tasks.captioners.base import CaptionerConfig, check_captioner, crop_region, make_captioner, square_box
from mapcap.tasks.captioners.general_bank import GENERAL
from mapcap.tasks.captioners.retrieval import phrase_bank
from mapcap.tasks.decode import Geometry, normalise, resize_crop
from mapcap.tasks.device_turn import on_device
from mapcap.tasks.frames import device_frame_parts, frames, scale_box
from mapcap.tasks.metrics.clipscore import clipscore, ref_clipscore
from mapcap.tasks.models import LoadedModel, ModelSpec, encode_pixels, load_model
from mapcap.tasks.pipeline.base import Section, Stage, register_stage
from mapcap.tasks.provenance import frozen_config
from mapcap.tasks.roi_crops import roi_crops
from mapcap.tasks.pipeline.plan import default_batch
from mapcap.tasks.pipeline.context import StageContext, draft_size, tensor_decode
from mapcap.tasks.pipeline.facts import Facts
from mapcap.tasks.pipeline.embeddings import embed_views, view_key
from mapcap.storage.writer import shard_name


@frozen_config
class CaptionsConfig:
    model: ModelSpec  # the run's CLIP (retrieval captions and CLIPScore use it)
    captioner: CaptionerConfig = CaptionerConfig()  # which captioner, and its settings
    method: str = "chefer"  # the primary relevancy method: whose regions to caption
    start_layer: int | None = -1  # ... and its start layer
    top_k: int = 1  # regions per map to caption
    context: float = 1.0  # crop context around a region (see captioners.base.crop_region)
    dataset: str = ""  # for reference captions (RefCLIPScore) when its manifest has a `caption` column


class CaptionsParams(Section):
    """captioning regions"""

    captioner: str = Field("retrieval", description="captioner for regions and whole images: retrieval (phrase "
                                                    "bank by CLIP similarity), clipcap, hf, coca (a CoCa "
                                                    "model's own text decoder)")
    path: str | None = Field(None, description="clipcap: a ClipCap .pt checkpoint or save_clipcap directory (toy "
                                               "model: the shipped one); hf: a local image-to-text model dir")
    tokenizer: str | None = Field(None, description="clipcap with an authors' .pt checkpoint: a local GPT-2 "
                                                    "tokenizer directory")
    phrase_bank: str | None = Field(None, description="retrieval: JSON {class: [phrase, ...]}, or 'general'; "
                                                      "empty: the toy model's own bank, for other CLIPs the general "
                                                      "one (ImageNet's objects, stuff, the run's classes)")
    phrases: int = Field(1, ge=1, description="retrieval: best phrases joined into one caption")
    beams: int = Field(1, ge=1, description="generative captioners: 1 = greedy, more = beam search")
    max_tokens: int = Field(20, ge=1, description="generative captioners: longest caption in tokens")
    prompt: str | None = Field(None, description="hf: text prompt for conditional models (BLIP: 'a picture of')")
    top_k: int = Field(1, ge=1, description="regions per map to caption")
    context: float = Field(1.0, ge=0, description="crop context around a region, × its size")
    batch_size: int | None = Field(None, ge=1, description="crops per captioning call (default on a GPU: 512, 256 "
                                                           "for hf models; 32 on CPU). One H200 captioned 458/s "
                                                           "with GPT-2-small ClipCap in batches of 64, 3,663/s in 512")


def captioner_config(p: Any, device: str, model_name: str = "", classes: tuple[str, ...] = ()) -> CaptionerConfig:
    """The captioner's config; a retrieval captioner left without a bank gets the general one, named as such and
    with the run's classes (so its config, and the captions' hash, say which phrases were used)."""
    c = p.captions
    cfg = CaptionerConfig(name=c.captioner, path=c.path, tokenizer=c.tokenizer, concept_bank=c.phrase_bank,
                          phrases=c.phrases, beams=c.beams, max_tokens=c.max_tokens, prompt=c.prompt,
                          batch_size=c.batch_size or default_batch(device, 32, 256 if c.captioner == "hf" else 512))
    if c.captioner == "retrieval" and phrase_bank(cfg, model_name) == GENERAL:
        cfg = dataclasses.replace(cfg, concept_bank=GENERAL, classes=tuple(classes))
    return cfg


@functools.lru_cache(maxsize=8)
def references(dataset: str) -> dict[str, list[str]]:
    """{absolute image path: [reference caption]} from the dataset's manifest (read once per process)."""
    return {r["path"]: [r["caption"]] for r in annotations(dataset, ("caption",)) if r.get("caption")}


KEYS = ("target", "method", "start_layer", "region_id")  # what a crop's rows say of the region it shows


def device_geometry(lm: LoadedModel, captioner) -> Geometry | None:
    """Crops cut and preprocessed on the GPU (no PIL decode, crop or resize on the CPU) where the shard's images
    are decoded there (context.tensor_decode) and the captioner reads only embeddings."""
    return None if captioner.needs_crops else tensor_decode(lm.preprocess, lm.spec.device)


def device_crops(ctx: StageContext, lm: LoadedModel, geo: Geometry, chunk: list[tuple], images: dict[str, dict],
                 context: float, unreadable: set[str]) -> tuple[list[tuple], list[torch.Tensor | None]]:
    """The jobs of `chunk` that can be captioned, and their crops as (3, S, S) pixels on the device: only for
    views the shard has not embedded yet (None for the others). Crops come from the shard's frames
    (ctx.device_frames: each image decoded once per shard, by the classify stage where it ran on the device),
    every crop of frames of one size in one roi_align (tasks/roi_crops.py); an image with a crop narrower than S
    px in its frame is cut from its full image instead (frames.device_frame_parts). An unreadable or changed
    image is a failure row once; its jobs are dropped."""
    todo: dict[str, list[int]] = {}  # image id -> positions in chunk of its views to embed
    for n, (_, iid, _, view) in enumerate(chunk):
        if view not in ctx.shared.views and iid not in unreadable:
            todo.setdefault(iid, []).append(n)
    boxed = {i: [n for n in ns if chunk[n][2] is not None] for i, ns in todo.items()}  # positions of crops
    boxes = {i: [square_box(chunk[n][2], context) for n in ns] for i, ns in boxed.items()}
    sizes = {i: (images[i]["width"], images[i]["height"]) for i in todo}
    crops, seen = {}, set()  # position in chunk -> (3, S, S) resized, in 0..255
    for pics in device_frame_parts(ctx, lm.spec.device, geo, {i: images[i]["path"] for i in todo}, sizes, boxes):
        seen |= set(pics)  # (3, h, w) uint8 each
        for iid, rgb in pics.items():  # whole images
            crops |= {n: resize_crop(rgb.float(), geo) for n in todo[iid] if chunk[n][2] is None}
        got = [i for i in pics if boxes[i]]
        if got:
            cut = roi_crops([pics[i] for i in got], [sizes[i] for i in got], [boxes[i] for i in got], geo.crop)
            crops |= zip([n for i in got for n in boxed[i]], cut)  # (K, 3, S, S) in input order
    unreadable |= set(todo) - seen
    if crops:  # normalised in one go (per image, five small kernels each)
        crops = dict(zip(crops, normalise(torch.stack(list(crops.values())), geo)))  # (K, 3, S, S)
    keep = [n for n, j in enumerate(chunk) if j[3] in ctx.shared.views or n in crops]
    return [chunk[n] for n in keep], [crops.get(n) for n in keep]


def pil_frames(ctx: StageContext, lm: LoadedModel, images: dict[str, dict], ids: list[str], regions: list[dict],
               context: float) -> dict[str, Image.Image]:
    """{image id: frame to cut its crops from} (tasks/frames.py): at the coarsest scale that keeps every crop at
    twice the preprocess's resize, often the frame the classify stage decoded."""
    boxes: dict[str, list] = {}
    for r in regions:
        boxes.setdefault(r["image_id"], []).append(square_box(r["bbox"], context))
    return frames(ctx, {i: images[i]["path"] for i in ids}, {i: (images[i]["width"], images[i]["height"]) for i in ids},
                  boxes, draft_size(lm.preprocess))


# version 2: RefCLIPScore puts "A photo depicts " on candidate and references and leaves the text side unclamped
# version 3: crops cut from frames decoded at a reduced scale where the crops allow (tasks/frames.py)
@register_stage("captions", CaptionsConfig, reads=("images", "regions"), writes=("captions",), order=4, version=3,
                summary="caption the top regions and the whole image (retrieval, clipcap, hf, coca), with CLIPScore",
                settings=CaptionsParams,
                old_names={"captioner": "captioner", "captioner_path": "path", "captioner_tokenizer": "tokenizer",
                           "caption_beams": "beams", "caption_max_tokens": "max_tokens", "caption_prompt": "prompt",
                           "concept_bank": "phrase_bank", "caption_top_k": "top_k", "caption_context": "context"})
class Captions(Stage):
    """Whole images first, then the top regions of the primary map, in captioner batches."""

    def file_name(self, cfg: CaptionsConfig, shard: int | None) -> str:
        return f"{shard_name(shard)}-{cfg.captioner.name}"

    def plan(self, params: Any, facts: Facts) -> CaptionsConfig:
        plan = facts.plan
        cap = captioner_config(params, plan.model.device, plan.model.name, plan.classes)
        check_captioner(cap, plan.model.name)  # StageUnavailable if it lacks what it needs: skipped, or fails
        return CaptionsConfig(model=plan.model, captioner=cap, method=facts.primary[0], start_layer=facts.primary[1],
                              top_k=params.captions.top_k, context=params.captions.context, dataset=plan.dataset)

    @on_device  # one shard at a time on the device, for the whole stage (tasks/device_turn.py)
    def compute(self, cfg: CaptionsConfig, ctx: StageContext) -> dict:
        lm = load_model(cfg.model)
        with ctx.phase("load", lm.spec.device):  # once per process: the captioner's model, a bank's phrase embeddings
            captioner = make_captioner(cfg.captioner, lm)
        images = {r["image_id"]: r for r in ctx.table("images")}
        regions = [r for r in ctx.table("regions") if r["method"] == cfg.method
                   and r["start_layer"] == cfg.start_layer and r["region_id"] < cfg.top_k]
        refs = references(cfg.dataset)
        ids = sorted({r["image_id"] for r in regions})
        geo = device_geometry(lm, captioner)  # None: PIL crops; else crops cut and preprocessed on the GPU
        if geo is None:  # each image decoded once, as coarse as its crops allow (tasks/frames.py)
            decoded = pil_frames(ctx, lm, images, ids, regions, cfg.context)
            ids = [i for i in ids if i in decoded]
        # (row keys, image id, bbox or None for the whole image, view); crops are cut batch by batch
        jobs = [([{"target": "image", "method": None, "start_layer": None, "region_id": -1}], iid, None,
                 view_key(cfg.model, iid)) for iid in ids]
        # a right prediction's pred and label targets share one map, hence the same regions: captioned once
        same: dict[tuple, list[dict]] = {}
        usable = set(ids)
        for r in regions:
            if r["image_id"] in usable:
                same.setdefault((r["image_id"], r["class_name"], r["region_id"], tuple(r["bbox"])), []).append(r)
        jobs += [([{k: r[k] for k in KEYS} for r in rs], iid, bbox,
                  view_key(cfg.model, iid, bbox, cfg.context)) for (iid, _, _, bbox), rs in same.items()]

        def crop(job: tuple) -> Image.Image:
            _, iid, bbox, _ = job
            return decoded[iid] if bbox is None else crop_region(decoded[iid], scale_box(bbox, decoded[iid]),
                                                                 cfg.context)

        def encode(crops: list) -> torch.Tensor:  # (n, D) raw rows of PIL crops (preprocessed in the threads) or pixels
            pixels = crops if geo is not None else ctx.map(lambda c: lm.preprocess(c.convert("RGB")), crops)
            return encode_pixels(lm, torch.stack(pixels), False)

        cols: dict[str, list] = {k: [] for k in ("image_id", *KEYS, "text", "clipscore", "ref_clipscore")}
        step = cfg.captioner.batch_size
        unreadable: set[str] = set()
        for b in range(0, len(jobs), step):
            chunk = jobs[b:b + step]
            with ctx.phase("crops", lm.spec.device):
                if geo is None:
                    crops = ctx.map(crop, chunk)
                else:
                    chunk, crops = device_crops(ctx, lm, geo, chunk, images, cfg.context, unreadable)
            if not chunk:
                continue
            # (B, D): once, for the captioner and CLIPScore; views the shard's classify or concepts stage embedded
            # already are not encoded again
            with ctx.phase("embed", lm.spec.device):
                raw = embed_views(ctx, [v for *_, v in chunk], crops, encode, raw=True)
                emb = F.normalize(raw, dim=-1)  # unit rows
            with ctx.phase("caption", lm.spec.device):
                texts = captioner.caption_embedded(crops, raw)
            with ctx.phase("score", lm.spec.device):
                scores = clipscore(lm, crops, texts, image_emb=emb)  # (B,)
                with_ref = [j for j, (_, iid, _, _) in enumerate(chunk) if images[iid]["path"] in refs]
                ref_scores = dict(zip(with_ref, ref_clipscore(
                    lm, [crops[j] for j in with_ref], [texts[j] for j in with_ref],
                    [refs[images[chunk[j][1]]["path"]] for j in with_ref], scores=scores[with_ref]).tolist())) \
                    if with_ref else {}
                scores = scores.float().cpu().numpy()  # (B,)
            each = [len(keys) for keys, *_ in chunk]  # rows per crop: a shared region's targets
            cols["image_id"] += [iid for (_, iid, _, _), n in zip(chunk, each) for _ in range(n)]
            for k in KEYS:
                cols[k] += [key[k] for keys, *_ in chunk for key in keys]
            cols["text"] += [t for t, n in zip(texts, each) for _ in range(n)]
            cols["clipscore"].append(np.repeat(scores, each))
            cols["ref_clipscore"] += [ref_scores.get(j) for j, n in enumerate(each) for _ in range(n)]
            ctx.progress(b + step, len(jobs), "crops")
        n = len(cols["image_id"])
        cols["clipscore"] = np.concatenate(cols["clipscore"]) if cols["clipscore"] else np.zeros(0, np.float32)
        return {"captions": table_of("captions", n, {"run_id": ctx.run_id, "shard": ctx.shard,
                                                     "captioner": cfg.captioner.name, **cols})}
