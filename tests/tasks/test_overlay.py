"""Heatmap overlays are drawn at tile size: the same picture as blending at full size, boxes where they belong."""
import numpy as np
from mapcap.tasks.report.overlay import overlay, overlay_row
from PIL import Image, ImageFilter


def test_a_row_of_overlays_matches_blending_at_full_size():
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (300, 400, 3), dtype=np.uint8)).filter(ImageFilter.GaussianBlur(4))
    grid = rng.random((7, 7)).astype(np.float32)
    row = overlay_row(image, [None, grid], ["image", "map"], tile=100)
    assert row.size == (200, 118)
    tiles = np.asarray(row, dtype=float)[18:]  # (100, 200, 3) below the titles
    full = np.asarray(overlay(image, grid).resize((100, 100), Image.BILINEAR), dtype=float)
    plain = np.asarray(image.resize((100, 100), Image.BILINEAR), dtype=float)
    assert np.abs(tiles[:, 100:] - full).mean() < 3 and np.array_equal(tiles[:, :100], plain)


def test_region_boxes_scale_from_image_pixels_to_the_tile():
    image = Image.new("RGB", (400, 200), (0, 0, 0))
    row = overlay_row(image, [None], ["x"], tile=100, boxes=[[(200, 100, 399, 199)]])
    px = np.asarray(row)[18:]  # (100, 100, 3)
    assert px[75, 50].tolist() == [255, 255, 255]  # the box's left edge: x 200 → 50 (y 150 → 75)
    assert px[25, 25].tolist() == [0, 0, 0]  # outside the box
