"""Tensor operations per image in each stage of the GPU path, counted on CPU: what a GPU pays per launch.

    python bench/launches.py [--folder DIR | --n 256] [--stages classify relevancy regions captions] [--pil]

On a GPU, a small operation costs its launch (~5-20 µs of host time, whatever its size); per-image or per-crop
operations therefore bound a stage's images/s long before the arithmetic does, and a result copied to the host
(`.item()`, `.tolist()`) waits for everything queued before it. With no GPU at hand, this runs one shard through
the driver with the GPU code paths forced on CPU (JPEGs decoded and preprocessed as tensor ops, captions' crops
cut as tensors) and counts every tensor operation each stage dispatches, views apart (no kernel), and the scalar
reads; `--pil` keeps the CPU's PIL paths instead, to compare with. Lower is better; the counts do not depend on
the machine. On CPU `decode_jpeg` runs once per image (on a
GPU, once per batch), and `.tolist()` copies are not operations (on a GPU, one wait per call).
"""
from __future__ import annotations

import argparse
import collections
import tempfile
import time
from pathlib import Path

from torch.utils._python_dispatch import TorchDispatchMode

from timing import print_table  # bench/timing.py (scripts run from bench/ on sys.path)

VIEWS = {"view", "slice", "expand", "_unsafe_view", "permute", "transpose", "t", "unsqueeze", "select", "alias",
         "detach", "as_strided", "squeeze", "_reshape_alias", "split", "unbind", "lift_fresh"}
SCALAR_READS = "_local_scalar_dense"  # `.item()`, `bool(t)`, `int(t)`: on a GPU each waits for the queue


class Count(TorchDispatchMode):
    """Every aten operation dispatched in this thread, by name."""

    def __init__(self):
        super().__init__()
        self.ops: collections.Counter[str] = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--folder", help="an ImageFolder of JPEGs (default: N synthetic 500×375 JPEGs)")
    ap.add_argument("--n", type=int, default=256, help="synthetic images (without --folder)")
    ap.add_argument("--stages", nargs="+", default=["classify", "relevancy", "regions", "captions"])
    ap.add_argument("--top", type=int, default=6, help="most frequent operations listed per stage")
    ap.add_argument("--pil", action="store_true", help="keep the PIL paths (the CPU reference) instead")
    args = ap.parse_args()

    from mapcap.tasks.pipeline.params import ExplainParams
    from mapcap.tasks.decode import geometry
    from mapcap.tasks import concept_views
    from mapcap.tasks.pipeline import driver, images, reuse
    from mapcap.tasks.stages import captions

    tmp = Path(tempfile.mkdtemp(prefix="mapcap-launches-"))
    if args.folder is None:
        from pipeline import synthetic  # bench/pipeline.py, beside this file
        args.folder = str(synthetic(tmp / "data", args.n))
    # the GPU branches, taken on CPU (tests/tasks/test_decode.py holds them equal to the PIL path)
    if not args.pil:  # where the shard decodes, and the stages that cut views from its frames
        images.tensor_decode = captions.tensor_decode = concept_views.tensor_decode = lambda pre, dev: geometry(pre)
    params = ExplainParams.model_validate({"dataset": args.folder, "out": str(tmp / "out"), "run_name": "launches",
                                           "shard_size": 10 ** 9, "stages": args.stages, "device": "cpu"})
    resolved = params.resolve()
    counted: dict[str, tuple[collections.Counter, float]] = {}
    compute = reuse.compute

    def counting(stage, *a, **k):
        t0, c0, mode = time.perf_counter(), time.process_time(), Count()
        with mode:
            out = compute(stage, *a, **k)
        counted[stage.name] = mode.ops, time.perf_counter() - t0, time.process_time() - c0
        return out

    reuse.compute = counting
    items = list(resolved.plan.shards[0])
    driver.run_shard(list(resolved.shard_stages), str(tmp / "out"), resolved.plan.run_id, 0, items, True)
    n = len(items)
    paths = "PIL paths (CPU reference)" if args.pil else "GPU code paths forced on CPU"
    print(f"{n} images, model {resolved.plan.model.name}; {paths}; per image:")
    rows = [["stage", "ops", "ops besides views", "scalar reads", "seconds", "CPU ms/image", "most frequent"]]
    for name, (ops, sec, cpu) in counted.items():
        work = {k: v for k, v in ops.items() if k not in VIEWS}
        rows.append([name, f"{sum(ops.values()) / n:.1f}", f"{sum(work.values()) / n:.1f}",
                     f"{ops[SCALAR_READS] / n:.2f}", f"{sec:.2f}", f"{cpu / n * 1000:.1f}",
                     ", ".join(f"{k} {v / n:.1f}" for k, v in collections.Counter(work).most_common(args.top))])
    print_table(rows[0], rows[1:])


if __name__ == "__main__":
    main()
