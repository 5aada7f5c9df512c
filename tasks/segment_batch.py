"""Segmenting a batch of relevancy maps at once, as tensor ops at each map's working size.

The scikit-image path (tasks/segment.py, the reference) spends 2-3 ms of host time per map in Python and small
numpy calls, and scaled every mask to image pixels (62 ms per map for a 4000×3000 photo). Here every map of a
batch is upsampled by one batched matrix product (each to its own working size, zero-padded to the largest),
thresholded by a histogram Otsu (or the mass rule) computed for all maps together, split into 8-connected
components and measured by counting labels over the whole batch. Masks stay at the working size (tasks/masks.py).

Components: scipy's `label` over the stacked batch on CPU (one C call, exact), min-label propagation with pointer
jumping on a GPU (exact at convergence; a few dozen 3×3 min-pools at ≤ 256 px). The thresholds follow
scikit-image's `threshold_otsu` (256 bins over the map's range, the first best split); the upsampling is PIL's
bilinear resize (a triangle filter, edge weights renormalised) as a matrix.
"""
from __future__ import annotations

import functools
import multiprocessing as mp

import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import find_objects, label

from mapcap.tasks.masks import measures, rle_encode
from mapcap.tasks.region_columns import RegionColumns
from mapcap.tasks.segment import SegmentConfig, working_size

BINS = 256  # scikit-image's threshold_otsu default
CHUNK = 64  # maps per batched call: (B, h, w) working copies of ≤ 17 MB, which stay in cache better than larger
STRUCTURE = np.zeros((3, 3, 3), bool)
STRUCTURE[1] = True  # 8-connected within a map, never across the maps of the stack


@functools.lru_cache(maxsize=64)
def resize_matrix(n: int, m: int) -> torch.Tensor:
    """(m, n) float64: PIL's bilinear resize of a length-n axis to length m (a triangle filter around each output
    pixel's centre, the weights that fall outside renormalised), its arithmetic in its order."""
    scale = n / m
    support = max(scale, 1.0)
    centre = (torch.arange(m, dtype=torch.float64) + 0.5) * scale  # (m,) in input pixel units
    x = (torch.arange(n, dtype=torch.float64)[None] - centre[:, None] + 0.5) / support  # (m, n)
    w = (1 - x.abs()).clamp(min=0)
    return w / w.sum(1, keepdim=True)  # (m, n)


def upsample(maps: torch.Tensor, work: tuple[int, int]) -> torch.Tensor:
    """(B, g, g) maps → (B, h, w) float32 upsampled to the working size (w, h), clipped at 0: rows first, then
    columns, in float64 rounded to float32 after each pass, as PIL resizes a float image."""
    g = maps.shape[-1]
    w, h = work
    ry = resize_matrix(g, h).to(maps.device)  # (h, g)
    rx = resize_matrix(g, w).to(maps.device)  # (w, g)
    rows = (maps.double() @ rx.T).float().double()  # (B, g, w)
    return (ry @ rows).float().clamp_(min=0)  # (B, h, w)


def otsu(up: torch.Tensor) -> torch.Tensor:
    """(B,) Otsu thresholds of (B, h, w) maps, as scikit-image computes them (256 bins over each map's range,
    the first best split, float64 statistics); +inf for a flat map (no foreground)."""
    B = up.shape[0]
    lo, hi = up.flatten(1).aminmax(dim=1)  # (B,), (B,)
    span = (hi - lo).clamp_(min=torch.finfo(up.dtype).tiny)[:, None, None]
    # np.histogram's bin of each pixel (float32 as it computes it for a float32 map: (x - lo) / span · bins, the
    # maximum in the last bin), offset by the map's bins: one bincount for the batch
    bins = (up - lo[:, None, None]).div_(span).mul_(BINS).to(torch.int32).clamp_(max=BINS - 1)  # (B, h, w)
    bins += BINS * torch.arange(B, device=up.device, dtype=torch.int32)[:, None, None]
    counts = torch.bincount(bins.flatten(), minlength=B * BINS).view(B, BINS)  # (B, BINS)
    lo, hi = lo.double(), hi.double()
    centres = lo[:, None] + (torch.arange(BINS, device=up.device) + 0.5) * ((hi - lo) / BINS)[:, None]  # (B, BINS)
    counts = counts.double()  # (B, BINS)
    w1, w2 = counts.cumsum(1), counts.flip(1).cumsum(1).flip(1)
    m1 = (counts * centres).cumsum(1) / w1
    m2 = (counts * centres).flip(1).cumsum(1).flip(1) / w2
    between = w1[:, :-1] * w2[:, 1:] * (m1[:, :-1] - m2[:, 1:]) ** 2  # (B, BINS - 1)
    best = torch.nan_to_num(between, nan=-1.0).argmax(1)  # first of equal maxima, as numpy's argmax
    thr = centres.gather(1, best[:, None])[:, 0]
    return torch.where(hi > lo, thr, torch.inf)


