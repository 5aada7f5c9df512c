"""The run's flags as data, so `mapcap run --help` and a typo answer before torch, open_clip and Prefect load.

The flags come from the run's parameter model (tasks/pipeline/params.py), which imports every stage: seconds.
`cli/flag_table.json` holds what argparse needs of each field, with a fingerprint of the files that define the
model (and of the installed plugins). A command line is parsed from the table when the fingerprint matches, and
from the model itself otherwise (a stage edited since, a plugin added: slower, never wrong); that slow start
leaves a table for its fingerprint in the user's cache (~/.cache/mapcap), so the next one is fast again.
`python -m mapcap.cli.flag_table` rewrites the shipped table; tests/cli/test_fast.py checks that it is current.
"""
from __future__ import annotations

import hashlib
import json
import os
import types
import typing
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

HERE = Path(__file__).resolve().parent
TABLE = HERE / "flag_table.json"
TASKS = HERE.parent / "tasks"
# the files the parameter model is made of: its module, the stage framework's base, every built-in stage
SOURCES = ("pipeline/params.py", "pipeline/base.py", "segment.py", "stages/*.py")
# shown by `--help` with these short lines; every field, with its full description, by `--help-all`
COMMON = {
    "dataset": "a folder of class folders, a manifest (.csv/.parquet: path,label), or 'toy'",
    "model": "open_clip model name (ViT-B-16, ViT-B-32, ...), or 'toy'",
    "pretrained": "open_clip tag, a local checkpoint file, or '' for random weights",
    "device": "auto, cpu, cuda or cuda:N",
    "out": "results root: a folder or an fsspec URL (s3://...)",
    "run_name": "names the run; the same name resumes it",
    "stages": "stages to run (classify, relevancy, regions, ...); empty: every stage the run can do",
    "force": "redo finished work",
    "shard_size": "images per shard",
    "classify.templates": "prompt templates: openai, simple, compare, or your own with '{}'",
    "relevancy.methods": "map methods: chefer, legrad, grad_eclip, gradcam, gradient, random",
    "captions.captioner": "retrieval, clipcap, hf or coca",
    "evaluate.images": "images that get faithfulness scores (the costly stage on a CPU)",
}


def fingerprint() -> str:
    """A hash of the model's source files, the installed plugins and MAPCAP_PLUGINS (no import: milliseconds)."""
    h = hashlib.sha256()
    for pattern in SOURCES:
        for path in sorted(TASKS.glob(pattern)):
            h.update(path.relative_to(TASKS).as_posix().encode() + b"\0" + path.read_bytes())
    plugins = sorted(f"{ep.name}={ep.value}" for ep in metadata.entry_points(group="mapcap.plugins"))
    h.update(json.dumps([plugins, os.environ.get("MAPCAP_PLUGINS", "")]).encode())
    return h.hexdigest()[:20]


def _cached(fp: str) -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "mapcap" / f"flag-table-{fp}.json"


def load_table() -> dict | None:
    """The shipped table, or one a slow start cached, that describes the model as it is now; else None."""
    fp = fingerprint()
    for path in (TABLE, _cached(fp)):
        try:
            table = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if table.get("fingerprint") == fp:
            return table
    return None


def cache_table(table: dict) -> None:
    """Keep a table built by a slow start for the next command (best effort: a read-only home just stays slow)."""
    try:
        write_table(table, _cached(table["fingerprint"]))
    except OSError:
        pass


def _unwrap(tp: Any) -> tuple[Any, bool]:
    """(the type without None, whether None is allowed)."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return (args[0] if len(args) == 1 else typing.Union[tuple(args)]), type(None) in typing.get_args(tp)
    return tp, False


def _type_name(tp: Any) -> str:
    return {int: "int", float: "float"}.get(tp, "str")


def _spec(annotation: Any) -> dict[str, Any]:
    """What argparse needs to parse a value of this annotation, as JSON data."""
    tp, _ = _unwrap(annotation)
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is bool:
        return {"kind": "bool"}
    if origin is Literal:
        return {"choices": list(args), "type": _type_name(type(args[0]))}
    if origin is list:
        inner, _ = _unwrap(args[0])
        if typing.get_origin(inner) is Literal:
            return {"nargs": "+", "choices": list(typing.get_args(inner)), "type": "str"}
        return {"nargs": "+", "type": _type_name(inner)}
    if origin in (typing.Union, types.UnionType):  # str | list[str] (templates): one value or several
        return {"nargs": "+", "type": "str", "metavar": "VALUE"}
    if origin is dict:
        return {"type": "json", "metavar": "JSON"}
    return {"type": _type_name(tp)}


def _bounds(field: Any) -> dict[str, float]:
    out = {}
    for m in field.metadata:
        for name in ("ge", "gt", "le", "lt"):
            if getattr(m, name, None) is not None:
                out[name] = getattr(m, name)
    return out


def _default(field: Any) -> Any:
    return field.default if field.default_factory is None else field.default_factory()


def build_table() -> dict:
    """The table, from the parameter model (imports every stage: seconds)."""
    from mapcap.tasks.pipeline.params import FLAT_NAMES, SECTIONS, ExplainParams
    from mapcap.tasks.plugins import DATASETS, load_plugins

    load_plugins()
    fields = []
    for name, field in ExplainParams.model_fields.items():
        if name in SECTIONS:
            continue
        fields.append({"dest": name, "section": None, "help": field.description or "",
                       "default": _jsonable(_default(field)), **_spec(field.annotation), **_bounds(field)})
    sections = {}
    for section, model in SECTIONS.items():
        sections[section] = ExplainParams.model_fields[section].description or ""
        for name, field in model.model_fields.items():
            fields.append({"dest": f"{section}.{name}", "section": section, "help": field.description or "",
                           "default": _jsonable(_default(field)), **_spec(field.annotation), **_bounds(field)})
    return {"fingerprint": fingerprint(), "fields": fields, "sections": sections,
            "flat_names": {k: [f"{s}.{f}" for s, f in v] for k, v in FLAT_NAMES.items()},
            "datasets": sorted(DATASETS)}


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def write_table(table: dict | None = None, path: Path = TABLE) -> Path:
    """Write the table (atomically: a command reading it meanwhile sees the old or the new one)."""
    table = table or build_table()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(table, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)
    return path


if __name__ == "__main__":  # python -m mapcap.cli.flag_table: write the table after changing a stage's settings
    print(write_table())
