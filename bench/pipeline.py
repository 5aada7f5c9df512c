"""The whole pipeline, end to end: images/s per stage, of the flow, and Prefect's share of the wall time.

    python bench/pipeline.py [--n 256] [--size 500x375] [--folder DIR] [--model toy|ViT-B-16] [--device auto]
                             [--compare]

Without `--folder` it writes N synthetic JPEGs of `--size` (500×375 by default; 4000x3000 for phone photos: toy
scenes, upscaled, in class folders). It runs the real
`explain` flow (every stage the run can do), then the same stage plans in a plain loop over the shards (the
driver without Prefect), and prints one table from the per-stage timings both record. `ViT-B-16` runs with
random weights (the real cost; nothing to download) and the toy world's banks. `--compare` adds the reference
numbers measured on one H100 (issue "Throughput").
"""
from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

from mapcap.cli.startup import flow_settings
from mapcap.flows.explain import explain
from mapcap.tasks.pipeline.params import ExplainParams
from mapcap.storage.query import connect, run_sql
from mapcap.tasks.pipeline.run_record import record_run
from mapcap.tasks.pipeline.sharding import SHARDS_IN_FLIGHT
from mapcap.tasks.pipeline.driver import run_run_stage, run_shard
from mapcap.toy.concepts import TOY_CONCEPTS
from mapcap.toy.plugin import phrase_bank_file
from timing import print_table  # bench/timing.py (scripts run from bench/ on sys.path)

REFERENCE = {"classify": "6,600 (eager) / 10,410 (compile) img/s", "relevancy": "1,730 (all blocks) / 5,690 "
             "(last block) img/s", "captions": "2,617 captions/s (batch 512)", "decode": "202 img/s per core (PIL)"}


def _scenes(folder: Path, lo: int, hi: int, size: tuple[int, int] = (500, 375)) -> None:
    import numpy as np
    from PIL import Image

    from mapcap.toy.dataset import make_scene
    from mapcap.toy.shapes import SHAPES

    rng = np.random.default_rng(10_000 + lo)
    for i in range(lo, hi):
        shape = SHAPES[i % len(SHAPES)]
        scene = make_scene(rng, shape=shape)
        Image.fromarray(scene.image).resize(size).save(folder / shape / f"{i:06d}.jpg", quality=90)


def synthetic(folder: Path, n: int, jobs: int = 1, size: tuple[int, int] = (500, 375)) -> Path:
    """n JPEGs of PIL size (W, H) of toy scenes in class folders (decode cost of photos), in `jobs` processes."""
    from concurrent.futures import ProcessPoolExecutor

    from mapcap.toy.shapes import SHAPES

    for shape in SHAPES:
        (folder / shape).mkdir(parents=True, exist_ok=True)
    starts = range(0, n, 1000)
    with ProcessPoolExecutor(max(1, jobs)) as pool:
        list(pool.map(_scenes, [folder] * len(starts), starts, [min(n, lo + 1000) for lo in starts],
                      [size] * len(starts)))
    return folder


