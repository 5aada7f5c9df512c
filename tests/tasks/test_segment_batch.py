"""Segmentation as batched tensor ops (tasks/segment_batch.py) against the scikit-image reference, and the stored
masks at the working size (tasks/masks.py) read back in image pixels."""
import numpy as np
import pytest
import torch
from scipy.ndimage import label

from mapcap.tasks.masks import full_mask, region_fields, region_pixels, rle_encode
from mapcap.tasks.segment import SegmentConfig, segment_job, segment_map
from mapcap.tasks.segment_batch import STRUCTURE, label_device, segment_batch

SIZES = [(500, 375), (375, 500), (4000, 3000), (64, 48), (20, 15)]  # photos, small images, one under 256 px


def blob(g: int, cx: float, cy: float, r: float) -> np.ndarray:
    y, x = np.mgrid[:g, :g]
    return np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * r * r)).astype(np.float32)


def grid_of_maps(rng: np.random.Generator) -> list[np.ndarray]:
    """Noise, one blob, several blobs, flat, tiny (2×2) and negative maps."""
    maps = [rng.random((14, 14)).astype(np.float32) ** rng.uniform(1, 6) for _ in range(12)]
    maps += [blob(14, *rng.uniform(2, 12, 2), rng.uniform(1, 4)) for _ in range(6)]
    maps += [sum(blob(14, *rng.uniform(0, 14, 2), rng.uniform(0.8, 2)) for _ in range(4)) for _ in range(6)]
    maps += [np.full((14, 14), 0.3, np.float32), np.zeros((14, 14), np.float32)]
    maps += [np.round(rng.random((14, 14)) * 3).astype(np.float32) / 3 for _ in range(4)]  # plateaus, ties
    maps += [-rng.random((14, 14)).astype(np.float32)]
    return maps


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


@pytest.mark.parametrize("threshold", ["otsu", "mass"])
def test_batched_regions_match_scikit_image(threshold):
    """Same regions, in the same order, as the reference: every matched region ≥ 0.95 IoU in image pixels, and
    nearly all identical (float rounding in a threshold moves a pixel at most)."""
    rng = np.random.default_rng(3)
    cfg = SegmentConfig(threshold=threshold, mass=0.6, top_k=4)
    maps = grid_of_maps(rng)
    sizes = [SIZES[i % len(SIZES)] for i in range(len(maps))]
    got = segment_batch(torch.from_numpy(np.stack(maps)), sizes, cfg)
    same, worst = 0, 1.0
    shape = lambda rows: [(r["bbox"], r["area"], r["mask_rle"]) for r in rows]  # noqa: E731
    for m, size, mine in zip(maps, sizes, got):
        ref = segment_job((m.ravel().tolist(), 14, size, cfg, None))
        assert len(mine) == len(ref)
        same += shape(mine) == shape(ref)
        for a, b in zip(ref, mine):
            worst = min(worst, iou(full_mask(a, size), full_mask(b, size)))
            assert b["mass_share"] == pytest.approx(a["mass_share"], rel=1e-3, abs=1e-6)
    assert worst >= 0.95 and same >= 0.9 * len(maps)
    flat = [len(got[i]) for i in (24, 25, -1)]  # constant, zero, negative (clipped to zero) maps
    assert flat == ([0, 0, 0] if threshold == "otsu" else [1, 1, 1])  # the mass rule keeps all of a flat map
    assert sum(map(len, got)) > 40


def test_a_tiny_grid_gives_the_reference_regions():
    tiny = np.random.default_rng(4).random((2, 2)).astype(np.float32)
    got = segment_batch(torch.from_numpy(tiny[None]), [(500, 375)])[0]
    ref = segment_job((tiny.ravel().tolist(), 2, (500, 375), SegmentConfig(), None))
    assert got and [(r["bbox"], r["mask_rle"]) for r in got] == [(r["bbox"], r["mask_rle"]) for r in ref]


def test_device_labels_are_scipys():
    """Min-label propagation (the GPU path) numbers components as scipy does over the stacked batch: exact, also
    for snakes whose ends are far apart along the component."""
    rng = np.random.default_rng(5)
    fg = rng.random((6, 40, 56)) > 0.55
    snake = np.zeros((40, 56), bool)
    snake[::4, 1:-1] = True
    snake[np.arange(1, 40, 8)[:, None] + np.arange(3), -2] = True
    snake[np.arange(5, 40, 8)[:, None] + np.arange(3), 1] = True
    fg = np.concatenate([fg, snake[None], np.zeros((1, 40, 56), bool)])
    assert np.array_equal(label_device(torch.from_numpy(fg)).numpy(), label(fg, STRUCTURE)[0])


