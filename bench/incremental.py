"""The nightly run over a growing dataset: a full run, then 1 % new images and a new run (reuse by content).

    python bench/incremental.py --n-per-class 1250 --work /tmp/inc   # 10,000 toy images, every stage

Prints both runs' wall times (the whole `mapcap run` command, Prefect's ephemeral API included), the rows each
stage reused, and whether the old images' rows of every per-image table are identical in both runs.
"""
from __future__ import annotations

import argparse
import json
import math
import shutil
import subprocess
import sys
import time
from pathlib import Path

from mapcap.storage.query import connect, run_sql
from mapcap.toy.dataset import write_toy_dataset

TABLES = ("predictions", "relevancy", "regions", "captions", "concepts", "mutual_knowledge", "failures")


def timed_run(data: Path, out: Path, run: str, extra: list[str]) -> float:
    cmd = [str(Path(sys.executable).parent / "mapcap"), "run", str(data), "--out", str(out), "--run-name", run,
           "--device", "cpu", *extra]
    t = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t


def old_rows_identical(out: Path, old_ids: set[str]) -> dict[str, tuple[int, bool]]:
    """{table: (rows of old images, identical in both runs)}; run_id and shard aside."""
    con, res = connect(str(out)), {}
    for table in TABLES:
        def rows(run: str) -> list[str]:
            got = run_sql(con, f"SELECT * EXCLUDE (run_id, shard) FROM {table} WHERE run_id = ?", [run]).to_pylist()
            return sorted(json.dumps(r, sort_keys=True, default=str) for r in got if r.get("image_id") in old_ids)
        a, b = rows("night-1"), rows("night-2")
        res[table] = (len(a), a == b)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-per-class", type=int, default=1250, help="toy images per class (8 classes)")
    ap.add_argument("--new-share", type=float, default=0.01, help="share of new images added before run 2")
    ap.add_argument("--work", default="/tmp/mapcap-incremental")
    ap.add_argument("--stages", nargs="*", help="stages (default: every stage the run can do)")
    args = ap.parse_args()
    work = Path(args.work)
    data, out = work / "data", work / "out"
    shutil.rmtree(out, ignore_errors=True)
    if not data.exists():
        write_toy_dataset(data, args.n_per_class, seed=2024, split="test")
    extra = ["--stages", *args.stages] if args.stages else []
    first = timed_run(data, out, "night-1", extra)
    old_ids = set(run_sql(connect(str(out)), "SELECT image_id FROM images WHERE run_id = 'night-1'").column(0)
                  .to_pylist())
    n_new = math.ceil(args.n_per_class * args.new_share)
    new = work / "new"
    shutil.rmtree(new, ignore_errors=True)
    write_toy_dataset(new, n_new, seed=4048, split="test")
    for p in new.rglob("*.png"):
        shutil.copy(p, data / p.parent.name / f"new-{p.name}")
    second = timed_run(data, out, "night-2", extra)
    con = connect(str(out))
    stages = json.loads(run_sql(con, "SELECT stages_json FROM runs WHERE run_id = 'night-2'").column(0)[0].as_py())
    n1 = len(old_ids)
    print(f"run 1: {n1} images, {first:.1f} s; run 2: {n1 + 8 * n_new} images ({8 * n_new} new), {second:.1f} s "
          f"= {100 * second / first:.1f} % of run 1")
    for name, s in stages.items():
        if "rows_reused" in s:
            print(f"  {name}: rows {s['rows']}, reused {s['rows_reused']}, {s['seconds']} s")
        elif s.get("status") == "ran":
            print(f"  {name} (per run): {s['seconds']} s")
    for table, (n, same) in old_rows_identical(out, old_ids).items():
        print(f"  {table}: {n} rows of old images, identical: {same}")


if __name__ == "__main__":
    main()
