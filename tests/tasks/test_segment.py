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
    with pytest.raises(ValueError, match="threshold 'nope'"):
        segment_map(g, (128, 128), SegmentConfig(threshold="nope"))
