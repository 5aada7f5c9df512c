"""The `mapcap` command's subcommands, declared once: name, help, arguments and the handler that runs it
(cli/handlers.py). The parser, the dispatch and the list of commands in `--help` all come from COMMANDS."""
from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import Any

from mapcap.tasks.limits import DEFAULT_LIMITS  # (standard library only)

DEFAULT_ROOT = "./mapcap-results"


def arg(*flags: str, **kwargs: Any) -> tuple[tuple[str, ...], dict[str, Any]]:
    """One argparse argument: its flags (or positional name) and add_argument's keywords."""
    return flags, kwargs


ROOT = arg("--root", default=DEFAULT_ROOT, help=f"results root (default {DEFAULT_ROOT})")
RUN = arg("run", nargs="?", default="latest", help="run id (default: the newest run)")


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    handler: str  # a function of cli/handlers.py, imported when the command runs
    args: tuple[tuple[tuple[str, ...], dict[str, Any]], ...] = ()
    flow: bool = False  # its flags are the run's parameters (cli/flags.py), generated from the parameter model
    positional_dataset: bool = False  # `mapcap run DATASET`
    sub: tuple[Command, ...] = field(default=())  # subcommands (`mapcap toy make`)


def _query(name: str, help: str, per_run: bool = True, *more) -> Command:
    return Command(name, help, "cmd_named", ((RUN,) if per_run else ()) + (ROOT,) + tuple(more))


COMMANDS: tuple[Command, ...] = (
    Command("demo", "run the flow on the embedded toy dataset and print per-class accuracy", "cmd_run", flow=True),
    Command("run", "run the explain flow on a dataset (every parameter is a flag: see below)", "cmd_run", flow=True,
            positional_dataset=True),
    Command("sql", "run SQL over the results (views: runs, images, predictions, failures)", "cmd_sql", (
        arg("query"), ROOT, arg("--format", default="table", choices=["table", "csv", "json", "parquet"]),
        arg("--output", help="write to this file instead of stdout (required for parquet)"))),
    _query("classes", "per-class accuracy of a run"),
    _query("templates", "per-template accuracy of a run"),
    _query("confusion", "confusion pairs of a run"),
    _query("evaluations", "relevancy evaluation of a run"),
    _query("captions", "most frequent top-region caption per class, and caption quality per captioner"),
    _query("summaries", "per-class table: accuracy, top confusion, caption summary, properties"),
    _query("trends", "per-class accuracy against each summary property (Pearson, Spearman, slope)"),
    Command("concepts", "description-based accuracy, mutual knowledge per class and vs accuracy", "cmd_concepts",
            (RUN, ROOT)),
    _query("drift", "accuracy over time of runs of the same dataset and model", False),
    _query("models", "accuracy per dataset and model across runs", False),
    _query("template-trends", "accuracy per prompt template and model across runs", False),
    Command("mk-runs", "mutual knowledge per run and against accuracy across runs", "cmd_mk_runs", (
        ROOT, arg("--figure", help="also write a PNG of every run's mean MI and AUC against accuracy"))),
    Command("serve", "serve the explain (scheduled) and reprocess deployments from this process", "cmd_serve",
            (arg("--cron", default="0 3 * * *", help="schedule of the explain deployment (UTC cron)"),), flow=True),
    Command("explorer", "serve the explorer page on localhost: explain an image, browse a run", "cmd_explorer", (
        ROOT, arg("--port", type=int, default=8765),
        arg("--allow-host", action="append", default=[], metavar="HOST",
            help="also serve requests for this Host name (a proxy's), beside 127.0.0.1, localhost, [::1]"),
        arg("--no-token", action="store_true",
            help="no per-launch token on the API (only behind a proxy that authenticates)"),
        arg("--max-upload-mb", type=float, default=25.0,
            help="largest uploaded image (and image file opened by path), in MB (default 25)"),
        arg("--allow-weights", action="append", default=[], metavar="DIR",
            help="also load checkpoints (pretrained) from this folder, beside the results root"),
        arg("--max-pixels", type=int, default=DEFAULT_LIMITS.max_pixels,
            help=f"pixel budget per image (width × height its header declares, checked before decoding; default "
                 f"{DEFAULT_LIMITS.max_pixels})"),
        arg("--max-file-mb", type=float, default=DEFAULT_LIMITS.max_file_mb,
            help=f"file-size cap per image file opened by path, in MB (checked before reading; default "
                 f"{DEFAULT_LIMITS.max_file_mb:g})"))),
    Command("report", "write a run's self-contained HTML report", "cmd_report", (
        RUN, ROOT, arg("--out", help="HTML file to write (default: <root>/reports/<run>.html)"))),
    Command("relevancy", "relevancy maps of one image for several texts (.npz + overlay .png)", "cmd_relevancy", (
        arg("--image", required=True), arg("--text", action="append", required=True, help="a text to explain (repeat)"),
        arg("--model", default="toy"), arg("--pretrained", default="toy"),
        arg("--method", help="chefer, legrad, grad_eclip, gradcam, gradient, or any registered method (default: the "
                             "model's tower's: chefer for ViTs, legrad for timm ViTs, gradcam for ResNet/ConvNeXt)"),
        arg("--start-layer", type=int, help="chefer's or legrad's first block (default: the method's)"),
        arg("--device", default="auto"), arg("--precision", default="fp32", choices=["auto", "fp32", "bf16", "fp16"]),
        arg("--out", required=True, help="OUT.npz (the overlay is written beside it as OUT.png)"))),
    _query("runs", "all runs under the root, compared", False),
    Command("check", "check that every Parquet file under the root is readable", "cmd_check", (ROOT,)),
    Command("compact", "rewrite a finished run's per-shard files of each table into a few large ones (queries "
                       "answer the same; readers never see a gap)", "cmd_compact", (RUN, ROOT)),
    Command("toy", "the toy world: make datasets, train the toy CLIP and captioner", "cmd_toy", sub=(
        Command("make", "write a toy dataset (ImageFolder + manifest.parquet)", "cmd_toy", (
            arg("out"), arg("--n-per-class", type=int, default=16), arg("--seed", type=int, default=1234),
            arg("--split", default="test"), arg("--kind", default="single", choices=["single", "distractor", "pair"]),
            arg("--distractor-rate", type=float, default=0.0,
                help="with --kind single: share of each class's images that also carry a smaller other shape"))),
        Command("train", "train the toy CLIP on CPU and save its checkpoint", "cmd_toy", (
            arg("--steps", type=int, help="one phase of this many steps (default: the shipped 5-phase recipe)"),
            arg("--from-phase", type=int, default=0, help="run the recipe from this phase on, starting from --init "
                                                          "(3: add descriptors to a checkpoint of phases 0-2)"),
            arg("--descriptors", type=float, default=0.0,
                help="with --steps: share of single-object captions that say a descriptor"),
            arg("--batch", type=int, default=128), arg("--seed", type=int, default=0),
            arg("--out", help="checkpoint path (default: the shipped toy/weights/toy_clip.pt)"),
            arg("--init", help="continue from this checkpoint instead of random weights"))),
        Command("train-captioner", "train the toy ClipCap on toy crops (CPU) and save it", "cmd_toy", (
            arg("--scenes", type=int, default=20000, help="toy scenes to cut training crops from"),
            arg("--steps", type=int, default=3000), arg("--seed", type=int, default=0),
            arg("--out", help="directory (default: the shipped toy/weights/toy_clipcap)"))))),
)
BY_NAME = {c.name: c for c in COMMANDS}
FLOW_COMMANDS = tuple(c.name for c in COMMANDS if c.flow)


