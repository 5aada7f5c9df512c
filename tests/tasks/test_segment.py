import numpy as np
import pytest

from mapcap.tasks.segment import SegmentConfig, rle_decode, rle_encode, region_iou, segment_map


@pytest.mark.parametrize("seed", range(4))
def test_rle_round_trip(seed):
    m = np.random.default_rng(seed).random((7, 11)) > 0.5
    assert np.array_equal(rle_decode(rle_encode(m), m.shape), m)
    assert rle_encode(np.ones((2, 2), bool)) == [0, 4] and rle_encode(np.zeros((2, 2), bool)) == [4]


def test_two_blobs_ranked_by_mass_and_specks_dropped():
    g = np.zeros((8, 8))
    g[1:3, 1:3] = 1.0  # strong blob, top left
    g[5:7, 5:7] = 0.6  # weaker blob, bottom right
    regions = segment_map(g, (128, 128))
    assert len(regions) == 2 and regions[0].mass > regions[1].mass
    assert regions[0].bbox[0] < 64 and regions[1].bbox[0] > 64
    assert abs(sum(r.mass_share for r in regions) - 1.0) < 0.2
    assert segment_map(g, (128, 128), SegmentConfig(top_k=1))[0].rank == 0
    assert segment_map(np.zeros((8, 8)), (64, 64)) == []


def test_mass_threshold_and_iou():
    g = np.zeros((8, 8))
    g[2:6, 2:6] = 1.0
    obj = np.zeros((128, 128), bool)
    obj[32:96, 32:96] = True
    r = segment_map(g, (128, 128), SegmentConfig(threshold="mass", mass=0.9))[0]
    assert region_iou(r, obj) > 0.7
    with pytest.raises(ValueError, match="(?s)threshold.*'otsu' or 'mass'"):  # refused when the config is made
        SegmentConfig(threshold="nope")


@pytest.mark.parametrize("size", [(800, 600), (500, 375), (300, 700)])
def test_regions_at_map_resolution_match_full_resolution(size):
    """Segmenting at 256 px and scaling back gives the regions full-size segmentation gives."""
    rng = np.random.default_rng(sum(size))
    g = np.zeros((14, 14))
    g[2:6, 3:8] = 1.0
    g[9:12, 9:13] = 0.5
    g += 0.05 * rng.random((14, 14))
    fast = segment_map(g, size, SegmentConfig(resolution=256))
    full = segment_map(g, size, SegmentConfig(resolution=0))
    assert len(fast) == len(full) == 2
    W, H = size
    for a, b in zip(fast, full):
        whole = np.zeros((H, W), bool)
        whole[b.bbox[1]:b.bbox[3], b.bbox[0]:b.bbox[2]] = b.mask
        assert region_iou(a, whole) > 0.95
        assert a.mask.shape == (a.bbox[3] - a.bbox[1], a.bbox[2] - a.bbox[0]) and a.area == a.mask.sum()
        assert max(abs(p - q) for p, q in zip(a.bbox, b.bbox)) <= max(W, H) / 256 + 1
        assert abs(a.area - b.area) / b.area < 0.03 and abs(a.mass_share - b.mass_share) < 0.01
        assert abs(a.mass - b.mass) / b.mass < 0.03
        assert all(abs(p - q) < 2 for p, q in zip(a.centroid, b.centroid))
    small = [(r.bbox, r.area, r.mass) for r in segment_map(g, (200, 150), SegmentConfig(resolution=256))]
    assert small == [(r.bbox, r.area, r.mass) for r in segment_map(g, (200, 150), SegmentConfig(resolution=0))]


@pytest.mark.parametrize("threshold", ["otsu", "mass"])
def test_components_measured_by_counting_equal_regionprops(threshold):
    """Areas and masses come from counting labels (a regionprops object per component cost most of a noisy map's
    time): the same regions, in the same order, as regionprops finds, over noisy maps with ties."""
    from skimage.measure import label, regionprops

    from mapcap.tasks.report.overlay import upsample
    from mapcap.tasks.segment import foreground, working_size
    rng = np.random.default_rng(5)
    cfg = SegmentConfig(threshold=threshold, mass=0.7, top_k=4)
    checked = 0
    for i in range(40):
        g = rng.random((14, 14)) ** rng.uniform(1, 6)
        g = np.round(g * 4) / 4 if i % 4 == 0 else g  # equal masses: label order decides
        size = [(224, 168), (128, 200), (96, 96)][i % 3]  # at the working size: pixels compare one to one
        work = working_size(size, cfg.resolution)
        up = np.clip(upsample(g, work), 0, None)
        props = [p for p in regionprops(label(foreground(up, cfg), connectivity=2), intensity_image=up)
                 if p.area >= cfg.min_area * up.size]
        props.sort(key=lambda p: -float(p.intensity_mean * p.area))
        got = segment_map(g, size, cfg)
        assert work == size and len(got) == min(cfg.top_k, len(props))
        for r, p in zip(got, props):
            y0, x0, y1, x1 = p.bbox
            assert r.bbox == (x0, y0, x1, y1) and np.array_equal(r.mask, p.image) and r.area == p.area
            assert r.mean_relevancy == pytest.approx(float(p.intensity_mean), rel=1e-5)
            assert r.mass_share == pytest.approx(float(p.intensity_mean * p.area) / up.sum(), rel=1e-5)
            assert r.centroid == pytest.approx((p.centroid[1], p.centroid[0]), abs=1e-6)
            checked += 1
    assert checked > 40
