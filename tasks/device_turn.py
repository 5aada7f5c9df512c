"""Turns on the device: a shard holds its model's device for a whole model stage, not batch by batch.

Two shards in flight each took the model's lock per batch (tasks/models.model_lock), so they went through the
model stages in lockstep, reached their host work (segmenting, cropping, decoding) together and left the device
idle through it. With a turn per stage, one shard runs its model stages while the other decodes and segments;
the shards settle into a staggered pipeline by themselves. Each stage records the seconds it held the device
(`device` phase, which spans the stage's other parts) and waited for it (`device_wait`); the run's record sums
them into the device's busy share (tasks/pipeline/run_record.py). Results do not change: only who waits for whom.
"""
from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mapcap.tasks.pipeline.context import StageContext

_TURNS: dict[str, threading.RLock] = {}
_LOCK = threading.Lock()


def _turn(device: str) -> threading.RLock:
    with _LOCK:
        return _TURNS.setdefault(device, threading.RLock())


@contextmanager
def device_turn(ctx: StageContext, device: str) -> Iterator[None]:
    """Hold `device` (one shard of this process at a time) while the block runs; its seconds go to the stage's
    `device` and `device_wait` phases."""
    lock = _turn(device)
    t0 = time.perf_counter()
    with lock:
        t1 = time.perf_counter()
        try:
            yield
        finally:
            ctx.phases["device_wait"] = ctx.phases.get("device_wait", 0.0) + t1 - t0
            ctx.phases["device"] = ctx.phases.get("device", 0.0) + time.perf_counter() - t1


def on_device(compute: Callable[[Any, Any, StageContext], dict]) -> Callable[[Any, Any, StageContext], dict]:
    """A model stage's `compute`, run in a turn on its config's model device (cfg.model.device)."""
    @functools.wraps(compute)
    def run(self, cfg: Any, ctx: StageContext) -> dict:
        with device_turn(ctx, cfg.model.device):
            return compute(self, cfg, ctx)
    return run


def busy_share(phases: list[dict[str, float]], wall_s: float | None) -> dict[str, float | None]:
    """The device's record in a run's `stages_json`: seconds its stages held it and waited for it (summed over
    stages and shards) and the busy share of the run's wall time (None while unknown)."""
    busy = sum(p.get("device", 0.0) for p in phases)
    wait = sum(p.get("device_wait", 0.0) for p in phases)
    return {"busy_s": round(busy, 3), "wait_s": round(wait, 3),
            "busy_share": round(min(busy / wall_s, 1.0), 3) if wall_s else None}
