"""Command-line flags of the run's parameters: every field of the parameter model is a flag (cli/flag_table.py
holds them as data, so parsing needs no heavy import).

Top-level fields are `--name`; a section's fields are `--section.field` or `--section-field` (dashes or
underscores). `--help` shows the common flags, `--help-all` every field with its description and default.
`--params FILE` (YAML or JSON, nested like the model, old flat names accepted) gives a base that flags override.
A few short aliases of earlier versions (`--methods`, `--beams`, `--template` ...) stay.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from mapcap.cli.flag_table import COMMON

POSITIONAL = {"dataset"}  # `mapcap run DATASET`
# short flags kept from earlier versions: each is an old flat parameter name, moved where the stages say
OLD_FLAGS = {"--methods": "relevancy_methods", "--start-layers": "start_layers", "--templates": "templates",
             "--top-k": "top_k", "--batch-size": "batch_size", "--captioner": "captioner",
             "--captioner-path": "captioner_path", "--captioner-tokenizer": "captioner_tokenizer",
             "--beams": "caption_beams", "--concept-bank": "concept_bank", "--descriptors": "descriptors"}
_NAMES = {"int": int, "float": float, "str": str, "json": json.loads}


def _value_type(spec: dict[str, Any]) -> Any:
    """A converter that also checks the field's bounds, so `--shard-size 0` is refused while parsing."""
    base = _NAMES[spec.get("type", "str")]
    bounds = {k: spec[k] for k in ("ge", "gt", "le", "lt") if k in spec}
    if not bounds:
        return base

    def convert(text: str) -> Any:
        value = base(text)
        ok = all({"ge": value >= b, "gt": value > b, "le": value <= b, "lt": value < b}[k] for k, b in bounds.items())
        if not ok:
            said = ", ".join(f"{ {'ge': '≥', 'gt': '>', 'le': '≤', 'lt': '<'}[k]} {b:g}" for k, b in bounds.items())
            raise argparse.ArgumentTypeError(f"{text} is out of range: must be {said}")
        return value
    convert.__name__ = base.__name__  # argparse names the type in its error message
    return convert


def _kwargs(spec: dict[str, Any]) -> dict[str, Any]:
    if spec.get("kind") == "bool":
        return {"action": argparse.BooleanOptionalAction}
    out: dict[str, Any] = {"type": _value_type(spec), "metavar": spec["dest"].rsplit(".", 1)[-1].upper()}
    for key in ("nargs", "choices", "metavar"):
        if key in spec:
            out[key] = spec[key]
    return out


def _help(spec: dict[str, Any], shown: bool, full: bool) -> str:
    """The field's description and default; `full=False`: its first clause only (the short --help)."""
    if not shown:
        return argparse.SUPPRESS
    text = spec["help"] if full else COMMON.get(spec["dest"], spec["help"])
    if "choices" in spec and full:
        text += f"; one of {', '.join(map(str, spec['choices']))}"
    default = spec["default"]
    said = "none" if default is None else json.dumps(default) if isinstance(default, (list, dict)) else default
    return f"{text} (default: {said})".replace("%", "%%")


def add_param_flags(p: argparse.ArgumentParser, table: dict, positional_dataset: bool = False,
                    show_all: bool = False) -> None:
    """One flag per field, named `--section.field` and `--section-field`; `--help` lists the common ones."""
    common = p.add_argument_group("common settings (every setting of every stage: --help-all)")
    common.add_argument("--params", metavar="FILE", help="YAML or JSON file of parameters (nested by section, like "
                                                         "the Prefect form); flags given here override it")
    groups = {None: p.add_argument_group("run settings") if show_all else common}
    for section, title in table["sections"].items():
        groups[section] = p.add_argument_group(f"{section} stage", title) if show_all else common
    for spec in table["fields"]:
        dest, section = spec["dest"], spec["section"]
        shown = show_all or dest in COMMON
        group = common if dest in COMMON else groups[section]
        if dest in POSITIONAL and positional_dataset:
            p.add_argument(dest, nargs="?", default=argparse.SUPPRESS, help=_help(spec, True, show_all))
            continue
        if section is None:
            flags = [f"--{dest.replace('_', '-')}"] + ([f"--{dest}"] if "_" in dest else [])
        else:
            name = dest.split(".", 1)[1]
            flags = list(dict.fromkeys([f"--{dest}", f"--{section}-{name.replace('_', '-')}",
                                        f"--{section}.{name.replace('_', '-')}"]))
        # the first spelling is the one help shows; the others parse the same
        group.add_argument(flags[0], dest=dest, default=argparse.SUPPRESS, help=_help(spec, shown, show_all),
                           **_kwargs(spec))
        if flags[1:]:
            p.add_argument(*flags[1:], dest=dest, default=argparse.SUPPRESS, help=argparse.SUPPRESS, **_kwargs(spec))
    by_dest = {s["dest"]: s for s in table["fields"]}
    for flag, old in OLD_FLAGS.items():
        targets = table["flat_names"][old]
        p.add_argument(flag, dest=f"alias:{flag}", default=argparse.SUPPRESS, **_kwargs(by_dest[targets[0]]),
                       help=f"short for {', '.join('--' + t for t in targets)}" if show_all else argparse.SUPPRESS)
    p.add_argument("--template", dest="alias:--template", action="append", default=argparse.SUPPRESS,
                   help="a template with '{}' (repeat); short for --classify.templates" if show_all
                   else argparse.SUPPRESS)


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


def flag_values(args: argparse.Namespace, table: dict) -> dict:
    """The parameters the flags give, nested like the model (no validation yet: that needs the model)."""
    given = vars(args)
    data: dict[str, Any] = {}
    for dest, value in given.items():
        if dest.startswith("alias:"):
            flag = dest[len("alias:"):]
            targets = table["flat_names"][OLD_FLAGS[flag]] if flag in OLD_FLAGS else ["classify.templates"]
            for target in targets:
                _set(data, target, value)
    fields = {s["dest"] for s in table["fields"]}
    for dest, value in given.items():
        if dest in fields:
            _set(data, dest, value)
    templates = data.get("classify", {}).get("templates")
    if isinstance(templates, list) and len(templates) == 1 and "{}" not in templates[0]:
        data["classify"]["templates"] = templates[0]  # a named set: --classify.templates openai
    return data


def params_from_args(args: argparse.Namespace, table: dict, **fixed: Any):
    """ExplainParams from `--params FILE`, then the flags given, then `fixed` (e.g. dataset='toy' for demo)."""
    from mapcap.tasks.pipeline.params import ExplainParams

    given = vars(args)
    data: dict[str, Any] = read_params_file(given["params"]) if given.get("params") else {}
    data = ExplainParams.model_validate(data).model_dump(exclude_unset=True) if data else {}
    for key, value in flag_values(args, table).items():
        if isinstance(value, dict):
            data[key] = {**data.get(key, {}), **value}
        else:
            data[key] = value
    data.update(fixed)
    return ExplainParams.model_validate(data)
