"""Planning a run: resolve the dataset, model and templates, cut deterministic shards, name the run."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from mapcap.storage.writer import read_run
from mapcap.tasks.data import Item, read_dataset
from mapcap.tasks.models import ModelSpec, load_model, resolve_spec
from mapcap.tasks.names import check_run_name
from mapcap.tasks.plugins import named_dataset, preset_for_model
from mapcap.tasks.provenance import config_hash
from mapcap.tasks.pipeline.sharding import SHARDS_IN_FLIGHT, hash_shards, resumed_shard_count, shard_count
from mapcap.tasks.templates import fill, id_like, resolve_templates

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunPlan:
    run_id: str  # names the run's folder in every table
    dataset: str  # resolved dataset path
    classes: tuple[str, ...]
    templates: tuple[str, ...]
    model: ModelSpec
    shards: tuple[tuple[Item, ...], ...]  # shard i holds these items
    skipped: tuple[tuple[str, int], ...] = ()  # (why, how many) dataset entries discovery left out on purpose

    @property
    def n_images(self) -> int:
        return sum(len(s) for s in self.shards)


def default_shard_size(device: str) -> int:
    """Images per shard when the user sets none: enough that Prefect's per-task cost (a few hundred ms with a
    local server) stays a few per cent of a shard's work on the device."""
    return 4096 if device.startswith("cuda") else 1024


def default_batch(device: str, cpu: int, gpu: int) -> int:
    """A batch size the user left unset: small on CPU (no gain from more), large on a GPU (a batch of 64 leaves an
    H200 mostly idle: GPT-2-small captions run at 458/s in batches of 64, 3,663/s in batches of 512)."""
    return gpu if device.startswith("cuda") else cpu


def make_run_id(run_name: str | None, params_hash: str) -> str:
    """The user's run name as typed (refused when unsafe, never rewritten: tasks/names.py), or a timestamped id;
    the same name resumes the same run."""
    if run_name:
        return check_run_name(run_name)
    return f"{datetime.now(timezone.utc):%Y%m%d-%H%M%S}-{params_hash[:6]}"


def model_notes(model_name: str, classes: tuple[str, ...] | list[str]) -> list[str]:
    """A warning when the model is a narrow preset (the toy CLIP knows only its eight shapes) and the dataset has
    classes it was never trained on: every prediction, map and caption of the run is then noise."""
    pre = preset_for_model(model_name)
    unknown = [c for c in classes if pre is not None and pre.classes is not None and c not in pre.classes]
    if not unknown:
        return []
    return [f"the model {model_name} was trained on {len(pre.classes)} classes only ({', '.join(pre.classes)}) "
            f"and this dataset's {', '.join(unknown[:5])}{' ...' if len(unknown) > 5 else ''} are not among them: its "
            f"predictions, maps and captions mean nothing here; pass a CLIP that knows them (--model ViT-B-16 "
            f"--pretrained laion2b_s34b_b88k, or --pretrained /path/to/checkpoint)"]


RANDOM_WEIGHTS = ("random weights (no pretrained checkpoint): the predictions, maps and captions measure the "
                  "pipeline's cost, not what a trained CLIP sees; pass --pretrained TAG or a checkpoint file")


def result_notes(model_name: str, pretrained: str | None, classes: tuple[str, ...] | list[str]) -> list[str]:
    """What a reader of the results must know first (the run's log, the report's and the explorer's banners):
    random weights, or a narrow model that does not know the classes."""
    random = not pretrained or pretrained == "random"
    return ([RANDOM_WEIGHTS] if random else []) + model_notes(model_name, classes)


def plan_run(dataset: str, class_map: str | None, model: str, pretrained: str, templates: str | list[str],
             shard_size: int | None, device: str, precision: str, run_name: str | None,
             redo_classes: list[str] | None = None, root: str | None = None, compile: bool = False) -> RunPlan:
    """The dataset, model, templates and shards of a run, validated before any shard starts (with the fix).
    A run already under `root` keeps the shard count it was planned with, so its shards stay stable."""
    spec = resolve_spec(model, pretrained, device, precision, compile)
    tpl = resolve_templates(templates)
    # a plugin's named dataset ('toy'), else a path, made absolute: stage configs hold it (its manifest's masks),
    # so `mapcap run data` and a deployment's `/srv/data` must name the same dataset or nothing is reused
    source = named_dataset(dataset) or (dataset if "://" in dataset else str(Path(dataset).expanduser().resolve()))
    ds = read_dataset(source, class_map)
    if len(ds.classes) < 2:
        raise ValueError(f"dataset {source} has {len(ds.classes)} class(es) {list(ds.classes)}; zero-shot "
                         f"classification needs at least two")
    if ids := id_like(ds.classes):
        log.warning("%d of the %d class names of %s are ids, not words (%s): prompts say them as they are ('%s'); "
                    "pass a class map (--class-map FILE.json, {folder or label: class name}) to classify by name",
                    len(ids), len(ds.classes), source, ", ".join(ids[:5]) + (" ..." if len(ids) > 5 else ""),
                    fill(tpl[0], ids[0]))
    unknown = sorted(set(redo_classes or ()) - set(ds.classes))
    if unknown:
        raise ValueError(f"redo_classes {unknown} are not classes of {source}; its classes are {list(ds.classes)}")
    load_model(spec)  # weights that cannot be fetched or loaded stop the run here, not in every shard; this
    # process's shards reuse the model (built once per process)
    shard_size = shard_size or default_shard_size(spec.device)
    run_id = make_run_id(run_name, config_hash(source, spec, tpl, shard_size))
    stored = stored_run_row(root, run_id) if root and run_name else None
    in_flight = SHARDS_IN_FLIGHT if spec.device.startswith("cuda") else 1  # on CPU both shards share the cores
    n_shards = resumed_shard_count(stored, run_id) or shard_count(len(ds.items), shard_size, in_flight)
    shards = tuple(tuple(s) for s in hash_shards(ds.items, n_shards))
    return RunPlan(run_id, source, ds.classes, tpl, spec, shards, ds.skipped)


def stored_run_row(root: str, run_id: str) -> dict | None:
    """The `runs` row of a run already under the root, or None."""
    rows = read_run(root, "runs", run_id).to_pylist()
    return rows[0] if rows else None


def shards_to_force(plan: RunPlan, force: bool, redo_classes: list[str] | None) -> list[bool]:
    """Per shard: redo it even if complete? All with force; with redo_classes, those holding such images."""
    if redo_classes:
        redo = set(redo_classes)
        return [any(item.label in redo for item in shard) for shard in plan.shards]
    return [force] * len(plan.shards)
