"""Region crops cut on the device from reduced frames, every crop of a batch in one `roi_align` per frame size.

The captions stage's GPU path decoded each image full size (a 12-megapixel photo: 36 MB, a read, a hash and an
nvjpeg decode) to cut two or three crops that the model shrinks to S px (224), and cut them one matrix product
per box. Here the shard keeps a *frame* per image on the device, its shorter side at most FRAME_FACTOR × the
preprocess's resize (antialiased, 8-bit, as the classify stage's decode leaves it: tasks/pipeline/images.py), and
the crops of a whole batch come out of frames of one size in one `torchvision.ops.roi_align` call:

- boxes are squares in image pixels (captioners.base.square_box), scaled per box and axis to the frame before
  the call (frames of one size may come from images of several sizes: spatial_scale is 1);
- `aligned=True` puts pixel centres at half-integers, as PIL's and torch's resizes do;
- `sampling_ratio=0` averages ceil(bin) × ceil(bin) bilinear samples per output pixel, bin = the crop's side in
  frame pixels / S: a box filter about one output pixel wide, the antialiasing PIL's bicubic downscale does with
  its wider kernel. Against crop_region + the preprocess on a photo with one-pixel detail
  (tests/tasks/test_roi_crops.py): 0.5-1.4 levels of 255 mean for crops the model shrinks, from the full image
  or frames of 1/2 and 1/4; 2.5 for crops it enlarges (bilinear, not bicubic);
- a square crop's preprocess (shorter side to S, centre crop S) is a resize to S × S: roi_align's output size;
- outside the image crop_region fills the image's floor-mean colour: the frame minus that colour, framed by one
  row and column of zeros, is sampled (roi_align reads 0 beyond it) and the colour added back.

A crop narrower than S px in its frame (a small region of a large photo) would be upsampled from the frame and
lose the detail the full image has: `needs_full` says which images the caller cuts from the full image instead.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torchvision.ops import roi_align

from mapcap.tasks.decode import Geometry

Box = Sequence[float]  # (x0, y0, x1, y1) in image pixels, may reach outside the image
FRAME_FACTOR = 2  # a frame's shorter side: at most this × the resize (the CPU path's draft rule, frames.py)
ROI_BYTES = 1 << 30  # float images in one roi_align or resize call (a group of more is cut in several)


def frame_side(geo: Geometry) -> int:
    """The shorter side frames are reduced to for a preprocess: FRAME_FACTOR × its resize (448 px for 224). A
    4,096-image shard of 4:3 frames is then 3.3 GB of uint8 (images.FRAME_CACHE_BYTES holds it whole), and every
    crop at least half the image's shorter side keeps ≥ S frame pixels."""
    return FRAME_FACTOR * geo.resize


def frame_size(size: tuple[int, int], side: int) -> tuple[int, int]:
    """(w, h) of the frame of an image of (W, H): the shorter side to `side` (torchvision's rule for the longer
    one, as decode.resize_plan), or (W, H) for an image no larger."""
    W, H = size
    short, long = min(W, H), max(W, H)
    if short <= side:
        return W, H
    new_long = int(side * long / short)
    return (side, new_long) if W <= H else (new_long, side)


