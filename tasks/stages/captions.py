"""Stage `captions`: caption the top regions of the primary map and the whole image; CLIPScore each.

Each captioner writes its own file per shard (`shard-<n>-<captioner>`), so captioners can be compared and a
rerun with another captioner reuses the stored maps and regions.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from PIL import Image

from mapcap.storage.manifest import annotations
from mapcap.tasks.captioners.base import CaptionerConfig, crop_region, make_captioner
from mapcap.tasks.metrics.clipscore import clipscore, ref_clipscore
from mapcap.tasks.models import ModelSpec, encode_pixels, load_model
from mapcap.tasks.stages.base import Stage, register_stage
from mapcap.tasks.stages.context import StageContext
from mapcap.tasks.stages.embeddings import embed_views, view_key
from mapcap.storage.writer import shard_name


@dataclass(frozen=True)
class CaptionsConfig:
    model: ModelSpec  # the run's CLIP (retrieval captions and CLIPScore use it)
    captioner: CaptionerConfig = CaptionerConfig()  # which captioner, and its settings
    method: str = "chefer"  # the primary relevancy method: whose regions to caption
    start_layer: int | None = -1  # ... and its start layer
    top_k: int = 1  # regions per map to caption
    context: float = 1.0  # crop context around a region (see captioners.base.crop_region)
    dataset: str = ""  # for reference captions (RefCLIPScore) when its manifest has a `caption` column


@functools.lru_cache(maxsize=8)
def references(dataset: str) -> dict[str, list[str]]:
    """{absolute image path: [reference caption]} from the dataset's manifest (read once per process)."""
    return {r["path"]: [r["caption"]] for r in annotations(dataset, ("caption",)) if r.get("caption")}


# version 2: RefCLIPScore puts "A photo depicts " on candidate and references and leaves the text side unclamped
@register_stage("captions", CaptionsConfig, reads=("images", "regions"), writes=("captions",), order=4, version=2,
                summary="caption the top regions and the whole image (retrieval, clipcap, hf), with CLIPScore")
class Captions(Stage):
    """Whole images first, then the top regions of the primary map, in captioner batches."""

    def file_name(self, cfg: CaptionsConfig, shard: int | None) -> str:
        return f"{shard_name(shard)}-{cfg.captioner.name}"

    def compute(self, cfg: CaptionsConfig, ctx: StageContext) -> dict:
        lm = load_model(cfg.model)
        captioner = make_captioner(cfg.captioner, lm)
        images = {r["image_id"]: r for r in ctx.table("images")}
        regions = [r for r in ctx.table("regions") if r["method"] == cfg.method
                   and r["start_layer"] == cfg.start_layer and r["region_id"] < cfg.top_k]
        refs = references(cfg.dataset)
        decoded = ctx.images({i: images[i]["path"] for i in sorted({r["image_id"] for r in regions})})
        # (row keys, image id, bbox or None for the whole image, view); crops are cut batch by batch
        jobs = [([{"target": "image", "method": None, "start_layer": None, "region_id": -1}], iid, None,
                 view_key(cfg.model, iid)) for iid in decoded]
        # a right prediction's pred and label targets share one map, hence the same regions: captioned once
        same: dict[tuple, list[dict]] = {}
        for r in regions:
            if r["image_id"] in decoded:
                same.setdefault((r["image_id"], r["class_name"], r["region_id"], tuple(r["bbox"])), []).append(r)
        jobs += [([{k: r[k] for k in ("target", "method", "start_layer", "region_id")} for r in rs], iid, bbox,
                  view_key(cfg.model, iid, bbox, cfg.context)) for (iid, _, _, bbox), rs in same.items()]

        def crop(job: tuple) -> Image.Image:
            _, iid, bbox, _ = job
            return decoded[iid] if bbox is None else crop_region(decoded[iid], bbox, cfg.context)

        def encode(crops: list[Image.Image]) -> torch.Tensor:  # (n, D) raw rows, preprocessed in the threads
            return encode_pixels(lm, torch.stack(ctx.map(lambda c: lm.preprocess(c.convert("RGB")), crops)), False)

        rows = []
        step = cfg.captioner.batch_size
        for b in range(0, len(jobs), step):
            chunk = jobs[b:b + step]
            crops = ctx.map(crop, chunk)
            # (B, D): once, for the captioner and CLIPScore; views the shard's classify or concepts stage embedded
            # already are not encoded again
            raw = embed_views(ctx, [v for *_, v in chunk], crops, encode, raw=True)
            emb = F.normalize(raw, dim=-1)  # unit rows
            texts = captioner.caption_embedded(crops, raw)
            scores = clipscore(lm, crops, texts, image_emb=emb)  # (B,)
            with_ref = [j for j, (_, iid, _, _) in enumerate(chunk) if images[iid]["path"] in refs]
            ref_scores = dict(zip(with_ref, ref_clipscore(
                lm, [crops[j] for j in with_ref], [texts[j] for j in with_ref],
                [refs[images[chunk[j][1]]["path"]] for j in with_ref], scores=scores[with_ref]).tolist())) \
                if with_ref else {}
            scores = scores.tolist()
            for j, ((keys, iid, _, _), text, score) in enumerate(zip(chunk, texts, scores)):
                rows += [{"run_id": ctx.run_id, "image_id": iid, "shard": ctx.shard, **key,
                          "captioner": cfg.captioner.name, "text": text, "clipscore": score,
                          "ref_clipscore": ref_scores.get(j)} for key in keys]
        return {"captions": rows}
