"""The one parameter model of a run: the run's own fields plus one section per stage that declares settings,
assembled from the stage registry (each stage's file declares its section and the old flat names it replaced).
Prefect renders its UI form from it and the CLI's flags are generated from it (cli/flags.py).

Old flat names (`top_k`, `relevancy_methods`, `caption_beams`, ...) of deployments made before the sections keep
working: they are moved to their section, with a warning naming the new field.
"""
from __future__ import annotations

import logging
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator, model_validator

import mapcap.tasks.stages  # noqa: F401  (the built-in stages register: their sections make up the model)
from mapcap.tasks.limits import DEFAULT_LIMITS, DecodeLimits
from mapcap.tasks.names import check_run_name
from mapcap.tasks.pipeline.base import STAGES, Section, check_stage_list, stage_order

log = logging.getLogger(__name__)
StageName = Literal[tuple(stage_order())]  # type: ignore[valid-type]  # every registered stage, in run order


class RunParams(BaseModel):
    """The run's own fields; ExplainParams adds a section per stage."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    dataset: str = Field("toy", description="ImageFolder directory, manifest (.csv/.parquet with path,label), "
                                            "or 'toy' for the embedded toy shapes dataset")
    class_map: str | None = Field(None, description="optional JSON {folder or label: class name}")
    model: str = Field("toy", description="open_clip model name (e.g. ViT-B-16), or 'toy'")
    pretrained: str = Field("toy", description="open_clip pretrained tag, a local checkpoint path, or 'toy'")
    device: str = Field("auto", description="'auto' (CUDA if present), 'cpu', 'cuda', 'cuda:N'")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field("auto", description="auto: bf16/fp16 on GPU, "
                                                                                   "fp32 on CPU")
    compile: bool = Field(False, description="torch.compile the image tower for passes without relevancy maps "
                                             "(crop embeddings; classification when no Chefer map shares its pass), "
                                             "compiled on its first batch, once per process. One H200 ran ViT-B-16's "
                                             "forward at 6,941 img/s eager, 10,475 compiled (bf16, batch 512); 2 "
                                             "CPU cores 1.1-1.2x. It pays only when the forward passes take longer "
                                             "than the compile: large runs, or a real model on CPU")
    out: str = Field("./mapcap-results", description="results root: local path or fsspec URL (s3://...)")
    run_name: str | None = Field(None, description="run id, used as typed (letters, digits, '-', '_', '.'; at most "
                                                   "100 characters); reusing one resumes that run, skipping "
                                                   "finished work")
    force: bool = Field(False, description="redo work that is already complete")
    redo_classes: list[str] | None = Field(None, description="redo only the shards holding images of these classes "
                                                             "(reprocessing a subset; other shards are reused)")
    stages: list[StageName] | None = Field(  # type: ignore[valid-type]
        None, description="stages to run, e.g. [classify, relevancy, regions]; empty: every stage this run can do "
                          "(a stage missing what it needs, such as a concept bank covering the classes, is skipped "
                          "with the reason in the run's record). A stage listed here must run, or the run fails.")
    shard_size: int | None = Field(None, ge=1, description="images per shard on average (one task, one file per "
                                                           "table and stage; shards are buckets of a hash of the "
                                                           "image path, their count fixed when the run starts); "
                                                           "empty: 4096 on a GPU, 1024 on CPU, so Prefect's "
                                                           "per-task cost stays a small share; on a GPU the count "
                                                           "is rounded up to pairs, the two shards in flight)")
    workers: int | None = Field(None, ge=1, description="threads per shard that decode, crop and segment (empty: "
                                                        "one per CPU core, at most 16)")
    max_pixels: int = Field(DEFAULT_LIMITS.max_pixels, ge=1, description="pixel budget per image (width × height "
                                                                         "its header declares, checked before "
                                                                         "decoding): a larger image is a failures "
                                                                         "row, not a machine out of memory")
    max_file_mb: float = Field(DEFAULT_LIMITS.max_file_mb, gt=0, description="file-size cap per image in MB "
                                                                            "(checked before reading): a larger "
                                                                            "file is a failures row")
    gpus_per_shard: float = Field(0, ge=0, description="on Ray (flows/explain_ray.py): GPUs each shard task asks "
                                                        "for, so Ray places one shard per GPU; 0: no request")
    @field_validator("run_name")
    @classmethod
    def _safe_run_name(cls, name: str | None) -> str | None:
        """Refused at once (before any server or model starts) when it cannot be a run id as typed."""
        return check_run_name(name) if name else None  # empty (a blank form field): no name, a timestamped id

    @field_validator("stages")
    @classmethod
    def _stages_with_their_upstream(cls, stages: list[str] | None) -> list[str] | None:
        return None if stages is None else check_stage_list(stages)

    @model_validator(mode="before")
    @classmethod
    def _flat_names(cls, data: Any) -> Any:
        """Move old flat parameters into their sections (deployments made before the sections keep working)."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        for old in [k for k in data if k in FLAT_NAMES]:
            value = data.pop(old)
            targets = FLAT_NAMES[old]
            log.warning("parameter %r is now %s; the old name still works but will go", old,
                        " and ".join(f"{s}.{f}" for s, f in targets))
            for section, field in targets:
                sec = data.get(section)
                sec = dict(sec) if isinstance(sec, dict) else (sec.model_dump() if isinstance(sec, BaseModel) else {})
                sec.setdefault(field, value)
                data[section] = sec
        return data

    @property
    def limits(self) -> DecodeLimits:
        """What one image file may cost (tasks/limits.py)."""
        return DecodeLimits(self.max_pixels, self.max_file_mb)

    def resolve(self):
        """The run plan and every stage's config, validated before any shard starts (see tasks/pipeline/planning.py)."""
        from mapcap.tasks.pipeline.planning import resolve_run

        return resolve_run(self)


SECTIONS: dict[str, type[Section]] = {n: cls.Settings for n, cls in STAGES.items() if cls.Settings is not None}
SECTIONS = {n: SECTIONS[n] for n in stage_order() if n in SECTIONS}  # in run order
# old flat parameter -> (section, field) or several (a value that fed several stages)
FLAT_NAMES: dict[str, tuple[tuple[str, str], ...]] = {}
for _name in SECTIONS:
    for _old, _field in STAGES.get(_name).old_names.items():
        FLAT_NAMES[_old] = FLAT_NAMES.get(_old, ()) + ((_name, _field),)


def _description(section: type[Section]) -> str:
    return (section.__doc__ or "").strip().splitlines()[0] if section.__doc__ else ""


ExplainParams = create_model(
    "ExplainParams", __base__=RunParams, __module__=__name__,
    __doc__="Parameters of one MapCap run (Prefect renders its UI form from this model; the CLI is built from it).",
    **{name: (model, Field(default_factory=model, description=_description(model)))
       for name, model in SECTIONS.items()})