def reduce_frames(images: Sequence[torch.Tensor], side: int) -> list[torch.Tensor]:
    """(3, H, W) uint8 images of one size → (3, h, w) uint8 frames, each its own storage (an evicted frame frees
    its bytes alone): resized in one call by antialiased bicubic so the shorter side is `side`, rounded to 8 bits
    as PIL rounds; images no larger come back as they are (no copy)."""
    _, H, W = images[0].shape
    w, h = frame_size((W, H), side)
    if (w, h) == (W, H):
        return list(images)
    frames = []
    step = max(1, ROI_BYTES // (3 * H * W * 4))  # images per call within ROI_BYTES of floats
    for c in range(0, len(images), step):
        out = F.interpolate(torch.stack(images[c:c + step]).float(), size=(h, w), mode="bicubic", antialias=True,
                            align_corners=False)  # (n, 3, h, w)
        frames += [f.clone() for f in out.round().clamp(0, 255).to(torch.uint8)]
    return frames


def needs_full(size: tuple[int, int], boxes: Sequence[Box], side: int, out: int) -> bool:
    """Whether an image of (W, H) has a crop box narrower than `out` px in its frame while the frame is reduced
    (then its crops are cut from the full image: upsampling the frame would blur what the model sees)."""
    w, h = frame_size(size, side)
    if (w, h) == tuple(size):
        return False
    scale = min(w / size[0], h / size[1])
    return any(min(b[2] - b[0], b[3] - b[1]) * scale < out for b in boxes)


def fill_colour(frames: torch.Tensor) -> torch.Tensor:
    """(n, 3, h, w) uint8 → (n, 3) float: each frame's mean colour floored to integers (crop_region's fill)."""
    n, _, h, w = frames.shape
    return (frames.sum((2, 3), dtype=torch.int64) // (h * w)).float()


def roi_crops(frames: Sequence[torch.Tensor], sizes: Sequence[tuple[int, int]], boxes: Sequence[Sequence[Box]],
              out: int) -> torch.Tensor:
    """All crops of a batch as one (K, 3, out, out) float tensor in 0..255, not yet normalised
    (decode.normalise takes them), in input order: frame by frame, box by box.

    `frames`: (3, h, w) uint8 each, on one device; `sizes`: the (W, H) each was reduced from (the boxes' pixels);
    `boxes`: per frame, square boxes in image pixels. Frames of one size are cut together (one roi_align call,
    split only when their float copy would pass ROI_BYTES)."""
    if len(frames) != len(sizes) or len(frames) != len(boxes):
        raise ValueError(f"{len(frames)} frames, {len(sizes)} sizes and {len(boxes)} box lists: one of each per "
                         f"frame")
    starts, k = [], 0  # first output row of each frame's crops
    for bs in boxes:
        starts.append(k)
        k += len(bs)
    device = frames[0].device if frames else torch.device("cpu")
    result = torch.empty(k, 3, out, out, device=device)  # (K, 3, S, S)
    groups: dict[tuple[int, int], list[int]] = {}
    for f, (frame, bs) in enumerate(zip(frames, boxes)):
        if bs:
            groups.setdefault(tuple(frame.shape[1:]), []).append(f)
    for (h, w), members in groups.items():
        step = max(1, ROI_BYTES // (3 * (h + 2) * (w + 2) * 4))  # frames per call within ROI_BYTES of floats
        for c in range(0, len(members), step):
            part = members[c:c + step]
            rows = [starts[f] + j for f in part for j in range(len(boxes[f]))]
            result[torch.tensor(rows, device=device)] = _cut(
                [frames[f] for f in part], [sizes[f] for f in part], [boxes[f] for f in part], out)
    return result


def _cut(frames: list[torch.Tensor], sizes: list[tuple[int, int]], boxes: list[Sequence[Box]],
         out: int) -> torch.Tensor:
    """roi_crops for frames of one size: one roi_align call."""
    batch = torch.stack(frames)  # (n, 3, h, w) uint8
    n, _, h, w = batch.shape
    fill = fill_colour(batch)  # (n, 3)
    padded = torch.zeros(n, 3, h + 2, w + 2, device=batch.device)  # (n, 3, h + 2, w + 2): the fill's ring
    padded[:, :, 1:-1, 1:-1] = batch.float() - fill[:, :, None, None]
    rois, owner = [], []  # (K, 5) rows: frame index, box in padded frame pixels
    for i, ((W, H), bs) in enumerate(zip(sizes, boxes)):
        sx, sy = w / W, h / H
        rois += [(i, x0 * sx + 1, y0 * sy + 1, x1 * sx + 1, y1 * sy + 1) for x0, y0, x1, y1 in bs]
        owner += [i] * len(bs)
    rois_t = torch.tensor(rois, dtype=torch.float32, device=batch.device)  # (K, 5)
    crops = roi_align(padded, rois_t, (out, out), spatial_scale=1.0, sampling_ratio=0, aligned=True)  # (K, 3, S, S)
    return crops + fill[torch.tensor(owner, device=batch.device)][:, :, None, None]
