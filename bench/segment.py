"""Regions as batched tensor ops against the scikit-image reference, on a run's stored maps: ms per map and the
IoU of matched regions (in image pixels).

    python bench/segment.py --root OUT [--run bench] [--n 512] [--size 4000x3000]

OUT is a run's output root (e.g. the `flow` folder `bench/pipeline.py` leaves in /tmp/mapcap-pipeline-*); each
map is segmented at its image's size, or at `--size` for every map (a 500×375 run's maps as photos' maps).
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from mapcap.storage.writer import read_run
from mapcap.tasks.masks import full_mask
from mapcap.tasks.pipeline.procpool import process_map
from mapcap.tasks.segment import SegmentConfig, segment_job
from mapcap.tasks.segment_batch import CHUNK, segment_chunk
from pipeline import image_size  # bench/pipeline.py (scripts run from bench/ on sys.path)
from timing import print_table  # bench/timing.py


def matched_iou(ref: list[list[dict]], got: list[list[dict]], sizes: list[tuple[int, int]]) -> tuple[float, float]:
    """(lowest IoU of regions matched by rank, share of maps whose regions are identical)."""
    worst, same = 1.0, 0
    for a, b, size in zip(ref, got, sizes):
        same += [(r["bbox"], r["mask_rle"]) for r in a] == [(r["bbox"], r["mask_rle"]) for r in b]
        if len(a) != len(b):
            worst = 0.0
        for x, y in zip(a, b):
            fx, fy = full_mask(x, size), full_mask(y, size)
            worst = min(worst, float((fx & fy).sum() / max((fx | fy).sum(), 1)))
    return worst, same / max(len(ref), 1)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", required=True)
    ap.add_argument("--run", default="bench")
    ap.add_argument("--n", type=int, default=512, help="maps (the first n)")
    ap.add_argument("--size", type=image_size, help="segment every map over an image of this WxH")
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    rel = read_run(args.root, "relevancy", args.run).slice(0, args.n).to_pylist()
    dims = {r["image_id"]: (r["width"], r["height"]) for r in read_run(args.root, "images", args.run).to_pylist()}
    sizes = [args.size or dims[r["image_id"]] for r in rel]
    cells = np.array([r["map"] for r in rel], np.float32).reshape(len(rel), rel[0]["grid"], rel[0]["grid"])
    cfg = SegmentConfig()
    jobs = [(m.ravel().tolist(), m.shape[0], s, cfg, None) for m, s in zip(cells, sizes)]
    chunks = [(cells[c:c + CHUNK], sizes[c:c + CHUNK], cfg) for c in range(0, len(rel), CHUNK)]
    timings = []
    for name, run in (("scikit-image, 1 process", lambda: [segment_job(j) for j in jobs]),
                      (f"scikit-image, {args.workers} processes", lambda: process_map(segment_job, jobs, args.workers)),
                      ("tensor ops, 1 process", lambda: [r for c in chunks for r in segment_chunk(c).rows(len(c[1]))]),
                      (f"tensor ops, {args.workers} processes", lambda: [
                          r for c, part in zip(chunks, process_map(segment_chunk, chunks, args.workers, min_items=2))
                          for r in part.rows(len(c[1]))])):
        run()  # warm-up: pools started, caches filled
        t0 = time.perf_counter()
        out = run()
        timings.append((name, time.perf_counter() - t0, out))
    ref = timings[0][2]
    rows = []
    for name, sec, out in timings:
        worst, same = matched_iou(ref, out, sizes)
        rows.append([name, f"{1000 * sec / len(rel):.2f}", f"{worst:.3f}", f"{same:.1%}"])
    print(f"{len(rel)} maps of {args.root} (run {args.run}), images {sorted(set(sizes))[:3]}")
    print_table(["segmentation", "ms per map", "lowest IoU of matched regions", "maps identical"], rows)


if __name__ == "__main__":
    main()
