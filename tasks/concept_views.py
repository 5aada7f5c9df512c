"""The concepts stage's device path: its views and its deletion / insertion images from the shard's device frames.

On a GPU the concepts stage decoded each image again on the host in PIL (tasks/frames.py), cut a PIL crop per
region, drew every region mask at the frame's size and preprocessed every view and every perturbation step on
the CPU, while the classify stage had left a frame of each image on the device (tasks/pipeline/images.py). Here,
as the captions stage does it (tasks/stages/captions.py `device_crops`):

- views: the whole image (the preprocess's resize and centre crop of the frame, one call per frame size) and its
  region crops (tasks/roi_crops.py: one roi_align per frame size), normalised in one batch;
- masks drawn from the stored ones (working size, tasks/masks.py) straight at the model's input resolution,
  SUPERSAMPLE× finer and box-filtered on the device, so their edges are soft as the PIL path's resized masks are;
- deletion x·(1 − m) + c·m and insertion c·(1 − m) + x·m (tasks/metrics/perturb.py) of all images of a chunk
  in one go: a few tensor ops per chunk, not a PIL image per step.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from mapcap.tasks.captioners.base import square_box
from mapcap.tasks.decode import Geometry, normalise, resize_crop, resize_plan
from mapcap.tasks.masks import mask_at
from mapcap.tasks.models import LoadedModel
from mapcap.tasks.pipeline.context import StageContext, tensor_decode
from mapcap.tasks.frames import device_frame_parts
from mapcap.tasks.roi_crops import roi_crops

SUPERSAMPLE = 2  # masks drawn at this × the model's input side, then averaged down: soft edges


def device_geometry(lm: LoadedModel) -> Geometry | None:
    """The geometry to cut and perturb views with on the device (a GPU and a plain resize / crop / normalise
    preprocess, the captions stage's gate); None keeps the PIL path."""
    return tensor_decode(lm.preprocess, lm.spec.device)


@dataclass
class DeviceChunk:
    """A chunk's images as the model sees them, on the device."""
    ids: list[str]  # the chunk's images that have a frame (an unreadable or changed one is a failure row)
    views: list[torch.Tensor]  # per image: the whole image, then a crop per region (or the whole again), (3, S, S)
    whole: torch.Tensor  # (N, 3, S, S) normalised whole images, in `ids` order
    fill: torch.Tensor  # (N, 3) each frame's mean colour, rounded, in 0..255 (the deletion fill)
    shapes: dict[str, tuple[int, int]]  # image id -> (h, w) of its frame (what `whole` was resized from)


def wholes(frames: Sequence[torch.Tensor], geo: Geometry) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 3, S, S) resized and centre-cropped frames in 0..255 (not normalised) and (N, 3) their mean colours
    rounded (numpy's rule, as perturbed_pixels's fill): one resize per frame size."""
    out = torch.empty(len(frames), 3, geo.crop, geo.crop, device=frames[0].device)  # (N, 3, S, S)
    fill = torch.empty(len(frames), 3, dtype=torch.float64, device=frames[0].device)  # (N, 3)
    groups: dict[tuple, list[int]] = {}
    for n, f in enumerate(frames):
        groups.setdefault(tuple(f.shape), []).append(n)
    for (_, h, w), members in groups.items():
        idx = torch.tensor(members, device=out.device)
        batch = torch.stack([frames[n] for n in members])  # (n, 3, h, w) uint8
        out[idx] = resize_crop(batch.float(), geo)
        fill[idx] = (batch.sum((2, 3), dtype=torch.int64).double() / (h * w)).round()  # exact mean, rounded
    return out, fill.float()


def device_chunk(ctx: StageContext, device: str, geo: Geometry, chunk: list[str], paths: dict[str, str],
                 sizes: dict[str, tuple[int, int]], regions: dict[str, list[dict]], context: float) -> DeviceChunk:
    """The views of a chunk of images (whole image first, then its region crops with `context`, or the whole
    image again when it has none: concepts.parts_of's order), cut from their frames and normalised in one batch."""
    boxes = {i: [square_box(r["bbox"], context) for r in regions[i]] for i in chunk}
    frames = {i: f for part in device_frame_parts(ctx, device, geo, {i: paths[i] for i in chunk}, sizes, boxes)
              for i, f in part.items()}  # a chunk's few images: its full ones held together
    ids = [i for i in chunk if i in frames]
    if not ids:
        return DeviceChunk([], [], torch.empty(0, 3, geo.crop, geo.crop), torch.empty(0, 3), {})
    whole, fill = wholes([frames[i] for i in ids], geo)  # (N, 3, S, S), (N, 3)
    crops = roi_crops([frames[i] for i in ids], [sizes[i] for i in ids], [boxes[i] for i in ids], geo.crop)
    pixels = normalise(torch.cat([whole, crops]), geo)  # (N + K, 3, S, S)
    whole, crops = pixels[:len(ids)], pixels[len(ids):]
    views, k = [], 0
    for n, i in enumerate(ids):
        parts = list(crops[k:k + len(boxes[i])]) or [whole[n]]
        views += [whole[n]] + parts
        k += len(boxes[i])
    return DeviceChunk(ids, views, whole, fill, {i: tuple(frames[i].shape[1:]) for i in ids})


def model_masks(regions: list[dict], frame: tuple[int, int], size: tuple[int, int], geo: Geometry,
                factor: int = SUPERSAMPLE) -> list[np.ndarray]:
    """Each region's (f·S, f·S) bool mask over the model's input (the frame's resize and centre crop,
    `resize_plan`), drawn `factor` × finer from the stored mask (nearest, tasks/masks.mask_at); one all-True mask
    when the image has no region (the whole image is its one part). `frame`: (h, w); `size`: the image's (W, H)."""
    if factor < 1:
        raise ValueError(f"supersampling factor {factor}: it must be at least 1")
    h, w, top, left = resize_plan(*frame, geo)
    s = geo.crop * factor
    rows, cols = slice(top * factor, top * factor + s), slice(left * factor, left * factor + s)
    return [mask_at(r, (w * factor, h * factor), size)[rows, cols] for r in regions] or [np.ones((s, s), bool)]


def device_perturbed(dc: DeviceChunk, steps: dict[str, list[np.ndarray]], geo: Geometry) -> torch.Tensor:
    """(Σ 2·K_i, 3, S, S): per image of the chunk (in dc.ids order) its K_i deletion inputs, then its K_i insertion
    inputs, as perturbed_pixels gives them. `steps`: per image, (f·S, f·S) bool masks (`model_masks`, cumulated)
    box-filtered to soft (S, S) masks on the device in one call."""
    stack = np.stack([s for i in dc.ids for s in steps[i]])  # (K, f·S, f·S) bool
    factor = stack.shape[-1] // geo.crop
    if stack.shape[-2:] != (geo.crop * factor,) * 2:
        raise ValueError(f"step masks of {stack.shape[-2:]} px: not a multiple of the input side {geo.crop}")
    device = dc.whole.device
    m = torch.from_numpy(stack).to(device).unsqueeze(1).float()  # (K, 1, f·S, f·S)
    m = F.avg_pool2d(m, factor) if factor > 1 else m  # (K, 1, S, S) soft
    counts = [len(steps[i]) for i in dc.ids]
    owner = torch.repeat_interleave(torch.arange(len(dc.ids), device=device),
                                    torch.tensor(counts, device=device))  # (K,)
    x = dc.whole[owner]  # (K, 3, S, S)
    mean, std = (torch.tensor(v, device=device).view(1, 3) for v in (geo.mean, geo.std))
    c = ((dc.fill / 255 - mean) / std)[owner][:, :, None, None]  # (K, 3, 1, 1) the fill, normalised like x
    both = torch.cat([x * (1 - m) + c * m, c * (1 - m) + x * m])  # (2K, 3, S, S): deletions, insertions
    order, k, total = [], 0, sum(counts)
    for n in counts:  # per image: its deletions, then its insertions
        order += list(range(k, k + n)) + list(range(total + k, total + k + n))
        k += n
    return both[torch.tensor(order, device=device)]