def _verbosity(p: argparse.ArgumentParser, top: bool) -> None:
    """-v and --debug, before or after the subcommand (`mapcap -v run` = `mapcap run -v`)."""
    default = False if top else argparse.SUPPRESS  # a subcommand's own default must not undo the top-level flag
    p.add_argument("-v", "--verbose", action="store_true", default=default,
                   help="also show Prefect's task states and library warnings")
    p.add_argument("--debug", action="store_true", default=default, help="show tracebacks and debug logs")


def _add(sub: argparse._SubParsersAction, cmd: Command, table: dict | None, dest: str, show_all: bool) -> None:
    p = sub.add_parser(cmd.name, help=cmd.help, description=cmd.help)
    _verbosity(p, top=False)
    for flags, kwargs in cmd.args:
        p.add_argument(*flags, **kwargs)
    if cmd.flow and table is not None:
        from mapcap.cli.flags import add_param_flags

        add_param_flags(p, table, cmd.positional_dataset, show_all)
        p.add_argument("--ray", nargs="?", const="local", help="run shard tasks on Ray: a cluster address "
                                                                "(ray://head:10001), or none for a local Ray")
        p.add_argument("--help-all", action="help", help="show every setting of every stage, and exit")
    if cmd.sub:
        inner = p.add_subparsers(dest=f"{dest}_cmd", required=True)
        for s in cmd.sub:
            _add(inner, s, table, f"{dest}_{s.name}", show_all)


def build_parser(table: dict | None = None, show_all: bool = False) -> argparse.ArgumentParser:
    """The parser. The flow commands' flags come from `table` (cli/flag_table.py); without one they are left out
    (a command line that runs no flow never parses them). `show_all`: their help lists every field."""
    ap = argparse.ArgumentParser(prog="mapcap", description="Explain why CLIP classifies images as it does.")
    _verbosity(ap, top=True)
    sub = ap.add_subparsers(dest="cmd", required=True)
    for cmd in COMMANDS:
        _add(sub, cmd, table, cmd.name, show_all)
    return ap
