"""The same plain-loop run of bench/pipeline.py before and after: seconds per stage of an earlier commit and of
this checkout, side by side, in one command.

    python bench/compare.py --before 7bc712a --folder DIR [--shard-size 128] [--in-flight 1] [--model toy] [--stages ...]

Each side runs in its own process with its own `mapcap` on the path: the earlier commit from a temporary git
worktree (its pyproject's package-dir mapping rebuilt as symlinks, so nothing is installed), this checkout as it
is. Only the plain loop runs (the stage plans without Prefect, as `pipeline.py` times them); a 1,000-photo
4000×3000 run of code from before issue 33 needs `--shard-size 128 --in-flight 1` on a 24 GB machine (it held
15.8 GB at that size; in one shard it was killed out of memory at 21 GB). Also prints CPU seconds (the process
and its workers) and peak memory, which a busy machine disturbs less than wall time.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

from timing import print_table  # bench/timing.py (scripts run from bench/ on sys.path)

REPO = Path(__file__).resolve().parent.parent
RUNNER = r'''
import argparse, json, os, resource, sys, tempfile, time
from pathlib import Path
import pipeline as P
folder, out_json, shard, in_flight, model = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
args = argparse.Namespace(model=model, device="auto", shard_size=shard or None, stages=sys.argv[6:] or None,
                          workers=None, compile=False)
tmp = Path(tempfile.mkdtemp(prefix="mapcap-compare-"))
resolved = P.params_for(args, folder, str(tmp / "plain")).resolve()
def cpu():
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime
c0 = cpu()
wall, per = P.plain_loop(resolved, str(tmp / "plain"), None, in_flight)
json.dump({"n": resolved.plan.n_images, "shards": len(resolved.plan.shards), "wall_s": wall, "cpu_s": cpu() - c0,
           "stages": per, "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
           "load": os.getloadavg()[0]}, open(out_json, "w"))
'''


def package_dir(checkout: Path, into: Path) -> Path:
    """A folder holding `mapcap` as the checkout's pyproject maps it (package-dir), as symlinks: put first on
    PYTHONPATH, it shadows the installed mapcap (an editable install's finder comes after the path)."""
    mapping = tomllib.loads((checkout / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    root = into / "mapcap"
    root.mkdir(parents=True)
    for f in (checkout / mapping.get("mapcap", "mapcap")).iterdir():
        (root / f.name).symlink_to(f)
    for name, folder in mapping.items():
        if name.count(".") == 1:  # mapcap.<sub> -> its folder (deeper packages are its subfolders)
            (root / name.split(".")[1]).symlink_to(checkout / folder)
    return into


def run_side(checkout: Path, args, work: Path, label: str) -> dict:
    """The plain loop of `checkout`'s bench/pipeline.py on args.folder, in a process of its own."""
    pkg = package_dir(checkout, work / f"pkg-{label}")
    out = work / f"{label}.json"
    env = os.environ | {"PYTHONPATH": os.pathsep.join([str(pkg), str(checkout / "bench")])}
    cmd = [sys.executable, "-c", RUNNER, args.folder, str(out), str(args.shard_size or 0), str(args.in_flight),
           args.model, *(args.stages or [])]
    done = subprocess.run(cmd, cwd=checkout / "bench", env=env)
    if done.returncode != 0:
        raise SystemExit(f"the {label} run ({checkout}) failed with exit code {done.returncode} (-9: killed, often "
                         f"out of memory: try --shard-size 128 --in-flight 1)")
    return json.loads(out.read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--before", required=True, help="a commit of this repository (e.g. 7bc712a)")
    ap.add_argument("--folder", required=True, help="an ImageFolder (pipeline.py --write-only writes one)")
    ap.add_argument("--shard-size", type=int, help="images per shard on both sides (default: the flow's)")
    ap.add_argument("--in-flight", type=int, default=2, help="shards in flight in the plain loop (default 2)")
    ap.add_argument("--model", default="toy")
    ap.add_argument("--stages", nargs="+", help="stages to run on both sides (default: every stage the run can do)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="mapcap-compare-") as tmp:
        work = Path(tmp)
        tree = work / "before"
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(tree), args.before], check=True,
                       capture_output=True)
        try:
            before = run_side(tree, args, work, "before")
        finally:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(tree)], check=False)
        after = run_side(REPO, args, work, "after")
    rows = []
    for name in dict.fromkeys([*before["stages"], *after["stages"]]):
        b, a = before["stages"].get(name), after["stages"].get(name)
        rows.append([name, f"{b:.2f}" if b is not None else "-", f"{a:.2f}" if a is not None else "-",
                     f"{b / a:.1f}×" if b and a else "-"])
    for key, label in (("wall_s", "end to end (wall s)"), ("cpu_s", "CPU s (process + workers)")):
        rows.append([label, f"{before[key]:.1f}", f"{after[key]:.1f}", f"{before[key] / after[key]:.1f}×"])
    rows.append(["peak memory (MB)", f"{before['rss_mb']:,.0f}", f"{after['rss_mb']:,.0f}", ""])
    print(f"{after['n']} images of {args.folder} in {after['shards']} shard(s) ({args.in_flight} in flight); "
          f"before = {args.before}, after = this checkout; load average at the end: {before['load']:.1f} / "
          f"{after['load']:.1f}")
    print_table(["stage", "before s", "after s", "faster"], rows)


if __name__ == "__main__":
    main()
