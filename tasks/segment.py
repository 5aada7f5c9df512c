"""Segmenting relevancy maps into ranked regions with scikit-image, one map at a time: the reference of the
batched tensor path (tasks/segment_batch.py, what the regions stage runs) and the path of SLIC snapping.

A map is upsampled to a working size (the image's, or smaller: a 14×14 grid holds no detail worth segmenting
500×375 pixels for), thresholded (Otsu, or the cells holding a share of the relevancy mass), split into
connected components, cleaned of specks, optionally snapped to SLIC superpixels, ranked by the relevancy mass
each region holds, and scaled back to image pixels (bbox, mask, area, centroid, mass); `segment_job` keeps
the mask at the working size, as rows store it (tasks/masks.py).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from pydantic import ConfigDict, Field
from PIL import Image
from scipy.ndimage import find_objects
from skimage.filters import threshold_otsu
from skimage.measure import label
from skimage.segmentation import slic

from mapcap.tasks.pipeline.base import Section
from mapcap.tasks.masks import region_fields, rle_decode, rle_encode  # noqa: F401  (rle_*: imported from here)
from mapcap.tasks.report.overlay import upsample


class SegmentConfig(Section):
    """segmenting maps into regions

    The regions stage's settings, which are also the frozen config of segmentation (no second class)."""

    model_config = ConfigDict(frozen=True)

    threshold: Literal["otsu", "mass"] = Field("otsu", description="map threshold: Otsu, or the most relevant "
                                                                   "pixels holding `mass`")
    mass: float = Field(0.5, gt=0, le=1, description="share of relevancy mass kept (threshold='mass')")
    min_area: float = Field(0.005, ge=0, lt=1, description="drop regions below this share of the image")
    top_k: int = Field(3, ge=1, description="regions kept per map, ranked by relevancy mass")
    superpixels: int = Field(0, ge=0, description="snap regions to this many SLIC superpixels (0: off)")
    resolution: int = Field(256, ge=0, description="segment maps at this longest side (px) and scale regions "
                                                   "back to the image (0: at full image size)")


@dataclass(frozen=True)
class Region:
    rank: int  # 0 = the region holding the most relevancy mass
    bbox: tuple[int, int, int, int]  # x0, y0, x1, y1 in image pixels (x1, y1 exclusive)
    area: int  # pixels
    centroid: tuple[float, float]  # x, y
    mean_relevancy: float
    mass: float  # summed relevancy inside the region
    mass_share: float  # of the whole (non-negative) map
    mask: np.ndarray  # (y1 - y0, x1 - x0) bool, the region inside its bbox


def foreground(up: np.ndarray, cfg: SegmentConfig) -> np.ndarray:
    if cfg.threshold == "otsu":
        return up > threshold_otsu(up) if up.max() > up.min() else np.zeros(up.shape, bool)
    if cfg.threshold == "mass":
        order = np.sort(up.ravel())[::-1]
        cum = np.cumsum(order)
        k = int(np.searchsorted(cum, cfg.mass * cum[-1])) if cum[-1] > 0 else 0
        return up >= order[min(k, order.size - 1)]
    raise ValueError(f"threshold {cfg.threshold!r} is unknown; use 'otsu' or 'mass'")


def snap_to_superpixels(fg: np.ndarray, image: np.ndarray, n: int) -> np.ndarray:
    """A superpixel is foreground when most of its pixels are."""
    sp = slic(image, n_segments=n, start_label=1, compactness=10)
    share = np.bincount(sp.ravel(), weights=fg.ravel()) / np.maximum(np.bincount(sp.ravel()), 1)
    return share[sp] > 0.5


def working_size(size: tuple[int, int], resolution: int) -> tuple[int, int]:
    """PIL (w, h) the map is segmented at: the image's size, shrunk to `resolution` on its longest side."""
    W, H = size
    if not resolution or max(W, H) <= resolution:
        return W, H
    scale = resolution / max(W, H)
    return max(1, round(W * scale)), max(1, round(H * scale))


