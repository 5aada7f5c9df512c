"""Stage `relevancy`: maps for the predicted and the true class of every classified image, per method."""
from __future__ import annotations

from typing import Any

import pyarrow as pa
import torch
from pydantic import Field

from mapcap.storage.columns import list_column, table_of
from mapcap.tasks.device_turn import on_device
from mapcap.tasks.models import ModelSpec, load_model
from mapcap.tasks.relevancy.methods import map_stats, relevancy_maps
from mapcap.tasks.pipeline.base import Section, Stage, register_stage
from mapcap.tasks.provenance import frozen_config
from mapcap.tasks.pipeline.plan import default_batch
from mapcap.tasks.pipeline.context import StageContext
from mapcap.tasks.pipeline.facts import Facts
from mapcap.tasks.pipeline.shared import MapKey
from mapcap.tasks.zeroshot import ENSEMBLE, text_classifier

TARGETS = ("pred", "label")


@frozen_config
class RelevancyConfig:
    model: ModelSpec  # the run's model
    classes: tuple[str, ...]  # class names, as classified
    templates: tuple[str, ...]  # the class text is the ensemble of these templates
    variants: tuple[tuple[str, int | None], ...] = (("chefer", -1),)  # (method, start block); first = primary
    batch_size: int = 32  # images per backward pass (halved on CUDA out-of-memory)


class RelevancyParams(Section):
    """relevancy maps"""

    methods: list[str] | None = Field(None, min_length=1,
                                      description="relevancy methods (chefer, legrad, grad_eclip, gradcam, gradient, "
                                                  "random); the first is the primary one that regions' captions, "
                                                  "concepts and summaries use. Empty: the best the model's image "
                                                  "tower supports: chefer for open_clip ViTs, legrad for timm ViTs "
                                                  "(EVA02, SigLIP), gradcam for ResNet and ConvNeXt; evaluate "
                                                  "scores every method the tower supports anyway")
    start_layers: list[int] | None = Field(None, description="chefer's first block(s), from 0 (all blocks) to "
                                                             "depth-1, or -1 for the last block; empty: the "
                                                             "model's default (last block; all for the toy model)")
    batch_size: int | None = Field(None, ge=1, description="(image, class) pairs per backward pass (default: 128 on "
                                                           "a GPU, 64 on CPU)")


def relevancy_rows(run_id: str, shard: int, image_ids: list[str], targets: list[str], classes: list[str],
                   method: str, start_layer: int | None, maps: torch.Tensor) -> pa.Table:
    """The `relevancy` rows of (K, g, g) maps as Arrow columns straight from the tensors (no Python float per
    cell: a dict per row with 196 of them cost more than the maps on a GPU)."""
    stats = {k: v.cpu().numpy() for k, v in map_stats(maps).items()}
    g = maps.shape[-1]
    return table_of("relevancy", len(image_ids), {
        "run_id": run_id, "image_id": image_ids, "shard": shard, "target": targets, "class_name": classes,
        "method": method, "start_layer": start_layer, "grid": g,
        "map": list_column(maps.detach().flatten(1).float().cpu().numpy()),  # (K, g*g)
        "peak": stats["peak"], "entropy": stats["entropy"], "top10_mass": stats["top10_mass"]})


@register_stage("relevancy", RelevancyConfig, reads=("predictions", "images"), writes=("relevancy",), order=1,
                summary="relevancy maps (chefer, legrad, grad_eclip, gradcam, gradient, random) for the predicted "
                        "and the true class", settings=RelevancyParams,
                old_names={"relevancy_methods": "methods", "start_layers": "start_layers", "batch_size": "batch_size"})
class Relevancy(Stage):
    """One map per distinct (image, class) and variant; a non-finite map is a failure row."""

    def plan(self, params: Any, facts: Facts) -> RelevancyConfig:
        plan = facts.plan
        return RelevancyConfig(model=plan.model, classes=plan.classes, templates=plan.templates,
                               variants=facts.variants, batch_size=params.relevancy.batch_size
                               or default_batch(plan.model.device, 64, 128))

    @on_device  # one shard at a time on the device, for the whole stage (tasks/device_turn.py)
    def compute(self, cfg: RelevancyConfig, ctx: StageContext) -> dict:
        ens = {r["image_id"]: r for r in ctx.table("predictions") if r["template"] == ENSEMBLE}
        paths = {r["image_id"]: r["path"] for r in ctx.table("images")}
        lm = load_model(cfg.model)
        text = text_classifier(lm, cfg.classes, cfg.templates)[-1]  # (C, D) ensemble embedding per class
        ids = sorted(ens)
        pixels = ctx.pixels_of(lm.preprocess, {i: paths[i] for i in ids})
        # one map per distinct (image, class): pred and label share it when the prediction is right
        pairs = sorted({(i, ens[i][t]) for i in ids if i in pixels for t in TARGETS})
        if not pairs:
            return {"relevancy": []}
        rows: list[pa.Table] = []
        for method, start in cfg.variants:
            # maps the classification pass computed already (one forward for both, tasks/relevancy/fused.py)
            found = {p: ctx.shared.maps[key] for p in pairs if (key := MapKey(method, start, *p)) in ctx.shared.maps}
            todo = [p for p in pairs if p not in found]
            for b in range(0, len(todo), cfg.batch_size):
                chunk = todo[b:b + cfg.batch_size]
                pix = torch.stack([pixels[i] for i, _ in chunk])  # (B, 3, H, W)
                txt = text[[cfg.classes.index(c) for _, c in chunk]]  # (B, D)
                with ctx.phase("maps", cfg.model.device):
                    found.update(zip(chunk, relevancy_maps(lm, method, pix, txt, start, cfg.batch_size)))  # (g, g)
                ctx.progress(b + len(chunk), len(todo), f"{method} maps")
            stacked = torch.stack([found[p] for p in pairs])  # (P, g, g), checked and written from one stack
            at: dict[tuple[str, str], int] = {}  # pair -> its finite map's row in `stacked`
            for n, (pair, ok) in enumerate(zip(pairs, torch.isfinite(stacked.flatten(1)).all(1).tolist())):
                if ok:
                    at[pair] = n
                else:
                    ctx.fail(pair[0], paths[pair[0]], f"the {method} map for class {pair[1]!r} has NaN/inf values",
                             "NonFiniteMap")
            keys = [(i, t) for i in ids for t in TARGETS if (i, ens[i][t]) in at]
            if keys:
                maps = stacked[[at[(i, ens[i][t])] for i, t in keys]]  # (K, g, g): a right prediction's twice
                rows.append(relevancy_rows(ctx.run_id, ctx.shard, [i for i, _ in keys], [t for _, t in keys],
                                           [ens[i][t] for i, t in keys], method, start, maps))
        return {"relevancy": pa.concat_tables(rows) if rows else []}
