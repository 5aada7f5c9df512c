"""The `mapcap` command's arguments: one subcommand per user action (cli/main.py runs them)."""
from __future__ import annotations

import argparse

DEFAULT_ROOT = "./mapcap-results"


def _root_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--root", default=DEFAULT_ROOT, help=f"results root (default {DEFAULT_ROOT})")


FLOW_COMMANDS = ("demo", "run", "serve")  # their flags come from the flow's parameter model


def _flow_args(p: argparse.ArgumentParser, positional_dataset: bool = False, flags: bool = True) -> None:
    if not flags:  # this command line runs no flow: its flags are never parsed
        return
    from mapcap.cli.flags import (
        add_param_flags,  # imports the stages: torch, open_clip, Prefect
    )
    add_param_flags(p, positional_dataset)
    p.add_argument("--ray", nargs="?", const="local", help="run shard tasks on Ray: a cluster address "
                                                            "(ray://head:10001), or none for a local Ray")


def build_parser(flow_flags: bool = True) -> argparse.ArgumentParser:
    """The parser; `flow_flags=False` leaves out the flow commands' flags (and the seconds of imports they need)
    for a command line that is not one of FLOW_COMMANDS: `mapcap sql` and the ready queries start in ~1 s."""
    ap = argparse.ArgumentParser(prog="mapcap", description="Explain why CLIP classifies images as it does.")
    ap.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("demo", help="run the flow on the embedded toy dataset and print per-class accuracy")
    _flow_args(p, flags=flow_flags)
    p = sub.add_parser("run", help="run the explain flow on a dataset (every parameter is a flag: see below)")
    _flow_args(p, positional_dataset=True, flags=flow_flags)
    p = sub.add_parser("sql", help="run SQL over the results (views: runs, images, predictions, failures)")
    p.add_argument("query")
    _root_arg(p)
    p.add_argument("--format", default="table", choices=["table", "csv", "json", "parquet"])
    p.add_argument("--output", help="write to this file instead of stdout (required for parquet)")
    for name, helptext in (("classes", "per-class accuracy of a run"), ("templates", "per-template accuracy of a run"),
                           ("confusion", "confusion pairs of a run"), ("evaluations", "relevancy evaluation of a run"),
                           ("captions", "most frequent top-region caption per class, and caption quality per captioner"),
                           ("summaries", "per-class table: accuracy, top confusion, caption summary, properties"),
                           ("trends", "per-class accuracy against each summary property (Pearson, Spearman, slope)"),
                           ("concepts", "description-based accuracy, mutual knowledge per class and vs accuracy")):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("run", nargs="?", default="latest", help="run id (default: the newest run)")
        _root_arg(p)
    for name, helptext in (("drift", "accuracy over time of runs of the same dataset and model"),
                           ("models", "accuracy per dataset and model across runs"),
                           ("template-trends", "accuracy per prompt template and model across runs"),
                           ("mk-runs", "mutual knowledge per run and against accuracy across runs")):
        p = sub.add_parser(name, help=helptext)
        _root_arg(p)
        if name == "mk-runs":
            p.add_argument("--figure", help="also write a PNG of every run's mean MI and AUC against accuracy")
    p = sub.add_parser("serve", help="serve the explain (scheduled) and reprocess deployments from this process")
    _flow_args(p, flags=flow_flags)
    p.add_argument("--cron", default="0 3 * * *", help="schedule of the explain deployment (UTC cron)")
    p = sub.add_parser("explorer", help="serve the explorer page on localhost: explain an image, browse a run")
    _root_arg(p)
    p.add_argument("--port", type=int, default=8765)
    p.add_argument("--allow-host", action="append", default=[], metavar="HOST",
                   help="also serve requests for this Host name (a proxy's), beside 127.0.0.1, localhost, [::1]")
    p.add_argument("--no-token", action="store_true",
                   help="no per-launch token on the API (only behind a proxy that authenticates)")
    p.add_argument("--max-upload-mb", type=float, default=25.0,
                   help="largest uploaded image (and image file opened by path), in MB (default 25)")
    p = sub.add_parser("report", help="write a run's self-contained HTML report")
    p.add_argument("run", nargs="?", default="latest", help="run id (default: the newest run)")
    _root_arg(p)
    p.add_argument("--out", help="HTML file to write (default: <root>/reports/<run>.html)")
    p = sub.add_parser("relevancy", help="relevancy maps of one image for several texts (.npz + overlay .png)")
    p.add_argument("--image", required=True)
    p.add_argument("--text", action="append", required=True, help="a text to explain (repeat)")
    p.add_argument("--model", default="toy")
    p.add_argument("--pretrained", default="toy")
    p.add_argument("--method", help="chefer, legrad, grad_eclip, gradcam, gradient, or any registered method "
                                    "(default: the model's tower's: chefer for ViTs, legrad for timm ViTs, gradcam "
                                    "for ResNet/ConvNeXt)")
    p.add_argument("--start-layer", type=int, help="chefer's or legrad's first block (default: the method's)")
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="fp32", choices=["auto", "fp32", "bf16", "fp16"])
    p.add_argument("--out", required=True, help="OUT.npz (the overlay is written beside it as OUT.png)")
    p = sub.add_parser("runs", help="all runs under the root, compared")
    _root_arg(p)
    p = sub.add_parser("check", help="check that every Parquet file under the root is readable")
    _root_arg(p)
    p = sub.add_parser("compact", help="rewrite a finished run's per-shard files of each table into a few large "
                                       "ones (queries answer the same; readers never see a gap)")
    p.add_argument("run", nargs="?", default="latest", help="run id (default: the newest run)")
    _root_arg(p)
    toy = sub.add_parser("toy", help="the toy world: make datasets, train the toy CLIP and captioner")
    tsub = toy.add_subparsers(dest="toy_cmd", required=True)
    p = tsub.add_parser("make", help="write a toy dataset (ImageFolder + manifest.parquet)")
    p.add_argument("out")
    p.add_argument("--n-per-class", type=int, default=16)
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--split", default="test")
    p.add_argument("--kind", default="single", choices=["single", "distractor", "pair"])
    p.add_argument("--distractor-rate", type=float, default=0.0,
                   help="with --kind single: share of each class's images that also carry a smaller other shape")
    p = tsub.add_parser("train", help="train the toy CLIP on CPU and save its checkpoint")
    p.add_argument("--steps", type=int, help="one phase of this many steps (default: the shipped 5-phase recipe)")
    p.add_argument("--from-phase", type=int, default=0,
                   help="run the recipe from this phase on, starting from --init (3: add descriptors to a "
                        "checkpoint of phases 0-2)")
    p.add_argument("--descriptors", type=float, default=0.0,
                   help="with --steps: share of single-object captions that say a descriptor")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="checkpoint path (default: the shipped toy/weights/toy_clip.pt)")
    p.add_argument("--init", help="continue from this checkpoint instead of random weights")
    p = tsub.add_parser("train-captioner", help="train the toy ClipCap on toy crops (CPU) and save it")
    p.add_argument("--scenes", type=int, default=20000, help="toy scenes to cut training crops from")
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="directory (default: the shipped toy/weights/toy_clipcap)")
    return ap
