"""Relevancy maps per second: plain batch-1 fp32 loop vs the batched (mixed-precision on GPU) path.

    python bench/relevancy.py [--models toy ViT-B-16 ViT-L-14] [--batch 64] [--n 64] [--methods chefer gradient]
                              [--start-layer 0 -1] [--precision auto|fp32|bf16|fp16]

Random weights give the real cost. `--start-layer 0` is Chefer over all blocks, the costliest setting; `-1`
the last block only (the blocks before it then run fused, without a graph). The gradient baseline and the
random map ignore the start layer.
"""
from __future__ import annotations

import argparse

import mapcap  # noqa: F401  (before torch: it sets the OpenMP wait policy)

import torch
import torch.nn.functional as F

from timing import print_table, rate  # bench/timing.py (scripts run from bench/ on sys.path)
from mapcap.tasks.models import LoadedModel, load_model, resolve_spec
from mapcap.tasks.relevancy.methods import METHODS, relevancy_maps


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="+", default=["toy", "ViT-B-16"])
    ap.add_argument("--methods", nargs="+", default=["chefer", "gradient"])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--n", type=int, default=32, help="maps per measurement")
    ap.add_argument("--n-single", type=int, default=8, help="maps for the batch-1 fp32 loop")
    ap.add_argument("--start-layer", nargs="+", type=int, default=[0, -1], help="Chefer start blocks")
    ap.add_argument("--precision", default="auto", help="of the batched path: auto (bf16 on GPU), fp32, bf16, fp16")
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    rows = []
    for name in args.models:
        fp32 = load_model(resolve_spec(name, "toy" if name == "toy" else "", args.device, "fp32"))
        mixed_spec = resolve_spec(name, "toy" if name == "toy" else "", args.device, args.precision)
        mixed = LoadedModel(mixed_spec, fp32.model, fp32.preprocess, fp32.tokenizer)
        dev = fp32.spec.device
        size = fp32.model.visual.image_size
        size = size[0] if isinstance(size, tuple) else size
        pix = torch.randn(args.n, 3, size, size, device=dev)
        txt = F.normalize(torch.randn(args.n, fp32.model.text_projection.shape[1], device=dev), dim=-1)
        runs = [(m, s) for m in args.methods for s in (args.start_layer if m == "chefer" else [0])]
        for method, start in runs:
            fn = METHODS[method]
            k = args.n_single
            single = rate(lambda: [fn(fp32, pix[i:i + 1], txt[i:i + 1], start) for i in range(k)], k, dev)
            batched = rate(lambda: relevancy_maps(mixed, method, pix, txt, start, args.batch), args.n, dev)
            rows.append((fp32.spec.name, dev, method, start if method == "chefer" else "-", f"{single:,.1f}",
                         mixed_spec.precision, args.batch, f"{batched:,.1f}", f"{batched / single:.1f}x"))
    head = ("model", "device", "method", "start", "batch-1 fp32 img/s", "batched precision", "batch",
            "batched img/s", "speed-up")
    print_table(head, rows)


if __name__ == "__main__":
    main()
