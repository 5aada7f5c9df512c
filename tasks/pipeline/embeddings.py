"""Unit image embeddings the stages of one shard share, so the image tower sees each view once per shard.

The classification pass embeds every whole image; the concepts stage embeds each image and a crop per region of
the predicted class's map; the captions stage embeds each image and the top region crops of both targets, with
the same crop context. A view is named by (model, image id, bbox, context) — None for the whole image — and its
embedding is kept in the shard's `ctx.shared.views` as the image tower gives it (not unit length: ClipCap's prefix is the
raw embedding), so a later stage reuses it. A stage run in another process (a resumed
run) finds none and encodes its views itself: the same pixels, the same numbers up to batch composition.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from mapcap.tasks.models import ModelSpec
from mapcap.tasks.pipeline.context import StageContext
from mapcap.tasks.pipeline.shared import View
from PIL import Image

def view_key(model: ModelSpec, image_id: str, bbox: Sequence[int] | None = None,
             context: float | None = None) -> View:
    """The key of an image's view: the whole image (no bbox) or a region crop with its context."""
    return View(model, image_id) if bbox is None else View(model, image_id, tuple(bbox), context)


def remember(ctx: StageContext, keys: list[View], emb: torch.Tensor) -> None:
    """Keep the raw (not normalised) embeddings (N, D) of these views for the shard's later stages."""
    for k, e in zip(keys, emb):
        ctx.shared.views[k] = e


def embed_views(ctx: StageContext, keys: list[View], crops: list[Image.Image],
                encode: Callable[[list[Image.Image]], torch.Tensor], raw: bool = False) -> torch.Tensor:
    """(N, D) unit embeddings of the views (raw ones with `raw`): those the shard has already embedded as they
    are, the rest through `encode` (PIL crops → (n, D) raw rows), then kept. Rows come on the device `encode`
    returns."""
    known = [ctx.shared.views.get(k) for k in keys]
    todo = [j for j, e in enumerate(known) if e is None]
    if todo:
        new = encode([crops[j] for j in todo])  # (len(todo), D)
        remember(ctx, [keys[j] for j in todo], new)
        for j, e in zip(todo, new):
            known[j] = e
    if not known:
        return torch.empty(0)
    device = known[todo[0]].device if todo else known[0].device
    emb = torch.stack([e.to(device) for e in known])  # (N, D)
    return emb if raw else F.normalize(emb, dim=-1)
