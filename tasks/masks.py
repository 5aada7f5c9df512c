"""Region masks as stored: found at the map's working size, scaled to image pixels by the readers that need them.

A region is segmented at a working size (w, h) of at most `SegmentConfig.resolution` px (tasks/segment.py): each
image pixel takes the value of the working pixel it falls in (nearest), so a mask at the working size holds all
there is, and scaling it to a 4000×3000 photo before storing it cost 60 ms per map and megabytes of run lengths.
Rows store the run lengths over the region's box at the working size with `mask_size` (w, h) and `image_size`
(W, H) beside them; rows of earlier runs (no `mask_size`) hold them over the box in image pixels.

The box in image pixels (`bbox`) and the one at the working size determine each other: image column X falls in
working column X·w // W, and working column x starts at image column ⌈x·W / w⌉, so x0 = X0·w // W (w ≤ W).
Torch-free: the scikit-image reference path uses it in worker processes.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np



def rle_encode(mask: np.ndarray) -> list[int]:
    """Run lengths of a 2-D bool mask in row-major order, starting with a (possibly empty) run of False."""
    flat = np.asarray(mask, bool).ravel()
    change = np.flatnonzero(np.diff(flat.astype(np.int8))) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    runs = np.diff(bounds).tolist()
    return ([0] + runs) if flat.size and flat[0] else runs


def rle_decode(runs: list[int], shape: tuple[int, int]) -> np.ndarray:
    values = np.arange(len(runs)) % 2 == 1  # runs alternate False, True, False ...
    flat = np.repeat(values, runs)
    if flat.size != shape[0] * shape[1]:
        raise ValueError(f"RLE covers {flat.size} pixels, not {shape[0]}x{shape[1]}")
    return flat.reshape(shape)


def starts(w: int, W: int) -> np.ndarray:
    """(w + 1,): the first image pixel of each working pixel along an axis (and W at the end)."""
    return -(-np.arange(w + 1, dtype=np.int64) * W // w)


def image_box(box: Sequence[int], work: tuple[int, int], size: tuple[int, int]) -> tuple[int, int, int, int]:
    """A box (x0, y0, x1, y1) at the working size (w, h) as image pixels of an image of size (W, H)."""
    (w, h), (W, H) = work, size
    x0, y0, x1, y1 = box
    return -(-x0 * W // w), -(-y0 * H // h), -(-x1 * W // w), -(-y1 * H // h)


def work_box(bbox: Sequence[int], work: tuple[int, int], size: tuple[int, int]) -> tuple[int, int, int, int]:
    """The inverse of `image_box`: an image-pixel box of a region found at the working size, there."""
    (w, h), (W, H) = work, size
    X0, Y0, X1, Y1 = bbox
    return X0 * w // W, Y0 * h // H, X1 * w // W, Y1 * h // H


def measures(box: tuple[int, int, int, int], mask: np.ndarray, work: tuple[int, int], size: tuple[int, int],
             ) -> tuple[float, float, float]:
    """(image pixels, centroid x, centroid y) of a region found at the working size: `mask` (y1 - y0, x1 - x0)
    bool inside `box` there. Counted without scaling the mask: each working pixel stands for a block of image
    pixels."""
    (w, h), (W, H) = work, size
    x0, y0, x1, y1 = box
    sx, sy = starts(w, W)[x0:x1 + 1], starts(h, H)[y0:y1 + 1]  # (bw + 1,), (bh + 1,)
    nx, ny = np.diff(sx), np.diff(sy)  # image pixels per working column / row
    cx = (sx[:-1] + sx[1:] - 1) * nx / 2  # sum of the image columns of each working column
    cy = (sy[:-1] + sy[1:] - 1) * ny / 2
    m = mask.astype(np.float64)
    cols, rows = ny @ m, m @ nx  # (bw,) image rows per working column, (bh,) image columns per working row
    n = float(cols @ nx)  # image pixels
    return n, float(cols @ cx) / n, float(rows @ cy) / n


def region_fields(rank: int, box: tuple[int, int, int, int], mask: np.ndarray, work: tuple[int, int],
                  size: tuple[int, int], area: float, mass: float, total: float) -> dict:
    """The region columns of one region found at the working size (`measures`), its working `area` (pixels)
    and `mass`, the map's `total` mass: area and centroid in image pixels."""
    n, cx, cy = measures(box, mask, work, size)
    mean = mass / area
    return {"region_id": rank, "bbox": [int(v) for v in image_box(box, work, size)], "area": int(round(n)),
            "centroid_x": cx, "centroid_y": cy, "mean_relevancy": mean, "mass": mean * n, "mass_share": mass / total,
            "mask_rle": rle_encode(mask), "mask_size": list(work), "image_size": list(size)}


def region_pixels(region: dict) -> tuple[tuple[int, int, int, int], np.ndarray]:
    """(bbox, mask) of a stored region in image pixels: the mask (y1 - y0, x1 - x0) bool inside bbox, scaled up
    from the working size (nearest), or as stored by earlier runs (no `mask_size`)."""
    x0, y0, x1, y1 = bbox = tuple(int(v) for v in region["bbox"])
    if not region.get("mask_size"):
        return bbox, rle_decode(region["mask_rle"], (y1 - y0, x1 - x0))
    work, size = tuple(region["mask_size"]), tuple(region["image_size"])
    bx0, by0, bx1, by1 = work_box(bbox, work, size)
    small = rle_decode(region["mask_rle"], (by1 - by0, bx1 - bx0))
    xs = np.arange(x0, x1) * work[0] // size[0] - bx0  # the working column of each image column
    ys = np.arange(y0, y1) * work[1] // size[1] - by0
    return bbox, small[np.ix_(ys, xs)]


def mask_at(region: dict, out: tuple[int, int], size: tuple[int, int] | None = None) -> np.ndarray:
    """A stored region as an (h', w') bool mask of the image drawn at PIL size `out` (w', h'), e.g. a frame
    decoded at a reduced scale: each of its pixels takes the value of the image pixel its corner falls in
    (nearest). `size`: the image's (W, H) where the row does not hold it (earlier runs); else `out`."""
    W, H = tuple(region.get("image_size") or size or out)
    if region.get("mask_size"):
        w, h = region["mask_size"]
        x0, y0, x1, y1 = work_box(region["bbox"], (w, h), (W, H))
    else:  # earlier runs: run lengths over the bbox in image pixels
        (w, h), (x0, y0, x1, y1) = (W, H), region["bbox"]
    small = rle_decode(region["mask_rle"], (y1 - y0, x1 - x0))
    xs = np.arange(out[0]) * W // out[0] * w // W  # (w',) the mask column of each output column
    ys = np.arange(out[1]) * H // out[1] * h // H
    cols, rows = (xs >= x0) & (xs < x1), (ys >= y0) & (ys < y1)
    mask = np.zeros((out[1], out[0]), dtype=bool)
    mask[np.ix_(rows, cols)] = small[np.ix_(ys[rows] - y0, xs[cols] - x0)]
    return mask


def full_mask(region: dict, size: tuple[int, int]) -> np.ndarray:
    """A stored region as a whole (H, W) bool mask of an image of PIL size (W, H)."""
    return mask_at(region, size, size)
