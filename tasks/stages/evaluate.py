"""Stage `evaluate` (per run): the `evaluations` table: each map variant's faithfulness and ground-truth scores,
the means of the per-image `faithfulness` rows (tasks/stages/faithfulness.py) over the run's sample.

Every metric is a per-image value, so the run's value is their mean and `n` the images it covers: perturbation
AUCs over the sample, pointing over its correctly classified images with an object mask, discrimination over its
two-object images (each image's value being the mean of its two classes' mass shares).
"""
from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from mapcap.tasks.pipeline.base import Section, Stage, register_stage
from mapcap.tasks.provenance import frozen_config
from mapcap.tasks.pipeline.context import StageContext
from mapcap.tasks.pipeline.facts import Facts

METRICS = ("positive_auc", "negative_auc", "deletion_auc", "insertion_auc", "pointing_grid", "pointing_pixel",
           "discrimination")  # row order within a variant


@frozen_config
class EvaluateConfig:
    variants: tuple[tuple[str, int | None], ...] = ()  # (method, start layer) in row order (the faithfulness stage's)


class EvaluateParams(Section):
    """evaluation of the map methods (the faithfulness and evaluate stages)"""

    images: int | None = Field(None, ge=1, description="about this many classified images get per-image "
                                                       "faithfulness scores (the faithfulness stage; within a factor "
                                                       "√2: a sample fixed by image id, as for concepts) that "
                                                       "evaluate averages; empty: 64, or on CPU fewer for a large "
                                                       "model (each image costs a few hundred forwards per method: "
                                                       "RISE's deletion and insertion take one per map cell)")
    steps: int | None = Field(None, ge=1, description="RISE deletion/insertion steps (each reveals or removes "
                                                      "the next cells in relevance order); empty: one per map "
                                                      "cell on a GPU, 16 on CPU (a ViT-B-16 map has 196 cells)")
    base: Literal["black", "mean"] = Field("black", description="what Chefer's positive/negative perturbation "
                                                                "shows where cells are removed: black (pixels "
                                                                "zeroed before normalisation, as Chefer et al.) "
                                                                "or mean (the dataset's mean colour)")
    deletion: Literal["mean", "black"] = Field("mean", description="RISE deletion substrate: mean (RISE's zeros "
                                                                   "of the normalised input) or black")
    insertion: Literal["blur", "mean"] = Field("blur", description="RISE insertion start image: blur (RISE's "
                                                                   "Gaussian blur, 11 px, sigma 5) or mean")


# version 3: the means of the per-image `faithfulness` rows (computed per shard, reusable by content)
@register_stage("evaluate", EvaluateConfig, scope="run", reads=("faithfulness",), writes=("evaluations",),
                order=10, version=3,
                summary="faithfulness (perturbation AUCs), pointing game and class discrimination of every map "
                        "method, averaged over the run's sample", settings=EvaluateParams,
                old_names={"eval_images": "images"})
class Evaluate(Stage):
    """One row per (variant, metric): the mean over the images that have it."""

    def file_name(self, cfg: EvaluateConfig, shard: int | None) -> str:
        return "evaluations"

    def plan(self, params: Any, facts: Facts) -> EvaluateConfig:
        return EvaluateConfig(variants=facts.all_variants)

    def compute(self, cfg: EvaluateConfig, ctx: StageContext) -> dict:
        values: dict[tuple[str, int | None, str], list[float]] = {}
        for r in ctx.table("faithfulness"):
            values.setdefault((r["method"], r["start_layer"], r["metric"]), []).append(r["value"])
        if not values:
            ctx.log.info("run %s has no faithfulness rows (no classified image in the sample): nothing to "
                         "evaluate", ctx.run_id)
            return {"evaluations": []}
        variants = list(cfg.variants) + sorted({(m, s) for m, s, _ in values} - set(cfg.variants), key=str)
        return {"evaluations": [
            {"run_id": ctx.run_id, "method": m, "start_layer": s, "metric": metric,
             "value": sum(v) / len(v), "n": len(v)}
            for m, s in variants for metric in METRICS if (v := values.get((m, s, metric)))]}
