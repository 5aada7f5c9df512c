"""DuckDB query time for `mapcap classes` over a large run, before and after `mapcap compact`.

    python bench/compaction.py --images 100000 --per-shard 256 --root /tmp/mapcap-compaction

The run's `images` and `predictions` files are synthetic (random labels and predictions, 5 templates + the
ensemble per image), in the real schema and layout: one file per table and shard, as the flow writes them.
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from mapcap.storage.compact import compact_run
from mapcap.storage.layout import list_files
from mapcap.storage.query import connect, named_query
from mapcap.storage.schemas import schema_for
from mapcap.storage.writer import filesystem, shard_name, write_table

CLASSES = ["circle", "square", "triangle", "star", "ring", "cross", "diamond", "hexagon"]
TEMPLATES = ["{}", "a photo of a {}.", "a drawing of a {}.", "a {} shape.", "a picture of a {}.", "ensemble"]


def synthesize(root: str, run: str, n: int, per_shard: int, seed: int = 0) -> int:
    rng = np.random.default_rng(seed)
    shards = -(-n // per_shard)
    for s in range(shards):
        k = min(per_shard, n - s * per_shard)
        ids = [f"{s:06d}{i:010d}" for i in range(k)]
        labels = rng.integers(0, len(CLASSES), k)
        write_table(root, "images", run, shard_name(s), pa.table({
            "run_id": [run] * k, "image_id": ids, "path": [f"/data/{CLASSES[c]}/{i}.png" for c, i in zip(labels, ids)],
            "label": [CLASSES[c] for c in labels], "shard": [s] * k, "width": [64] * k, "height": [64] * k},
            schema=schema_for("images")), config={"stage": "classify"}, config_hash=f"h{s}")
        t = len(TEMPLATES)
        preds = np.where(rng.random((t, k)) < 0.9, labels, rng.integers(0, len(CLASSES), (t, k)))
        probs = rng.random((t, k)).astype(np.float32)
        write_table(root, "predictions", run, shard_name(s), pa.table({
            "run_id": [run] * (t * k), "image_id": ids * t, "shard": [s] * (t * k),
            "template": [tp for tp in TEMPLATES for _ in range(k)], "label": [CLASSES[c] for c in labels] * t,
            "pred": [CLASSES[c] for c in preds.ravel()], "correct": (preds == labels).ravel(),
            "pred_prob": probs.ravel(), "label_prob": probs.ravel(), "label_rank": [0] * (t * k),
            "topk_labels": [[CLASSES[c]] for c in preds.ravel()], "topk_probs": [[p] for p in probs.ravel()]},
            schema=schema_for("predictions")), config={"stage": "classify"}, config_hash=f"h{s}")
    write_table(root, "runs", run, "run", [{"run_id": run, "status": "finished", "n_images": n,
                                            "n_shards": shards}])
    return shards


def query_seconds(root: str, run: str, repeats: int) -> tuple[float, float]:
    """Median seconds of (open the views, the per-class query)."""
    opens, queries = [], []
    for _ in range(repeats):
        t = time.perf_counter()
        con = connect(root)
        t1 = time.perf_counter()
        named_query(con, "per_class_accuracy", run)
        opens.append(t1 - t)
        queries.append(time.perf_counter() - t1)
    return statistics.median(opens), statistics.median(queries)


def cli_seconds(root: str, run: str) -> float:
    t = time.perf_counter()
    subprocess.run([str(Path(sys.executable).parent / "mapcap"), "classes", run, "--root", root], check=True,
                   stdout=subprocess.DEVNULL)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=100_000)
    ap.add_argument("--per-shard", type=int, default=256)
    ap.add_argument("--root", default="/tmp/mapcap-compaction")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    shutil.rmtree(args.root, ignore_errors=True)
    t = time.perf_counter()
    shards = synthesize(args.root, "big", args.images, args.per_shard)
    print(f"{args.images} images in {shards} shards written in {time.perf_counter() - t:.1f} s")
    fs, base = filesystem(args.root)
    rows = []
    for when in ("before", "after"):
        if when == "after":
            t = time.perf_counter()
            compact_run(args.root, "big")
            print(f"compaction: {time.perf_counter() - t:.1f} s")
        files = len(list_files(fs, base, "predictions", "big"))
        opened, query = query_seconds(args.root, "big", args.repeats)
        rows.append((when, files, opened, query, cli_seconds(args.root, "big")))
    print("| | predictions files | open views (s) | per-class query (s) | `mapcap classes` command (s) |")
    print("|---|---|---|---|---|")
    for when, files, opened, query, cli in rows:
        print(f"| {when} compaction | {files} | {opened:.3f} | {query:.3f} | {cli:.2f} |")


if __name__ == "__main__":
    main()
