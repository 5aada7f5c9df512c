"""The regions of a batch of maps as columns: one array per field, one entry per region, in map then rank order.

A shard's regions were one dict per region and then one dict per row (a right prediction's map is stored for
both targets), each copied into Arrow value by value. As columns they cross the process pool as a few arrays and
become the `regions` table by index (`take`), with the keys of the relevancy rows they came from. Torch-free:
worker processes build them.
"""
from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

FIELDS = ("region_id", "bbox", "area", "centroid_x", "centroid_y", "mean_relevancy", "mass", "mass_share",
          "mask_rle", "mask_size", "image_size")  # the regions table's columns a segmentation gives


@dataclass
class RegionColumns:
    map: np.ndarray  # (R,) int64: the region's map, its index in the batch
    region_id: np.ndarray  # (R,) int32: rank by mass within its map, 0 = most
    bbox: np.ndarray  # (R, 4) int64: x0, y0, x1, y1 in image pixels
    area: np.ndarray  # (R,) int64: image pixels
    centroid_x: np.ndarray  # (R,) float64, image pixels
    centroid_y: np.ndarray  # (R,) float64
    mean_relevancy: np.ndarray  # (R,) float64
    mass: np.ndarray  # (R,) float64: mean relevancy × image pixels
    mass_share: np.ndarray  # (R,) float64: of the map's total mass
    mask_rle: list[np.ndarray]  # R run-length arrays over the box at the working size (tasks/masks.py)
    mask_size: np.ndarray  # (R, 2) int32: the working size (w, h)
    image_size: np.ndarray  # (R, 2) int32: (W, H)

    def __len__(self) -> int:
        return len(self.map)

    @classmethod
    def empty(cls) -> RegionColumns:
        return cls.from_maps([])

    @classmethod
    def from_maps(cls, per_map: list[list[dict]]) -> RegionColumns:
        """Columns of region dicts (tasks/masks.region_fields) given per map (SLIC snapping's path)."""
        rows = [r for regs in per_map for r in regs]
        col = lambda k, dt: np.array([r[k] for r in rows], dt)  # noqa: E731
        return cls(map=np.repeat(np.arange(len(per_map), dtype=np.int64), [len(r) for r in per_map]),
                   region_id=col("region_id", np.int32), bbox=col("bbox", np.int64).reshape(-1, 4),
                   area=col("area", np.int64), centroid_x=col("centroid_x", np.float64),
                   centroid_y=col("centroid_y", np.float64), mean_relevancy=col("mean_relevancy", np.float64),
                   mass=col("mass", np.float64), mass_share=col("mass_share", np.float64),
                   mask_rle=[np.asarray(r["mask_rle"], np.int32) for r in rows],
                   mask_size=col("mask_size", np.int32).reshape(-1, 2),
                   image_size=col("image_size", np.int32).reshape(-1, 2))

    @classmethod
    def concat(cls, parts: list[RegionColumns], maps: list[np.ndarray]) -> RegionColumns:
        """One batch of `parts`, part p's map m renamed maps[p][m] (its index in the whole batch), in the order
        of the new map indices (a part's regions are in rank order and stay so)."""
        if not parts:
            return cls.empty()
        out = {f.name: (np.concatenate([maps[p][part.map] for p, part in enumerate(parts)]) if f.name == "map"
                        else [a for part in parts for a in part.mask_rle] if f.name == "mask_rle"
                        else np.concatenate([getattr(part, f.name) for part in parts]))
               for f in fields(cls)}
        return cls(**out).take(np.argsort(out["map"], kind="stable"))

    def take(self, idx: np.ndarray) -> RegionColumns:
        """The regions at `idx` (R',), in that order."""
        return RegionColumns(**{f.name: [self.mask_rle[i] for i in idx.tolist()] if f.name == "mask_rle"
                                else getattr(self, f.name)[idx] for f in fields(self)})

    def of_maps(self, n_maps: int) -> tuple[np.ndarray, np.ndarray]:
        """(first, count): each map's first region's index and its number of regions, (n_maps,) each."""
        count = np.bincount(self.map, minlength=n_maps)
        return np.cumsum(count) - count, count

    def rows(self, n_maps: int) -> list[list[dict]]:
        """The regions of each of n_maps maps as dicts (tests, the reference comparison, the bench)."""
        out: list[list[dict]] = [[] for _ in range(n_maps)]
        for i in range(len(self)):
            out[int(self.map[i])].append(self.row(i))
        return out

    def row(self, i: int) -> dict:
        """Region i as a dict of the regions table's columns (Python values)."""
        return {k: (getattr(self, k)[i].tolist() if k != "mask_rle" else self.mask_rle[i].tolist()) for k in FIELDS}
