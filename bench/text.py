"""Prompts/s of the text tower: the tokenizer's whole context (`encode_text`) against the positions a batch uses
(`tasks/text_tower.text_features`), on CLIP's 80 templates × N class names, and the largest difference.

    python bench/text.py [--models toy ViT-B-16] [--classes 8] [--batch 512] [--device auto] [--precision fp32 bf16]

Random weights give the real cost of a model (no download needed). Prints a table.
"""
from __future__ import annotations

import argparse

import mapcap  # noqa: F401  (before torch: it sets the OpenMP wait policy)

import torch

from timing import print_table, rate  # bench/timing.py (scripts run from bench/ on sys.path)
from mapcap.tasks.models import autocast, load_model, resolve_spec
from mapcap.tasks.templates import resolve_templates
from mapcap.tasks.text_tower import text_features


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="+", default=["toy", "ViT-B-16"])
    ap.add_argument("--classes", type=int, default=8, help="class names (× 80 templates)")
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--precision", nargs="+", default=["fp32"])
    args = ap.parse_args()
    rows = [["model", "device", "precision", "prompts", "whole context (prompts/s)", "used positions (prompts/s)",
             "speed-up", "max |diff|"]]
    for name, precision in [(m, p) for m in args.models for p in args.precision]:
        lm = load_model(resolve_spec(name, "toy" if name == "toy" else "", args.device, precision))
        prompts = [t.format(f"class number {c}") for c in range(args.classes) for t in resolve_templates("openai")]
        batches = [lm.tokenizer(prompts[i:i + args.batch]).to(lm.spec.device)
                   for i in range(0, len(prompts), args.batch)]

        def run(fn):
            with torch.no_grad(), autocast(lm):
                return torch.cat([fn(b).float() for b in batches])
        whole = rate(lambda: run(lm.model.encode_text), len(prompts), lm.spec.device)
        used = rate(lambda: run(lambda b: text_features(lm.model, b)), len(prompts), lm.spec.device)
        diff = (run(lm.model.encode_text) - run(lambda b: text_features(lm.model, b))).abs().max().item()
        rows.append([name, lm.spec.device, lm.spec.precision, f"{len(prompts):,}", f"{whole:,.0f}", f"{used:,.0f}",
                     f"{used / whole:.1f}x", f"{diff:.1e}"])
    print_table(rows[0], rows[1:])


if __name__ == "__main__":
    main()