@pytest.mark.parametrize("size", [(500, 375), (4000, 3000), (200, 150), (257, 31)])
def test_stored_mask_scales_to_the_reference_regions(size):
    """A mask stored at the working size, read back in image pixels, is the reference's image-pixel mask, and
    its bbox, area and centroid (counted without scaling) are the reference's."""
    rng = np.random.default_rng(6)
    for _ in range(6):
        g = rng.random((14, 14)).astype(np.float32) ** 3
        ref = segment_map(g, size)
        rows = segment_job((g.ravel().tolist(), 14, size, SegmentConfig(), None))
        assert len(rows) == len(ref) > 0
        for r, row in zip(ref, rows):
            bbox, mask = region_pixels(row)
            assert bbox == r.bbox and np.array_equal(mask, r.mask) and row["area"] == r.area
            assert (row["centroid_x"], row["centroid_y"]) == pytest.approx(r.centroid, abs=1e-6)
            assert row["mass"] == pytest.approx(r.mass, rel=1e-9) and max(row["mask_size"]) <= 256


def test_masks_of_earlier_runs_read_at_image_pixels():
    """Rows written before masks were stored at the working size (no mask_size) still read."""
    mask = np.zeros((5, 7), bool)
    mask[1:4, 2:6] = True
    old = {"bbox": [10, 20, 17, 25], "mask_rle": rle_encode(mask)}
    assert region_pixels(old)[1].tolist() == mask.tolist()
    full = full_mask(old, (30, 40))
    assert full.shape == (40, 30) and full.sum() == mask.sum() and full[21:24, 12:16].all()


def test_region_fields_count_image_pixels_without_scaling():
    work, size = (3, 2), (7, 5)  # working column 0 covers image columns 0-2, 1: 3-4, 2: 5-6
    mask = np.array([[True, False], [True, True]])
    row = region_fields(0, (1, 0, 3, 2), mask, work, size, area=3, mass=3.0, total=6.0)
    _, pixels = region_pixels(row)
    assert row["bbox"] == [3, 0, 7, 5] and row["area"] == pixels.sum() == 2 * 3 + 2 * 2 + 2 * 2
    ys, xs = np.nonzero(pixels)
    assert (row["centroid_x"], row["centroid_y"]) == pytest.approx((xs.mean() + 3, ys.mean()))
    assert row["mass_share"] == 0.5


def test_a_run_written_before_masks_at_the_working_size_still_reads(tmp_path):
    """A regions file without mask_size and image_size (earlier runs) reads beside a new one: in DuckDB and
    read_run the new columns are null there, and its masks read in image pixels."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from mapcap.storage.query import connect, run_sql
    from mapcap.storage.writer import read_run, table_path, write_table
    root = str(tmp_path)
    g = blob(14, 5, 6, 2)
    new = segment_job((g.ravel().tolist(), 14, (4000, 3000), SegmentConfig(), None))[0]
    ref = segment_map(g, (4000, 3000))[0]
    keys = {"run_id": "r", "image_id": "a", "shard": 0, "target": "pred", "class_name": "c", "method": "chefer",
            "start_layer": -1}
    write_table(root, "regions", "r", "shard-00000", [keys | new])
    old = {k: v for k, v in (keys | new).items() if k not in ("mask_size", "image_size")}
    old |= {"image_id": "b", "mask_rle": rle_encode(ref.mask)}  # as earlier runs stored it: image pixels
    path = table_path(root, "regions", "r", "shard-00001")
    pq.write_table(pa.Table.from_pylist([old]), path)
    rows = {r["image_id"]: r for r in read_run(root, "regions", "r").to_pylist()}
    assert rows["b"]["mask_size"] is None and rows["a"]["mask_size"] == new["mask_size"]
    assert np.array_equal(region_pixels(rows["a"])[1], region_pixels(rows["b"])[1])
    assert np.array_equal(region_pixels(rows["b"])[1], ref.mask)
    sql = run_sql(connect(root), "SELECT image_id, mask_size FROM regions ORDER BY image_id").to_pylist()
    assert sql == [{"image_id": "a", "mask_size": new["mask_size"]}, {"image_id": "b", "mask_size": None}]
