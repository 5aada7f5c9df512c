"""docs/cli.md, generated from the command table and the run's parameter model (through the flag table), so the
reference cannot drift from the code: `python -m mapcap.cli.reference > docs/cli.md` (a test checks it)."""
from __future__ import annotations

import json

from mapcap.cli.commands import COMMANDS
from mapcap.cli.flag_table import build_table


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _default(value) -> str:
    return "—" if value is None else f"`{json.dumps(value) if isinstance(value, (list, dict, bool)) else value}`"


def reference(table: dict | None = None) -> str:
    table = table or build_table()
    out = ["# Command-line reference", "",
           "Generated from the code (`python -m mapcap.cli.reference > docs/cli.md`). `mapcap COMMAND --help` says "
           "the same; `mapcap run --help-all` lists every setting.", "", "## Commands", "",
           "| command | what it does |", "|---|---|"]
    for cmd in COMMANDS:
        out.append(f"| `mapcap {cmd.name}` | {_cell(cmd.help)} |")
        out += [f"| `mapcap {cmd.name} {s.name}` | {_cell(s.help)} |" for s in cmd.sub]
    out += ["", "## Settings of a run (`mapcap run`, `mapcap demo`, `mapcap serve`, the Prefect form)", "",
            "Each is a flag: `--name` for the run's own fields, `--section.field` (or `--section-field`) for a "
            "stage's. `--params FILE` reads the same nested as YAML or JSON.", ""]
    groups: dict[str | None, list[dict]] = {}
    for spec in table["fields"]:
        groups.setdefault(spec["section"], []).append(spec)
    for section, specs in groups.items():
        title = "The run" if section is None else f"`{section}`: {table['sections'][section]}"
        out += [f"### {title}", "", "| flag | default | what it sets |", "|---|---|---|"]
        for s in specs:
            flag = f"--{s['dest'].replace('_', '-')}" if section is None else f"--{s['dest']}"
            choices = f" One of: {', '.join(map(str, s['choices']))}." if "choices" in s else ""
            out.append(f"| `{flag}` | {_default(s['default'])} | {_cell(s['help'])}{choices} |")
        out.append("")
    return "\n".join(out).rstrip() + "\n"


if __name__ == "__main__":
    print(reference(), end="")