def mass_threshold(up: torch.Tensor, share: float) -> torch.Tensor:
    """(B,) the value above which the most relevant pixels hold `share` of each map's mass (foreground: ≥)."""
    order = up.flatten(1).sort(1, descending=True).values  # (B, N)
    cum = order.cumsum(1)  # float32, as numpy sums the reference's float32 map
    k = torch.searchsorted(cum, (share * cum[:, -1:]).contiguous()).squeeze(1)  # (B,)
    k = torch.where(cum[:, -1] > 0, k, torch.zeros_like(k)).clamp(max=order.shape[1] - 1)
    return order.gather(1, k[:, None])[:, 0]


def label_device(fg: torch.Tensor) -> torch.Tensor:
    """(B, h, w) bool → (B, h, w) int64 labels of 8-connected components, numbered 1.. over the whole batch in
    raster order of their first pixel (scipy's numbering): each foreground pixel takes the least index in its
    3×3 neighbourhood, then the label of the pixel that index names (pointer jumping), until nothing changes."""
    B, h, w = fg.shape
    big = float(h * w + 1)
    own = torch.arange(1, h * w + 1, device=fg.device, dtype=torch.float32).view(1, h, w).expand(B, h, w)
    lab = torch.where(fg, own, big)  # (B, h, w) float: index + 1 of some pixel of the same component
    while True:
        low = -F.max_pool2d(-lab[:, None], 3, 1, 1)[:, 0]  # (B, h, w) least label around each pixel
        low = torch.where(fg, torch.minimum(low, lab), big)
        flat = low.flatten(1)  # (B, h*w)
        jumped = torch.where(fg.flatten(1), flat.gather(1, (flat.clamp(max=h * w) - 1).long()), big).view(B, h, w)
        if torch.equal(jumped, lab):
            break
        lab = jumped
    roots = fg & (lab == own)  # each component's first pixel
    number = roots.flatten().cumsum(0).view(B, h, w)  # (B, h, w) its number, counted over the batch
    first = (lab.long().clamp(max=h * w) - 1 + h * w * torch.arange(B, device=fg.device)[:, None, None])
    return torch.where(fg, number.flatten()[first.flatten()].view(B, h, w), 0)


def label_batch(fg: torch.Tensor) -> np.ndarray:
    """(B, h, w) bool → (B, h, w) int32 labels on the host (numbered over the batch in raster order)."""
    if fg.device.type == "cpu":
        return label(fg.numpy(), STRUCTURE)[0]
    return label_device(fg).int().cpu().numpy()


def segment_columns(maps: torch.Tensor, sizes: list[tuple[int, int]], cfg: SegmentConfig = SegmentConfig(),
                    ) -> RegionColumns:
    """The regions of each (g, g) map of `maps` (B, g, g) over an image of PIL size sizes[b], as columns in map
    then rank order: maps of one working size are segmented together, CHUNK at a time, on maps' device."""
    if cfg.superpixels:
        raise ValueError("superpixel snapping runs in tasks/segment.py (scikit-image's SLIC); use segment_job")
    if cfg.threshold not in ("otsu", "mass"):
        raise ValueError(f"threshold {cfg.threshold!r} is unknown; use 'otsu' or 'mass'")
    groups: dict[tuple[int, int], list[int]] = {}
    for b, size in enumerate(sizes):
        groups.setdefault(working_size(size, cfg.resolution), []).append(b)
    parts, names = [], []
    for work, idx in groups.items():
        for c in range(0, len(idx), CHUNK):
            part = idx[c:c + CHUNK]
            parts.append(_segment_group(maps[part], work, [sizes[b] for b in part], cfg))
            names.append(np.array(part, np.int64))
    return RegionColumns.concat(parts, names)


