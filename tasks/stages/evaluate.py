"""Stage `evaluate` (per run): the `evaluations` table: each map variant's faithfulness and ground-truth scores,
the means of the per-image `faithfulness` rows (tasks/stages/faithfulness.py) over the run's sample.

Every metric is a per-image value, so the run's value is their mean and `n` the images it covers: perturbation
AUCs over the sample, pointing over its correctly classified images with an object mask, discrimination over its
two-object images (each image's value being the mean of its two classes' mass shares).
"""
from __future__ import annotations

from dataclasses import dataclass

from mapcap.tasks.pipeline.base import Stage, register_stage
from mapcap.tasks.pipeline.context import StageContext

METRICS = ("positive_auc", "negative_auc", "deletion_auc", "insertion_auc", "pointing_grid", "pointing_pixel",
           "discrimination")  # row order within a variant


@dataclass(frozen=True)
class EvaluateConfig:
    variants: tuple[tuple[str, int | None], ...] = ()  # (method, start layer) in row order (the faithfulness stage's)


# version 3: the means of the per-image `faithfulness` rows (computed per shard, reusable by content)
@register_stage("evaluate", EvaluateConfig, scope="run", reads=("faithfulness",), writes=("evaluations",),
                order=10, version=3,
                summary="faithfulness (perturbation AUCs), pointing game and class discrimination of every map "
                        "method, averaged over the run's sample")
class Evaluate(Stage):
    """One row per (variant, metric): the mean over the images that have it."""

    def file_name(self, cfg: EvaluateConfig, shard: int | None) -> str:
        return "evaluations"

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
