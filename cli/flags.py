"""Command-line flags generated from the parameter model (tasks/pipeline/params.py): every field is a flag.

Top-level fields are `--name`; a section's fields are `--section.field` or `--section-field` (dashes or
underscores). `--help` shows each field's description and default. `--params FILE` (YAML or JSON, nested like the
model, old flat names accepted) gives a base that flags override. A few short aliases of earlier versions
(`--methods`, `--beams`, `--template` ...) stay.
"""
from __future__ import annotations

import argparse
import json
import types
import typing
from pathlib import Path
from typing import Any, Literal


from mapcap.tasks.pipeline.params import FLAT_NAMES, SECTIONS, ExplainParams

POSITIONAL = {"dataset"}  # `mapcap run DATASET`
# short flags kept from earlier versions: each is an old flat parameter name, moved where FLAT_NAMES says
_OLD_FLAGS = {"--methods": "relevancy_methods", "--start-layers": "start_layers", "--templates": "templates",
              "--top-k": "top_k", "--batch-size": "batch_size", "--captioner": "captioner",
              "--captioner-path": "captioner_path", "--captioner-tokenizer": "captioner_tokenizer",
              "--beams": "caption_beams", "--concept-bank": "concept_bank", "--descriptors": "descriptors"}
ALIASES: dict[str, tuple[str, ...]] = {flag: tuple(f"{s}.{f}" for s, f in FLAT_NAMES[old])
                                       for flag, old in _OLD_FLAGS.items()}


def _unwrap(tp: Any) -> tuple[Any, bool]:
    """(the type without None, whether None is allowed)."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return (args[0] if len(args) == 1 else typing.Union[tuple(args)]), type(None) in typing.get_args(tp)
    return tp, False


def _kwargs(annotation: Any) -> dict[str, Any]:
    """argparse keyword arguments that parse a value of this annotation."""
    tp, _ = _unwrap(annotation)
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is bool:
        return {"action": argparse.BooleanOptionalAction}
    if origin is Literal:
        return {"choices": list(args), "type": type(args[0])}
    if origin is list:
        inner, _ = _unwrap(args[0])
        if typing.get_origin(inner) is Literal:
            return {"nargs": "+", "choices": list(typing.get_args(inner))}
        return {"nargs": "+", "type": inner if inner in (int, float) else str}
    if origin in (typing.Union, types.UnionType):  # str | list[str] (templates): one value or several
        return {"nargs": "+", "type": str, "metavar": "VALUE"}
    if origin is dict:
        return {"type": json.loads, "metavar": "JSON"}
    return {"type": tp if tp in (int, float, str) else str}


def _help(field, default: Any) -> str:
    shown = "none" if default is None else json.dumps(default) if isinstance(default, (list, dict)) else default
    return f"{field.description or ''} (default: {shown})".replace("%", "%%")


def add_param_flags(p: argparse.ArgumentParser, positional_dataset: bool = False) -> None:
    """One flag per field of ExplainParams and of each section, named `--section.field` and `--section-field`."""
    p.add_argument("--params", metavar="FILE", help="YAML or JSON file of parameters (nested by section, like the "
                                                    "Prefect form); flags given here override it")
    for name, field in ExplainParams.model_fields.items():
        if name in SECTIONS:
            continue
        if name in POSITIONAL and positional_dataset:
            p.add_argument(name, nargs="?", default=argparse.SUPPRESS, help=_help(field, field.default))
            continue
        flags = [f"--{name.replace('_', '-')}"] + ([f"--{name}"] if "_" in name else [])
        p.add_argument(*flags, dest=name, default=argparse.SUPPRESS, help=_help(field, field.default),
                       **_kwargs(field.annotation))
    for section, model in SECTIONS.items():
        group = p.add_argument_group(f"{section} stage", ExplainParams.model_fields[section].description)
        for name, field in model.model_fields.items():
            dotted, dashed = f"--{section}.{name}", f"--{section}-{name.replace('_', '-')}"
            flags = list(dict.fromkeys([dotted, dashed, f"--{section}.{name.replace('_', '-')}"]))
            default = field.default if field.default_factory is None else field.default_factory()
            group.add_argument(*flags, dest=f"{section}.{name}", default=argparse.SUPPRESS,
                               help=_help(field, default), **_kwargs(field.annotation))
    for flag, targets in ALIASES.items():
        section, name = targets[0].split(".")
        field = SECTIONS[section].model_fields[name]
        p.add_argument(flag, dest=f"alias:{flag}", default=argparse.SUPPRESS,
                       help=f"short for {', '.join('--' + t for t in targets)}", **_kwargs(field.annotation))
    p.add_argument("--template", dest="alias:--template", action="append", default=argparse.SUPPRESS,
                   help="a template with '{}' (repeat); short for --classify.templates")


def read_params_file(path: str) -> dict:
    """A YAML or JSON file of parameters (a mapping), or a ValueError naming the file."""
    import yaml

    try:
        text = Path(path).read_text()
    except OSError as e:
        raise ValueError(f"cannot read parameters file {path}: {e}") from e
    try:
        data = json.loads(text) if path.endswith(".json") else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as e:
        raise ValueError(f"parameters file {path} is not valid {'JSON' if path.endswith('.json') else 'YAML'}: "
                         f"{e}") from e
    if not isinstance(data, dict):
        raise ValueError(f"parameters file {path} must hold a mapping of parameters, not {type(data).__name__}")
    return data.get("params", data) if set(data) == {"params"} else data


def _set(data: dict, dotted: str, value: Any) -> None:
    if "." not in dotted:
        data[dotted] = value
        return
    section, name = dotted.split(".", 1)
    sec = data.get(section)
    data[section] = sec = dict(sec) if isinstance(sec, dict) else {}
    sec[name] = value


def params_from_args(args: argparse.Namespace, **fixed: Any) -> ExplainParams:
    """ExplainParams from `--params FILE`, then the flags given, then `fixed` (e.g. dataset='toy' for demo)."""
    given = vars(args)
    data: dict[str, Any] = read_params_file(given["params"]) if given.get("params") else {}
    data = ExplainParams.model_validate(data).model_dump(exclude_unset=True) if data else {}
    for dest, value in given.items():
        if dest.startswith("alias:"):
            flag = dest[len("alias:"):]
            for target in ALIASES.get(flag, ("classify.templates",)):
                _set(data, target, value)
    for dest, value in given.items():
        if dest in ExplainParams.model_fields or (dest.split(".")[0] in SECTIONS and "." in dest):
            _set(data, dest, value)
    templates = data.get("classify", {}).get("templates")
    if isinstance(templates, list) and len(templates) == 1 and "{}" not in templates[0]:
        data["classify"]["templates"] = templates[0]  # a named set: --classify.templates openai
    data.update(fixed)
    return ExplainParams.model_validate(data)
