"""What each `mapcap` subcommand does (cli/commands.py declares them). Results go to stdout; logs to stderr."""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from mapcap.cli.startup import flow_settings

log = logging.getLogger("mapcap.cli")

def _params(args: argparse.Namespace):
    from mapcap.cli.flags import params_from_args

    return params_from_args(args, args.table, **({"dataset": "toy"} if args.cmd == "demo" else {}))


def _print_table(table, ends: int | None = None) -> None:
    from mapcap.cli.summary import print_table

    print_table(table, ends)


def cmd_run(args: argparse.Namespace) -> int:
    from mapcap.cli.console import attach
    from mapcap.cli.startup import import_quietly
    from mapcap.cli.summary import print_run_summary

    log.info("mapcap %s: loading torch, open_clip and Prefect, then planning the run (the model loads once)",
             args.cmd)
    explain = import_quietly(lambda: __import__("mapcap.flows.explain", fromlist=["explain"]).explain)
    attach(args.console)  # Prefect's console handlers exist now: quiet them as ours
    flow = explain
    if getattr(args, "ray", None):
        from mapcap.flows.explain_ray import explain_on_ray
        flow = explain_on_ray(None if args.ray == "local" else args.ray)
    params = _params(args)
    args.wait_for_api()
    try:
        with flow_settings():
            result = flow(params)
    except KeyboardInterrupt:  # Ctrl-C; the flow logged the run and how to resume it (a SIGTERM ends the process)
        print(f"mapcap {args.cmd}: stopped; the shards' finished stages are kept, and a rerun with the run's name "
              "(logged above) does the rest", file=sys.stderr)
        return 130
    print_run_summary(params.out, result)
    return 0


def cmd_concepts(args: argparse.Namespace) -> int:
    from mapcap.storage.query import connect, named_query

    con = connect(args.root)
    sections = (("accuracy: description-based (Menon & Vondrick) vs class-name templates", "descriptors_vs_names"),
                ("mutual knowledge per class (MI in nats; AUC of the MI curve; concept deletion / insertion, "
                 "AccDrop / AccInc)", "mutual_knowledge_by_class"),
                ("across classes: MI and AUC against accuracy", "mutual_knowledge_vs_accuracy"),
                ("top visual concept per class (is it one of the class's descriptors?)", "visual_concepts"))
    for i, (title, name) in enumerate(sections):
        print(("\n" if i else "") + title + ":")
        _print_table(named_query(con, name, args.run))
    return 0


def cmd_mk_runs(args: argparse.Namespace) -> int:
    from mapcap.storage.query import connect, named_query

    con = connect(args.root)
    print("mutual knowledge per run:")
    _print_table(named_query(con, "mutual_knowledge_runs"))
    print("\nacross runs: MI and AUC against accuracy:")
    _print_table(named_query(con, "mutual_knowledge_runs_vs_accuracy"))
    if args.figure:
        from mapcap.tasks.report.concepts import runs_figure
        Path(args.figure).write_bytes(runs_figure(con))
        print(f"\nwrote {args.figure}")
    return 0


def cmd_sql(args: argparse.Namespace) -> int:
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq
    from mapcap.storage.query import connect, format_table, run_sql

    table = run_sql(connect(args.root), args.query)
    if args.format == "parquet":
        if not args.output:
            raise ValueError("--format parquet needs --output FILE")
        pq.write_table(table, args.output)
        print(f"wrote {table.num_rows} rows to {args.output}")
        return 0
    if args.format == "csv":
        import io
        buf = io.BytesIO()
        pacsv.write_csv(table, buf)
        text = buf.getvalue().decode()
    elif args.format == "json":
        text = json.dumps(table.to_pylist(), default=str, indent=1)
    else:
        text = format_table(table)
    if args.output:
        Path(args.output).write_text(text)
    else:
        print(text.rstrip("\n"))
    return 0


def cmd_named(args: argparse.Namespace) -> int:
    from mapcap.cli.summary import CAPTION_QUALITY_TITLE
    from mapcap.storage.query import connect, named_query

    name = {"classes": "per_class_accuracy", "templates": "per_template_accuracy", "confusion": "confusion_pairs",
            "evaluations": "evaluations", "captions": "class_captions", "runs": "runs_compared",
            "summaries": "per_class_table", "trends": "accuracy_vs_property", "drift": "accuracy_over_time",
            "models": "models_across_runs", "template-trends": "templates_across_runs"}[args.cmd]
    con = connect(args.root)
    _print_table(named_query(con, name, getattr(args, "run", None)))
    if args.cmd == "captions":
        quality = named_query(con, "caption_quality", getattr(args, "run", None))
        print(f"\n{CAPTION_QUALITY_TITLE}:")
        if quality.num_rows:
            _print_table(quality)
        else:
            print("none: the run has no captions of images with reference captions")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    """flow.serve with the same deployments as deployments/prefect.yaml: one process, no work pool."""
    from mapcap.flows.explain import explain
    from mapcap.flows.reprocess import reprocess
    from prefect import serve

    params = _params(args).model_dump()
    serve(explain.to_deployment("explain-nightly", cron=args.cron, parameters={"params": params}),
          reprocess.to_deployment("reprocess"))
    return 0


