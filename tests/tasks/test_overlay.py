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


def test_boxes_on_a_thumbnail_land_where_they_do_on_the_full_image():
    """The report draws thumbnails; region boxes stay in the classified image's pixels (`size`)."""
    image = Image.new("RGB", (400, 200), (0, 0, 0))
    thumb = image.copy()
    thumb.thumbnail((160, 160))
    box = [[(200, 100, 399, 199)]]
    full = np.asarray(overlay_row(image, [None], ["x"], tile=100, boxes=box))
    small = np.asarray(overlay_row(thumb, [None], ["x"], tile=100, boxes=box, size=image.size))
    assert np.array_equal(full, small)


def test_a_draft_decode_is_a_smaller_picture_of_the_same_photo(tmp_path):
    """load_image(draft=N): a large JPEG decoded at a reduced DCT scale, both sides still ≥ N, the same content
    id, and the same picture as the full decode shrunk; other formats decode whole."""
    from mapcap.tasks.data import load_image
    rng = np.random.default_rng(1)
    big = Image.fromarray(rng.integers(0, 255, (60, 80, 3), dtype=np.uint8)).resize((3200, 2400), Image.BICUBIC)
    big.save(tmp_path / "big.jpg", quality=90)
    big.save(tmp_path / "big.png")
    full, fid = load_image(str(tmp_path / "big.jpg"))
    small, sid = load_image(str(tmp_path / "big.jpg"), draft=320)
    assert sid == fid and full.size == (3200, 2400)
    assert small.size in {(1600, 1200), (800, 600), (400, 300)} and min(small.size) >= 320  # 1/2, 1/4 or 1/8
    ref = np.asarray(full.resize(small.size, Image.BOX), dtype=float)
    assert np.abs(np.asarray(small, dtype=float) - ref).mean() < 4
    assert load_image(str(tmp_path / "big.png"), draft=320)[0].size == (3200, 2400)
