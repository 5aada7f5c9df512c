"""Frames to cut region crops from: each image decoded once, at the coarsest JPEG scale its crops allow (or, on
the device, the shard's frames: `device_frame_parts`).

Captions and concepts cut a few crops per image and the model's preprocess shrinks each to S px (224). Decoding
a 4000×3000 photo whole for that (150 ms, 36 MB, evicted before the next stage reads it) was most of both
stages on real photos. A frame is decoded at the coarsest scale (libjpeg's 1/2, 1/4, 1/8, PIL's draft) at which
every crop still has twice S px on its shorter side, the rule the classify stage decodes model pixels by
(context.draft_size: crops within 0.001 mean of those cut from the full image, tests/tasks/test_frames.py):
often that stage's frame, held in the shard's cache. Boxes and
masks are then scaled to the frame (`scale_box`, tasks/masks.mask_at).
"""
from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import torch
from PIL import Image

from mapcap.tasks.captioners.base import square_box
from mapcap.tasks.data import full_size
from mapcap.tasks.decode import Geometry
from mapcap.tasks.pipeline.context import StageContext
from mapcap.tasks.roi_crops import frame_side, needs_full

SCALES = (8, 4, 2, 1)  # libjpeg's reductions, coarsest first
FULL_AT_ONCE = 64  # full-size images held on the device at once, for crops their frames are too coarse for


def frame_draft(size: tuple[int, int], boxes: Sequence[Sequence[float]], draft: int | None) -> int | None:
    """The `draft` (StageContext.images) to decode an image of PIL size (W, H) at: the smallest side of the
    coarsest scale at which each crop box keeps ≥ `draft` px on its shorter side, as the whole image does for the
    classify stage (its draft, returned as is when that scale is enough: the shard's cache may hold the frame);
    None for the full image (also for draft None: a preprocess of unknown geometry)."""
    if not draft:
        return None
    short = min(size)
    need = max([draft * short / max(min(b[2] - b[0], b[3] - b[1]), 1) for b in boxes] + [draft])
    if need <= draft:
        return draft  # the classify stage's frame is fine enough
    scale = next((r for r in SCALES if short / r >= need), 1)
    return None if scale == 1 else math.ceil(short / scale)


def frames(ctx: StageContext, refs: dict[str, str], sizes: dict[str, tuple[int, int]],
           crops: dict[str, list[Sequence[float]]], draft: int | None) -> dict[str, Image.Image]:
    """{image id: frame} for {image id: path}: each decoded once (or taken from the shard's cache) at the
    coarsest scale its `crops` (boxes in image pixels) allow; `full_size(frame)` is the image's (W, H)."""
    by_draft: dict[int | None, dict[str, str]] = {}
    for iid, path in refs.items():
        by_draft.setdefault(frame_draft(sizes[iid], crops.get(iid, []), draft), {})[iid] = path
    out: dict[str, Image.Image] = {}
    for d, group in by_draft.items():
        out |= ctx.images(group, d)
    return out


def device_frame_parts(ctx: StageContext, device: str, geo: Geometry, refs: dict[str, str],
                       sizes: dict[str, tuple[int, int]], boxes: dict[str, Sequence[Sequence[float]]],
                       ) -> Iterator[dict[str, torch.Tensor]]:
    """The device path's rule (the captions and concepts stages): {image id: (3, h, w) uint8} for {image id:
    path}, in parts. First the shard's frames (roi_crops.frame_side; no decode where the classify stage left
    them) of the images whose crop boxes (image pixels) they serve; then, FULL_AT_ONCE at a time, the full images
    of those with a crop narrower than S px in their frame (roi_crops.needs_full), decoded for that part only.
    An unreadable or changed file is a failure row and missing from its part."""
    side = frame_side(geo)
    full = [i for i in refs if needs_full(sizes[i], boxes.get(i, ()), side, geo.crop)]
    fine = set(full)
    yield ctx.device_frames({i: p for i, p in refs.items() if i not in fine}, device, side)
    for c in range(0, len(full), FULL_AT_ONCE):
        part = full[c:c + FULL_AT_ONCE]
        yield ctx.device_frames({i: refs[i] for i in part}, device, side, full=part)


def scale_box(box: Sequence[float], frame: Image.Image) -> tuple[float, float, float, float]:
    """A box in the image's pixels in the pixels of its frame."""
    W, H = full_size(frame)
    sx, sy = frame.width / W, frame.height / H
    return box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy


def crop_boxes(bboxes: Sequence[Sequence[int]], context: float) -> list[tuple[int, int, int, int]]:
    """The squares crop_region cuts around region boxes (what must keep `side` px in a frame)."""
    return [square_box(tuple(b), context) for b in bboxes]