def cmd_explorer(args: argparse.Namespace) -> int:
    from mapcap.explorer.app import serve_explorer
    from mapcap.explorer.guard import new_token
    from mapcap.tasks.limits import DEFAULT_LIMITS, DecodeLimits

    if args.max_upload_mb <= 0:
        raise ValueError(f"--max-upload-mb {args.max_upload_mb:g} must be above 0 (default 25)")
    if args.max_pixels < 1:
        raise ValueError(f"--max-pixels {args.max_pixels} must be at least 1 (default {DEFAULT_LIMITS.max_pixels})")
    if args.max_file_mb <= 0:
        raise ValueError(f"--max-file-mb {args.max_file_mb:g} must be above 0 (default "
                         f"{DEFAULT_LIMITS.max_file_mb:g})")
    token = None if args.no_token else new_token()
    query = f"/?token={token}" if token else "/"
    print(f"MapCap explorer on http://127.0.0.1:{args.port}{query} (results root {args.root}); Ctrl-C stops it",
          flush=True)
    serve_explorer(args.root, token, args.port, allow_hosts=tuple(args.allow_host), max_upload_mb=args.max_upload_mb,
                   allow_weights=tuple(args.allow_weights), decode=DecodeLimits(args.max_pixels, args.max_file_mb))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from mapcap.tasks.report.html import write_report

    print(f"wrote {write_report(args.root, args.run, args.out)}")
    return 0


def cmd_relevancy(args: argparse.Namespace) -> int:
    from mapcap.tasks.models import load_model, resolve_spec
    from mapcap.tasks.single_image import explain_image, save_explanation

    lm = load_model(resolve_spec(args.model, args.pretrained, args.device, args.precision))
    result = explain_image(lm, args.image, args.text, args.method, args.start_layer)
    npz, png = save_explanation(result, args.text, args.out, result["method"])
    for text, p, m in zip(args.text, result["probs"], result["maps"]):
        print(f"{p:.4f}  peak cell {int(m.argmax())} of {m.size}  {text}")
    print(f"wrote {npz} and {png}")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from mapcap.storage.writer import check_root

    ok, bad = check_root(args.root)
    for path, err in bad:
        print(f"CORRUPT {path}: {err}")
    print(f"{ok} readable file(s), {len(bad)} corrupt")
    return 1 if bad else 0


def cmd_compact(args: argparse.Namespace) -> int:
    from mapcap.storage.compact import compact_run
    from mapcap.storage.query import connect, resolve_run

    run = resolve_run(connect(args.root), args.run)
    done = compact_run(args.root, run)
    for table, (before, after) in done.items():
        print(f"{table}: {before} files -> {after}")
    print(f"run {run}: {len(done)} table(s) compacted" if done else f"run {run}: nothing to compact")
    return 0


def cmd_toy(args: argparse.Namespace) -> int:
    if args.toy_cmd == "make":
        from mapcap.toy.dataset import SHAPES, write_toy_dataset

        rate = {s: args.distractor_rate for s in SHAPES} if args.distractor_rate else None
        manifest = write_toy_dataset(args.out, args.n_per_class, args.seed, args.split, args.kind, rate)
        print(f"wrote toy dataset {args.out} (manifest {manifest})")
        return 0
    if args.toy_cmd == "train-captioner":
        from mapcap.toy import TOY_CLIPCAP
        from mapcap.toy.train_captioner import train_captioner

        record = train_captioner(Path(args.out or TOY_CLIPCAP), args.scenes, args.steps, seed=args.seed)
        print(json.dumps(record, indent=1))
        return 0
    from mapcap.toy import TOY_CHECKPOINT
    from mapcap.toy.train import train, train_recipe

    out = Path(args.out or TOY_CHECKPOINT)
    init = Path(args.init) if args.init else None
    if args.steps is None:
        record = train_recipe(out, first=args.from_phase, init=init)
    else:
        record = train(steps=args.steps, batch=args.batch, seed=args.seed, out=out, init=init,
                       descriptors=args.descriptors)
    print(json.dumps(record, indent=1))
    return 0
