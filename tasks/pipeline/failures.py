"""Failure rows: an image a stage cannot use is a `failures` row naming the stage, never a silent loss."""
from __future__ import annotations

import logging
from typing import Any

Rows = list[dict[str, Any]]


class Failures:
    """The current stage's failure rows for one shard (or run); the driver writes them beside its tables."""

    def __init__(self, run_id: str, shard: int | None, log: logging.Logger):
        self.run_id, self.shard, self.log = run_id, shard, log
        self.stage = ""  # the stage now computing (the driver sets it)
        self.rows: Rows = []

    def begin(self, stage: str) -> None:
        self.stage, self.rows = stage, []

    def fail(self, image_id: str | None, path: str, error: BaseException | str, error_type: str | None = None,
             shard: int | None = None) -> None:
        """Record that the current stage could not use an image (a `failures` row)."""
        etype = error_type or (type(error.__cause__ or error).__name__ if isinstance(error, BaseException)
                               else "Error")
        self.log.warning("%s: image %s: %s", self.stage, path, error)
        self.rows.append({"run_id": self.run_id, "image_id": image_id, "path": path,
                          "shard": self.shard if shard is None else shard, "stage": self.stage,
                          "error_type": etype, "error": str(error)})
