"""Images/s of the classify stage: model forward alone (eager, and with `--compile` torch.compile'd), the one
pass that also gives last-block Chefer maps for the predicted and true class, and the classify stage end to end
from files (decode included) on the toy world's PNGs, which always take the PIL path: for JPEGs through the GPU
decoder, `bench/pipeline.py --stages classify` is the measure.

    python bench/classify.py [--models toy ViT-B-16] [--batch 256] [--n 512] [--precision fp32 bf16] [--compile]

Random weights give the real cost of a model (no download needed). Prints a table.
"""
from __future__ import annotations

import argparse

import mapcap  # noqa: F401  (before torch: it sets the OpenMP wait policy)
import tempfile
import time
from pathlib import Path

import torch

from timing import print_table, rate, sync  # bench/timing.py
from mapcap.tasks.relevancy.fused import classify_and_explain
from mapcap.tasks.stages.classify import ClassifyConfig
from mapcap.tasks.pipeline.driver import StagePlan, run_shard
from mapcap.tasks.zeroshot import classify_pixels, text_classifier
from mapcap.tasks.data import read_dataset
from mapcap.tasks.models import load_model, resolve_spec
from mapcap.tasks.templates import resolve_templates
from mapcap.toy.dataset import write_toy_dataset


def bench_forward(lm, classifier, batch: int, iters: int) -> float:
    size = lm.model.visual.image_size
    size = size[0] if isinstance(size, tuple) else size
    x = torch.randn(batch, 3, size, size, device=lm.spec.device)
    classify_pixels(lm, x, classifier)  # warm-up
    sync(lm.spec.device)
    t = time.perf_counter()
    for _ in range(iters):
        classify_pixels(lm, x, classifier)
    sync(lm.spec.device)
    return batch * iters / (time.perf_counter() - t)


def bench_fused(lm, classifier, batch: int, iters: int) -> float:
    """Images/s of classification + last-block Chefer maps in one pass (tasks/relevancy/fused.py)."""
    size = lm.model.visual.image_size
    size = size[0] if isinstance(size, tuple) else size
    x = torch.randn(batch, 3, size, size, device=lm.spec.device)
    return rate(lambda: [classify_and_explain(lm, x, classifier, [-1]) for _ in range(iters)],
                batch * iters, lm.spec.device)


def compiled(lm):
    """The same model with its image tower under torch.compile (a copy of the wrapper, not of the weights)."""
    import copy
    model = copy.copy(lm.model)
    model._modules = dict(lm.model._modules)  # else the original's tower would be replaced too
    model.visual = torch.compile(lm.model.visual)
    return type(lm)(lm.spec, model, lm.preprocess, lm.tokenizer)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="+", default=["toy", "ViT-B-16"])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--n", type=int, default=256, help="images for the from-files run")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--precision", nargs="+", default=["fp32"])
    ap.add_argument("--compile", action="store_true", help="also time the image tower under torch.compile")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="mapcap-bench-"))
    write_toy_dataset(tmp / "data", n_per_class=max(args.n // 8, 1), seed=5)
    ds = read_dataset(str(tmp / "data"))
    rows = []
    for name in args.models:
        for prec in args.precision:
            spec = resolve_spec(name, "toy" if name == "toy" else "", args.device, prec)
            lm = load_model(spec)
            tpl = resolve_templates("simple")
            clf = text_classifier(lm, ds.classes, tpl)
            fwd = bench_forward(lm, clf, args.batch, args.iters)
            comp = f"{bench_forward(compiled(lm), clf, args.batch, args.iters):,.0f}" if args.compile else "-"
            fused = bench_fused(lm, clf, args.batch, args.iters)
            cfg = ClassifyConfig(spec, ds.classes, tpl, batch_size=args.batch)
            t = time.perf_counter()
            run_shard([StagePlan("classify", cfg)], str(tmp / "out"), f"bench-{name}-{prec}", 0, list(ds.items),
                      force=True, workers=8)
            files = len(ds.items) / (time.perf_counter() - t)
            rows.append((spec.name, spec.device, prec, args.batch, f"{fwd:,.0f}", comp, f"{fused:,.0f}",
                         f"{files:,.0f}"))
    head = ("model", "device", "precision", "batch", "forward img/s", "compiled img/s",
            "+ last-block maps img/s", "from PNG files img/s")
    print_table(head, rows)


if __name__ == "__main__":
    main()
