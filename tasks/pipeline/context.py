"""What a stage's `compute` sees: its shard (or run), the tables it reads, images decoded once, the data the
shard's earlier stages left for it, and where to record failures, progress and timing. Each job lives in its
own module (images.py, failures.py, progress.py, shared.py, procpool.py); this is the facade stages use."""
from __future__ import annotations

import logging
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pyarrow as pa

from mapcap.storage.writer import read_run, read_table, rows_where, shard_name
from mapcap.tasks.data import Item
from mapcap.tasks.limits import DEFAULT_LIMITS, DecodeLimits
from mapcap.tasks.pipeline.failures import Failures
from mapcap.tasks.pipeline.images import ImageCache, ShardImages, draft_size, tensor_decode  # noqa: F401
from mapcap.tasks.pipeline.procpool import process_map
from mapcap.tasks.pipeline.progress import StageClock
from mapcap.tasks.pipeline.shared import Shared

Rows = list[dict[str, Any]]
MAX_WORKERS = 16  # default threads per shard: one per core up to this (PIL and scikit-image release the GIL)


class StageContext:
    """Inputs of one stage run: `table(name)` for what upstream stages wrote, `images(...)` for pixels."""

    def __init__(self, root: str, run_id: str, shard: int | None = None, items: list[Item] | None = None,
                 workers: int | None = None, cache: ImageCache | None = None, log: logging.Logger | None = None,
                 extra: dict[str, Any] | None = None, limits: DecodeLimits = DEFAULT_LIMITS):
        self.root, self.run_id, self.shard = root, run_id, shard
        self.workers = max(int(workers), 1) if workers else min(os.cpu_count() or 1, MAX_WORKERS)
        self.log = log or logging.getLogger(__name__)
        self.extra = extra or {}  # run-level facts a stage may use (dataset, classes)
        self.outputs: dict[str, Rows | pa.Table] = {}  # tables written earlier in this chain, read from memory
        self.shared = Shared()  # what this chain's stages leave for the later ones (typed)
        self.failures = Failures(run_id, shard, self.log)
        self.clock = StageClock(f"shard {shard}" if shard is not None else f"run {run_id}", self.log)
        self.pictures = ShardImages(items or [], cache or ImageCache(), self.failures.fail, self.map, self.workers,
                                    limits)
        # the stages call these directly
        self.fail, self.progress, self.phase = self.failures.fail, self.clock.progress, self.clock.phase
        self.decode_items, self.images, self.pixels = (self.pictures.decode_items, self.pictures.images,
                                                       self.pictures.pixels)
        self.pixels_of, self.device_images = self.pictures.pixels_of, self.pictures.device_images
        self.device_frames = self.pictures.device_frames

    @property
    def items(self) -> list[Item]:
        """The shard's items this stage computes (reuse leaves out those whose rows it copies)."""
        return self.pictures.items

    @items.setter
    def items(self, items: list[Item]) -> None:
        self.pictures.items = list(items)

    @property
    def stage(self) -> str:
        return self.clock.stage

    @property
    def phases(self) -> dict[str, float]:
        return self.clock.phases

    @property
    def cache(self) -> ImageCache:
        return self.pictures.cache

    def begin(self, stage: str) -> None:
        """The driver starts `stage` on this context: its failures, parts and progress start afresh."""
        self.clock.begin(stage)
        self.failures.begin(stage)

    # tables -------------------------------------------------------------------------------------------------
    def table(self, name: str, where: dict[str, Any] | None = None, columns: tuple[str, ...] | None = None) -> Rows:
        """Rows of an upstream table for this shard (or the whole run, for run-level stages); `where`: only the
        rows whose columns equal these values (None matches null); `columns`: rows read from files hold only
        these (rows this process holds already come whole)."""
        if name in self.outputs:
            rows = self.outputs[name]
            if isinstance(rows, pa.Table):  # rows a stage reused stay in Arrow until a later stage reads them
                return rows_where(rows, where, columns)
            return [r for r in rows if all(r.get(k) == v for k, v in where.items())] if where else rows
        if self.shard is None:
            cols = None if columns is None else list(dict.fromkeys([*columns, *(where or {})]))
            return rows_where(read_run(self.root, name, self.run_id, cols), where, columns)
        return rows_where(read_table(self.root, name, self.run_id, shard_name(self.shard)), where, columns)

    def arrow(self, name: str) -> pa.Table | Rows:
        """An upstream table of this shard as this process holds it (Arrow or rows), else read as Arrow."""
        if name in self.outputs:
            return self.outputs[name]
        if self.shard is None:
            return read_run(self.root, name, self.run_id)
        return read_table(self.root, name, self.run_id, shard_name(self.shard))

    # workers ------------------------------------------------------------------------------------------------
    def map(self, fn: Callable[[Any], Any], items: list) -> list:
        """[fn(x) for x in items], in this shard's worker threads (crops, preprocessing and segmentation are
        PIL, numpy and scikit-image work that mostly runs without the GIL)."""
        if self.workers == 1 or len(items) < 2:
            return [fn(x) for x in items]
        with ThreadPoolExecutor(min(self.workers, len(items))) as ex:
            return list(ex.map(fn, items))

    def map_processes(self, fn: Callable[[Any], Any], items: list) -> list:
        """[fn(x) for x in items] in this shard's number of worker processes, for work that holds the GIL
        (procpool.py; `fn` module-level, items and results picklable)."""
        return process_map(fn, items, self.workers)
