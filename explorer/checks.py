"""What an explain request may ask of the model, checked before anything is read or computed: `pretrained` is a
known tag or a checkpoint inside the folders allowed for weights (the results root, `--allow-weights DIR`), and
the method and start layer fit the model's image tower; decodes run a few at a time.

Why: `pretrained` was a path the server opened, and its answer said whether the file existed (/etc/shadow → 500,
/root/nope.pt → 400); a start layer of −100 on a four-block model was answered 200.
"""
from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from fastapi import HTTPException

from mapcap.explorer.guard import PathRefused, resolve_inside
from mapcap.tasks.models import LoadedModel
from mapcap.tasks.plugins import preset
from mapcap.tasks.relevancy.methods import DEFAULTS, check_supported, resolve_start
from mapcap.tasks.relevancy.towers import tower_of, vit_blocks

DECODES_AT_ONCE = 2  # explains (a decoded image and its passes) in flight together; the others wait
BUSY_SECONDS = 120.0  # ... at most this long, then 503


def known_tags(model: str) -> list[str]:
    """open_clip's pretrained tags of `model` (a preset's model name resolved)."""
    import open_clip

    p = preset(model)
    return list(open_clip.list_pretrained_tags_by_model(p.model if p else model))


def check_pretrained(model: str, pretrained: str, folders: list[Path]) -> str:
    """`pretrained` when it is empty (random weights), a preset, one of the model's tags, or a path inside an
    allowed folder; else PathRefused, with the same words whether or not such a file exists (nothing is opened)."""
    if not pretrained or preset(pretrained) is not None or pretrained in known_tags(model):
        return pretrained
    refused = PathRefused(f"pretrained {pretrained!r} is neither a tag of {model!r} nor a checkpoint inside the "
                          f"results root or a folder the explorer was started with --allow-weights DIR; known tags: "
                          f"{known_tags(model) or 'none'}")
    return str(resolve_inside(pretrained, folders, refused))


def check_fields(lm: LoadedModel, method: str | None, start_layer: int | None) -> tuple[str, int | None]:
    """(method, start layer) when the model's image tower can do them; else 422 naming what it can (the range
    of start layers, the methods of its tower)."""
    visual = lm.model.visual
    tower = tower_of(visual)
    method = method or DEFAULTS[tower.kind][0]
    depth = len(vit_blocks(visual)) if tower.kind in ("vit", "timm_vit") else None
    try:
        check_supported(method, tower.kind, lm.spec.name)
        return method, resolve_start(method, lm.spec.name, start_layer, depth)
    except ValueError as e:
        raise HTTPException(422, str(e)) from e


class DecodeGate:
    """At most `n` explains at once (each holds a decoded image, up to the pixel budget, and its passes): four
    uploads at once took 12 GB before. A request that waits longer than `wait` seconds gets 503."""

    def __init__(self, n: int = DECODES_AT_ONCE, wait: float = BUSY_SECONDS):
        self.n, self.slots, self.wait = n, threading.BoundedSemaphore(n), wait

    @contextmanager
    def slot(self) -> Iterator[None]:
        if not self.slots.acquire(timeout=self.wait):
            raise HTTPException(503, f"the explorer is busy with {self.n} images; try again in a moment")
        try:
            yield
        finally:
            self.slots.release()