def segment_batch(maps: torch.Tensor, sizes: list[tuple[int, int]], cfg: SegmentConfig = SegmentConfig(),
                  ) -> list[list[dict]]:
    """`segment_columns` as the region dicts (tasks/masks.region_fields) of each map, in rank order."""
    return segment_columns(maps, sizes, cfg).rows(len(sizes))


def segment_chunk(job: tuple) -> RegionColumns:
    """segment_columns on CPU in a worker process (tasks/pipeline/procpool.py), one torch thread each: job =
    ((B, g, g) float32 cells, sizes, SegmentConfig). The regions stage segments in its own process (a pool's
    start costs more than a shard's maps); bench/segment.py times both ways."""
    cells, sizes, cfg = job
    if mp.parent_process() is not None:  # in a pool's worker, not in the caller (few maps run there)
        torch.set_num_threads(1)
    return segment_columns(torch.from_numpy(cells), sizes, cfg)


def _segment_group(maps: torch.Tensor, work: tuple[int, int], sizes: list[tuple[int, int]], cfg: SegmentConfig,
                   ) -> RegionColumns:
    """segment_columns for (B, g, g) maps of one working size."""
    w, h = work
    up = upsample(maps, work)  # (B, h, w) float32
    if cfg.threshold == "otsu":
        fg = up > otsu(up).to(up.dtype)[:, None, None]  # (B, h, w)
    else:
        fg = up >= mass_threshold(up, cfg.mass)[:, None, None]
    labels = label_batch(fg)  # (B, h, w) int32, 0 = background
    inside = fg.cpu().numpy().ravel()  # only the components' pixels are counted (the background is most)
    flat = labels.ravel()[inside]  # (F,) labels ≥ 1
    n = int(labels.max(initial=0)) + 1
    area = np.bincount(flat, minlength=n)  # (n + 1,), [0] = 0
    mass = np.bincount(flat, weights=up.cpu().numpy().ravel()[inside], minlength=n)  # (n + 1,) float64
    total = up.flatten(1).sum(1, dtype=torch.float64).cpu().numpy()  # (B,) summed in float64, no float64 copy
    boxes = find_objects(labels)  # boxes[k - 1]: (maps, rows, columns) of component k
    first = np.array([box[0].start for box in boxes], np.int64)  # (n,) the map of each component
    big = np.flatnonzero(area[1:] >= cfg.min_area * w * h) + 1  # component labels, specks dropped
    # per map, by mass (equal masses keep label order), the first top_k
    ranked = big[np.lexsort((big, -mass[big], first[big - 1]))]  # (K,) labels, grouped by map
    b = first[ranked - 1]  # (K,) their maps
    rank = np.arange(len(ranked)) - np.searchsorted(b, b)  # (K,) position within its map
    keep = ranked[rank < cfg.top_k]  # (R,)
    b, rank = b[rank < cfg.top_k], rank[rank < cfg.top_k]
    R = len(keep)
    wbox = np.array([(bx[2].start, bx[1].start, bx[2].stop, bx[1].stop) for bx in (boxes[k - 1] for k in keep)],
                    np.int64).reshape(R, 4)  # (R, 4) x0, y0, x1, y1 at the working size
    size = np.array(sizes, np.int64).reshape(-1, 2)[b]  # (R, 2) each region's image (W, H)
    scale = np.concatenate([size, size], 1)  # (R, 4)
    bbox = -(-wbox * scale // np.array([w, h, w, h]))  # (R, 4) image pixels (masks.image_box)
    n, cx, cy, rle = np.zeros(R), np.zeros(R), np.zeros(R), []
    for r, (k, m) in enumerate(zip(keep.tolist(), b.tolist())):
        x0, y0, x1, y1 = wbox[r].tolist()
        mask = labels[m, y0:y1, x0:x1] == k  # (bh, bw)
        n[r], cx[r], cy[r] = measures((x0, y0, x1, y1), mask, work, sizes[m])
        rle.append(np.asarray(rle_encode(mask), np.int32))
    mean = mass[keep] / area[keep]  # (R,) working-pixel mean relevancy
    return RegionColumns(map=b, region_id=rank.astype(np.int32), bbox=bbox, area=np.round(n).astype(np.int64),
                         centroid_x=cx, centroid_y=cy, mean_relevancy=mean, mass=mean * n,
                         mass_share=mass[keep] / np.where(total[b] != 0, total[b], 1.0), mask_rle=rle,
                         mask_size=np.tile(np.array([w, h], np.int32), (R, 1)), image_size=size.astype(np.int32))
