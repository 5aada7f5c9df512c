"""Stage `report` (per run): one self-contained HTML file under <root>/reports/<run>.html."""
from __future__ import annotations

from typing import Any

from pydantic import Field

from mapcap.tasks.report.html import build_report, report_path
from mapcap.tasks.pipeline.base import Section, Stage, register_stage
from mapcap.tasks.provenance import frozen_config
from mapcap.tasks.pipeline.context import StageContext
from mapcap.tasks.pipeline.facts import Facts


@frozen_config
class ReportConfig:
    explained: int = 12  # images with overlays and captions (misclassified first)
    sampled: int = 6  # images with top-k probability bars
    method: str = "chefer"  # the primary relevancy method: whose maps and regions the cards show
    start_layer: int | None = None  # ... and its start layer (None: the method's first stored one)


class ReportParams(Section):
    """the HTML report"""

    explained: int = Field(12, ge=0, description="images shown with overlays and captions (misclassified first)")
    sampled: int = Field(6, ge=0, description="images shown with top-k probability bars")


@register_stage("report", ReportConfig, scope="run", reads=("predictions",), order=20,
                uses=("relevancy", "regions", "captions", "concepts", "evaluations", "class_summaries"),
                summary="one HTML report: accuracy, templates, overlays, summaries, trends, concepts",
                settings=ReportParams)
class Report(Stage):
    """Reads the run back through DuckDB (named queries) and writes one HTML file."""

    def file_name(self, cfg: ReportConfig, shard: int | None) -> str:
        return "report"

    def files(self, cfg: ReportConfig, ctx: StageContext) -> list[str]:
        return [report_path(ctx.run_id)]

    def plan(self, params: Any, facts: Facts) -> ReportConfig:
        method, start = facts.primary
        return ReportConfig(explained=params.report.explained, sampled=params.report.sampled, method=method,
                            start_layer=start)

    def compute(self, cfg: ReportConfig, ctx: StageContext) -> dict:
        run_id, doc = build_report(ctx.root, ctx.run_id, cfg.explained, cfg.sampled,
                                   (cfg.method, cfg.start_layer))
        return {"files": {report_path(run_id): doc.encode()}}
