"""What a shard's stages hand to the later stages of its chain, in this process, typed. A stage run in another
process (a resumed run) finds none of it and computes its own: the same pixels, the same numbers."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch


class MapKey(NamedTuple):
    """A relevancy map the classification pass computed for the relevancy stage (tasks/relevancy/fused.py)."""

    method: str
    start_layer: int | None
    image_id: str
    class_name: str


class View(NamedTuple):
    """An image's view an image tower embedded: the whole image (bbox None) or a region crop with its context."""

    model: Any  # the ModelSpec
    image_id: str
    bbox: tuple[int, ...] | None = None
    context: float | None = None


@dataclass
class Shared:
    pending: dict[str, Any] = field(default_factory=dict)  # {stage: config} this chain will compute (driver)
    maps: dict[MapKey, torch.Tensor] = field(default_factory=dict)  # (g, g) maps, classify -> relevancy
    views: dict[View, torch.Tensor] = field(default_factory=dict)  # raw (D,) embeddings (embeddings.py)
    content_ids: dict[str, str] | None = None  # {path: content id} of the shard, hashed once (reuse.py)
    files: dict[str, tuple] | None = None  # {path: (size, mtime ns, content id)} for the reuse index
