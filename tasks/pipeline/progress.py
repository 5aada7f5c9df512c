"""How far a stage is, and where its seconds go: progress lines and named phase timings."""
from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager

from mapcap.tasks.pipeline.stop import check_stop

PROGRESS_SECONDS = 30.0  # a long stage logs how far it is at most this often


class StageClock:
    """The current stage's clock: started by the driver, read by the stage's result line and the run record."""

    def __init__(self, where: str, log: logging.Logger):
        self.where, self.log = where, log  # "shard 3" or "run r1"
        self.stage = ""
        self.phases: dict[str, float] = {}  # seconds of the current stage's parts (`phase`)
        self.started = self._reported = time.perf_counter()

    def begin(self, stage: str) -> None:
        self.stage, self.phases = stage, {}
        self.started = self._reported = time.perf_counter()

    def progress(self, done: int, total: int, unit: str = "images") -> None:
        """Log how far the current stage is, at most every PROGRESS_SECONDS (a stage that ends sooner logs none):
        on CPU with a large model a shard's stage runs for minutes between its start and its result line. Stages
        report between batches, where the shard of a stopped run ends (tasks/pipeline/stop.py)."""
        check_stop()
        now = time.perf_counter()
        if now - self._reported < PROGRESS_SECONDS or not 0 < done < total:
            return
        self._reported = now
        rate = done / max(now - self.started, 1e-9)
        self.log.info("%s %s: %d/%d %s (%d %%, %.2f/s, about %.0f s left)", self.where, self.stage, done, total, unit,
                      100 * done // total, rate, (total - done) / rate)

    @contextmanager
    def phase(self, name: str, device: str = "cpu") -> Iterator[None]:
        """Time a part of the current stage (summed over calls; logged with the stage's line and kept in the run's
        record), to say where a stage's seconds go. On a CUDA `device` the work it queued is waited for at the
        end, so GPU time counts where it is spent, not where the next copy to the host waits for it."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            if device.startswith("cuda"):
                import torch

                torch.cuda.synchronize(device)
            self.phases[name] = self.phases.get(name, 0.0) + time.perf_counter() - t0
