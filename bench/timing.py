"""Shared timing for the benchmarks: items per second of a warmed-up call, GPU work synchronised."""
from __future__ import annotations

import time
from collections.abc import Callable

import torch


def sync(dev: str) -> None:
    if dev.startswith("cuda"):
        torch.cuda.synchronize()


def rate(fn: Callable[[], object], n: int, dev: str) -> float:
    """n / seconds of one call of fn, after one warm-up call."""
    fn()
    sync(dev)
    t = time.perf_counter()
    fn()
    sync(dev)
    return n / (time.perf_counter() - t)


def print_table(head: list[str], rows: list[list]) -> None:
    """The benchmarks' plain-text table: a header, a rule, the rows, columns padded to their widest cell."""
    widths = [max(len(str(r[i])) for r in rows + [head]) for i in range(len(head))]
    for r in [head, ["-" * w for w in widths]] + rows:
        print("  ".join(str(v).ljust(w) for v, w in zip(r, widths)))
