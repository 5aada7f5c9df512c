"""Relevancy maps per second, per method × tower family: one image at a time in fp32, the batched path (mixed
precision on a GPU), and the authors' code one image at a time where bench/reference_speed.py measured it.

    python bench/relevancy.py [--models toy ViT-B-16 EVA02-B-16 ViT-B-16-SigLIP RN50 convnext_tiny]
                              [--methods chefer legrad ...] [--batch 32] [--n 32] [--n-single 8]
                              [--start-layer 0 -1] [--precision auto|fp32|bf16|fp16] [--device auto]

Random weights give the real cost; the towers are built by open_clip without their tokenizers (SigLIP's is not
on this machine), the texts are random unit vectors. Methods default to every one the tower supports but the
random map. `--start-layer` applies to chefer (0: all blocks, the costliest; -1: the last block); legrad runs at
its default (the last two blocks).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import mapcap  # noqa: F401  (before torch: it sets the OpenMP wait policy)

import open_clip
import torch
import torch.nn.functional as F

from timing import print_table, rate  # bench/timing.py (scripts run from bench/ on sys.path)
from mapcap.tasks.models import LoadedModel, ModelSpec, load_model, resolve_device, resolve_precision, resolve_spec
from mapcap.tasks.relevancy.methods import METHODS, default_start_layer, relevancy_maps, supported
from mapcap.tasks.relevancy.towers import tower_of

AUTHORS = Path(__file__).parent / "results" / "reference_speed.json"  # bench/reference_speed.py's record


def tower_model(name: str, device: str, precision: str) -> tuple[LoadedModel, LoadedModel]:
    """(fp32, mixed) views of one model with random weights (the toy: its own weights)."""
    if name == "toy":
        fp32 = load_model(resolve_spec(name, "toy", device, "fp32"))
    else:
        torch.manual_seed(0)
        model = open_clip.create_model(name).to(resolve_device(device)).eval()
        fp32 = LoadedModel(ModelSpec(name, "", resolve_device(device), "fp32"), model, None, None)
    dev = fp32.spec.device
    mixed = LoadedModel(ModelSpec(fp32.spec.name, fp32.spec.pretrained, dev, resolve_precision(precision, dev)),
                        fp32.model, fp32.preprocess, fp32.tokenizer)
    return fp32, mixed


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="+", default=["toy", "ViT-B-16", "EVA02-B-16", "ViT-B-16-SigLIP", "RN50",
                                                    "convnext_tiny"])
    ap.add_argument("--methods", nargs="+", default=None, help="default: every method the tower supports")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--n", type=int, default=32, help="maps per measurement")
    ap.add_argument("--n-single", type=int, default=8, help="maps for the batch-1 fp32 loop")
    ap.add_argument("--start-layer", nargs="+", type=int, default=[0, -1], help="Chefer start blocks")
    ap.add_argument("--precision", default="auto", help="of the batched path: auto (bf16 on GPU), fp32, bf16, fp16")
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    authors = json.loads(AUTHORS.read_text()) if AUTHORS.exists() else {}
    rows = []
    for name in args.models:
        fp32, mixed = tower_model(name, args.device, args.precision)
        dev, kind = fp32.spec.device, tower_of(fp32.model.visual).kind
        size = fp32.model.visual.image_size
        size = size[0] if isinstance(size, (tuple, list)) else size
        pix = torch.randn(args.n, 3, size, size, device=dev)
        with torch.no_grad():
            d = fp32.model.encode_image(pix[:1]).shape[1]
        txt = F.normalize(torch.randn(args.n, d, device=dev), dim=-1)
        methods = [m for m in (args.methods or supported(kind)) if m != "random" and kind in METHODS[m].kinds]
        runs = [(m, s) for m in methods for s in (args.start_layer if m == "chefer" else
                                                 [default_start_layer(name, m) if METHODS[m].start else None])]
        for method, start in runs:
            k = args.n_single
            single = rate(lambda: [relevancy_maps(fp32, method, pix[i:i + 1], txt[i:i + 1], start) for i in range(k)],
                          k, dev)
            batched = rate(lambda: relevancy_maps(mixed, method, pix, txt, start, args.batch), args.n, dev)
            ref = authors.get(f"{method}_{name}", authors.get(method, {}))
            theirs = ref.get("img_per_s") if ref.get("model") == name and dev == "cpu" else None
            rows.append((name, kind, dev, method, "-" if start is None else start, f"{single:,.1f}",
                         mixed.spec.precision, args.batch, f"{batched:,.1f}", f"{batched / single:.1f}x",
                         f"{theirs:,.1f}" if theirs else "-", f"{batched / theirs:.1f}x" if theirs else "-"))
    head = ("model", "tower", "device", "method", "start", "batch-1 fp32 img/s", "batched precision", "batch",
            "batched img/s", "vs batch-1", "authors' code batch-1 img/s", "vs authors")
    print_table(head, rows)


if __name__ == "__main__":
    main()