def image_size(text: str) -> tuple[int, int]:
    """'4000x3000' -> (4000, 3000)."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"size {text!r} is not WxH, e.g. 4000x3000") from e
    return w, h


def params_for(args, dataset: str, out: str) -> ExplainParams:
    extra = {} if args.model == "toy" else {"pretrained": "", "concepts": {"descriptors": str(TOY_CONCEPTS)},
                                            "captions": {"phrase_bank": str(phrase_bank_file())}}
    return ExplainParams.model_validate({"dataset": dataset, "model": args.model, "out": out, "device": args.device,
                                         "shard_size": args.shard_size, "run_name": "bench", "stages": args.stages,
                                         "workers": args.workers, "compile": args.compile, **extra})


def plain_loop(resolved, out: str, workers: int | None, in_flight: int = SHARDS_IN_FLIGHT,
               profile: str | None = None) -> tuple[float, dict[str, float]]:
    """The same stage plans without Prefect, as many shards in flight as the flow: (wall seconds, seconds per
    stage summed over shards). With `profile`, shards run one after another under cProfile (it sees the thread
    that enabled it: work in a shard's thread pools shows as waiting in `StageContext.map`) and the top
    functions go to that file."""
    record_run(out, resolved, {}, "running", datetime.now(timezone.utc))  # the report reads the run's row
    t0 = time.perf_counter()
    run_id = resolved.plan.run_id

    def shard(i: int) -> dict:
        return run_shard(list(resolved.shard_stages), out, run_id, i, list(resolved.plan.shards[i]), True, workers)

    if profile:
        prof = cProfile.Profile()
        prof.enable()
        shards = [shard(i) for i in range(len(resolved.plan.shards))]
        prof.disable()
        with open(profile, "w") as f:
            for order, n in (("cumulative", 60), ("tottime", 30)):
                pstats.Stats(prof, stream=f).sort_stats(order).print_stats(n)
    else:
        with ThreadPoolExecutor(in_flight) as ex:
            shards = list(ex.map(shard, range(len(resolved.plan.shards))))
    runs: dict[str, dict] = {}
    for sp in resolved.run_stages:
        runs[sp.name] = run_run_stage(sp, out, run_id, shards, runs, True, workers)
    per = {sp.name: sum(s["stages"][sp.name]["seconds"] for s in shards) for sp in resolved.shard_stages}
    per |= {n: r["seconds"] for n, r in runs.items()}
    return time.perf_counter() - t0, per


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=256, help="synthetic images (without --folder)")
    ap.add_argument("--size", type=image_size, default=(500, 375), help="WxH of the synthetic JPEGs (default "
                    "500x375; 4000x3000: phone photos)")
    ap.add_argument("--folder", help="an ImageFolder to run on instead of synthetic JPEGs")
    ap.add_argument("--write-only", metavar="DIR", help="only write the N synthetic JPEGs into DIR (then --folder DIR)")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="processes writing synthetic JPEGs")
    ap.add_argument("--model", default="toy", help="toy (default) or an open_clip name, run with random weights")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--shard-size", type=int, help="images per shard (default: the flow's, 1024 on CPU)")
    ap.add_argument("--workers", type=int, help="threads per shard (default: one per core, at most 16)")
    ap.add_argument("--stages", nargs="+", help="stages to run (default: every stage the run can do)")
    ap.add_argument("--compare", action="store_true", help="add the H100 reference numbers")
    ap.add_argument("--compile", action="store_true", help="torch.compile the image tower (the run parameter "
                    "`compile`; compiled during the warm-up run, which the table does not count)")
    ap.add_argument("--profile", metavar="FILE", help="run the plain loop's shards one by one under cProfile, "
                    "top functions to FILE (its wall time is then not comparable with the flow's)")
    args = ap.parse_args()
    if args.write_only:
        synthetic(Path(args.write_only), args.n, args.jobs, args.size)
        return
    tmp = Path(tempfile.mkdtemp(prefix="mapcap-pipeline-"))
    dataset = args.folder or str(synthetic(tmp / "data", args.n, args.jobs, args.size))
    params = params_for(args, dataset, str(tmp / "flow"))
    resolved = params.resolve()
    n = resolved.plan.n_images
    with flow_settings():  # as `mapcap run` runs it on the temporary server
        t0 = time.perf_counter()
        explain(params)  # warm-up: models load (and compile) once per process, as in a long run
        warm_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        explain(params.model_copy(update={"force": True}))
        flow_s = time.perf_counter() - t0
    row = run_sql(connect(str(tmp / "flow")), "SELECT stages_json FROM runs WHERE run_id = 'bench'").to_pylist()[0]
    flow_stages = json.loads(row["stages_json"])
    plain_s, per = plain_loop(resolved, str(tmp / "plain"), args.workers, profile=args.profile)
    print(f"{n} images in {len(resolved.plan.shards)} shard(s), model {resolved.plan.model.name} on "
          f"{resolved.plan.model.device}/{resolved.plan.model.precision}; skipped: "
          f"{[s for s, _ in resolved.skipped] or 'none'}")
    print(f"{SHARDS_IN_FLIGHT} shard(s) in flight; a stage's seconds are summed over its shards; the warm-up run "
          f"(model loads{', torch.compile' if args.compile else ''}) took {warm_s:.1f} s")
    head = ["stage", "seconds (plain loop)", "images/s", "seconds (in the flow)"] + (["H100 reference"] if
                                                                                       args.compare else [])
    rows = []
    for name, sec in per.items():
        inflow = flow_stages.get(name, {}).get("seconds")
        rows.append([name, f"{sec:.2f}", f"{n / sec:,.0f}" if sec else "-", f"{inflow:.2f}" if inflow else "-"]
                    + ([REFERENCE.get(name, "")] if args.compare else []))
    rows.append(["end to end", f"{plain_s:.2f}", f"{n / plain_s:,.1f}", f"{flow_s:.2f}"]
                + (["800 img/s (target, whole pipeline)"] if args.compare else []))
    print_table(head, rows)
    print("where the flow's stage seconds went (summed over shards; GPU work waited for at the end of each part):")
    for name, rec in flow_stages.items():
        if rec.get("phases"):
            print(f"  {name}: " + ", ".join(f"{k} {v:.2f}" for k, v in rec["phases"].items()))
    dev = flow_stages.get("device", {})
    print(f"device busy share in the flow: {dev.get('busy_share')} ({dev.get('busy_s')} s held by model stages, "
          f"{dev.get('wait_s')} s waited for by shards in flight; tasks/device_turn.py)")
    if args.profile:  # the plain loop ran its shards one at a time, slowed by the profiler: no comparison
        print(f"Prefect's share: not measured with --profile (flow {flow_s:.1f} s; the profiled plain loop "
              f"{plain_s:.1f} s ran its shards one at a time); profile in {args.profile}")
    else:
        print(f"Prefect's share of the flow's wall time: {max(0.0, 1 - plain_s / flow_s):.0%} "
              f"(flow {flow_s:.1f} s vs plain loop {plain_s:.1f} s)")


if __name__ == "__main__":
    main()
