"""The `reprocess` flow: redo (part of) a stored run with the parameters it was started with.

What a person fills in the Prefect UI: the run, optionally the classes to redo, the stages, the captioner, and
`force`. Everything else comes from the run's `runs` row, so the rerun resumes the same run folder: shards
that are complete and unaffected are skipped, changed stages redo only themselves and what depends on them.
"""
from __future__ import annotations

from typing import Literal

from prefect import flow
from pydantic import BaseModel, ConfigDict, Field

from mapcap.flows.explain import explain
from mapcap.tasks.pipeline.params import ExplainParams, StageName
from mapcap.tasks.pipeline.run_record import stored_params_task


class ReprocessParams(BaseModel):
    """Which stored run to redo, and what to change (Prefect renders its UI form from this model)."""

    model_config = ConfigDict(extra="forbid")

    run_name: str = Field(..., description="the run to reprocess (its run id, as `mapcap runs` lists it)")
    out: str = Field("./mapcap-results", description="results root holding that run")
    classes: list[str] | None = Field(None, description="redo only the shards holding images of these classes; "
                                                        "empty: every shard that is not complete (all with force)")
    stages: list[StageName] | None = Field(None, description="stages to run; empty: the run's own")  # type: ignore
    captioner: Literal["retrieval", "clipcap", "hf"] | None = Field(None, description="another captioner; its "
                                                                                      "captions sit beside the old")
    captioner_path: str | None = Field(None, description="checkpoint or model directory for that captioner")
    force: bool = Field(False, description="redo shards even when they are complete")


@flow(name="reprocess", flow_run_name="reprocess-{params.run_name}", validate_parameters=True)
def reprocess(params: ReprocessParams) -> dict:
    """Rerun a stored run with its own parameters and the changes asked for (the explain flow as a subflow)."""
    stored = stored_params_task(params.out, params.run_name)
    update = {"out": params.out, "run_name": params.run_name, "force": params.force,
              "redo_classes": params.classes or None}
    if params.stages:
        update["stages"] = params.stages
    base = ExplainParams.model_validate(stored).model_dump()  # old flat names move into their sections
    if params.captioner:
        base["captions"]["captioner"] = params.captioner
    if params.captioner_path:
        base["captions"]["path"] = params.captioner_path
    return explain(ExplainParams.model_validate({**base, **update}))