def _to_image(bbox: tuple[int, int, int, int], region: np.ndarray, work: tuple[int, int], size: tuple[int, int],
              ) -> tuple[tuple[int, int, int, int], np.ndarray]:
    """A region found at the working size (its (x0, y0, x1, y1) there and its mask inside that box) as (bbox, mask)
    in image pixels: each image pixel takes the value of the working pixel it falls in (nearest), so the mask is
    exact at the working resolution (and a copy of the region's own when the working size is the image's)."""
    (w, h), (W, H) = work, size
    x0, y0, x1, y1 = bbox
    X0, X1 = -(-x0 * W // w), -(-x1 * W // w)  # image columns whose working column is in [x0, x1)
    Y0, Y1 = -(-y0 * H // h), -(-y1 * H // h)
    xs = np.arange(X0, X1) * w // W - x0
    ys = np.arange(Y0, Y1) * h // H - y0
    return (X0, Y0, X1, Y1), region[np.ix_(ys, xs)]


def components(grid_map: np.ndarray, size: tuple[int, int], cfg: SegmentConfig = SegmentConfig(),
               image: np.ndarray | None = None) -> tuple[tuple[int, int], np.ndarray, list[tuple], float]:
    """A (g, g) map over an image of PIL size (W, H) segmented at its working size (w, h): (w, h), the (h, w)
    component labels, the kept components ranked as (label, (x0, y0, x1, y1) there, area, mass) and the map's
    total mass. Areas and masses come from counting labels (not a regionprops object each: a noisy map has
    dozens)."""
    work = working_size(size, cfg.resolution)
    up = np.clip(upsample(grid_map, work), 0, None)  # (h, w)
    fg = foreground(up, cfg)
    if cfg.superpixels:
        if image is None:
            raise ValueError("superpixel snapping needs the image; pass image= or set superpixels=0")
        if work != size:
            image = np.asarray(Image.fromarray(image).resize(work, Image.BILINEAR))
        fg = snap_to_superpixels(fg, image, cfg.superpixels)
    labels = label(fg, connectivity=2)  # (h, w), 0 = background
    area = np.bincount(labels.ravel())  # (n + 1,)
    mass = np.bincount(labels.ravel(), weights=up.ravel().astype(np.float64), minlength=area.size)  # (n + 1,)
    big = np.flatnonzero(area[1:] >= cfg.min_area * up.size) + 1  # component labels, specks dropped
    ranked = big[np.argsort(-mass[big], kind="stable")][:cfg.top_k]  # equal masses keep label order
    boxes = find_objects(labels)  # boxes[k - 1]: (rows, columns) of component k
    kept = [(int(k), (boxes[k - 1][1].start, boxes[k - 1][0].start, boxes[k - 1][1].stop, boxes[k - 1][0].stop),
             int(area[k]), float(mass[k])) for k in ranked]
    return work, labels, kept, float(up.sum()) or 1.0


def segment_map(grid_map: np.ndarray, size: tuple[int, int], cfg: SegmentConfig = SegmentConfig(),
                image: np.ndarray | None = None) -> list[Region]:
    """Ranked regions of a (g, g) map over an image of PIL size (W, H), in image pixels."""
    work, labels, kept, total = components(grid_map, size, cfg, image)
    regions = []
    for rank, (k, (x0, y0, x1, y1), area, mass) in enumerate(kept):
        bbox, mask = _to_image((x0, y0, x1, y1), labels[y0:y1, x0:x1] == k, work, size)
        n = int(mask.sum())  # pixels in the image
        cy = float(mask.sum(1) @ np.arange(mask.shape[0])) / n + bbox[1]  # centroid from row and column counts
        cx = float(mask.sum(0) @ np.arange(mask.shape[1])) / n + bbox[0]
        mean = mass / area
        regions.append(Region(rank, bbox, n, (cx, cy), mean, mean * n, mass / total, mask))
    return regions


def segment_job(job: tuple) -> list[dict]:
    """The region fields of one map's `regions` rows, the mask at the working size (tasks/masks.py): job = (map
    cells, grid side, image (W, H), SegmentConfig, image array or None). Small in, small out, and in a module that
    does not import torch: it runs in worker processes (tasks/pipeline/procpool.py). The reference of tasks/segment_batch.py,
    and the path of superpixel snapping (scikit-image's SLIC)."""
    cells, g, size, cfg, picture = job
    work, labels, kept, total = components(np.asarray(cells, np.float32).reshape(g, g), size, cfg, picture)
    return [region_fields(rank, box, labels[box[1]:box[3], box[0]:box[2]] == k, work, size, area, mass, total)
            for rank, (k, box, area, mass) in enumerate(kept)]


def region_iou(region: Region, mask: np.ndarray) -> float:
    """IoU of a region (in its bbox) with a full-image object mask."""
    full = np.zeros_like(mask, dtype=bool)
    x0, y0, x1, y1 = region.bbox
    full[y0:y1, x0:x1] = region.mask
    union = (full | mask).sum()
    return float((full & mask).sum() / union) if union else 0.0
