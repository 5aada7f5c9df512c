"""Semantic checks on the toy world with the shipped toy CLIP: what the README's figures claim."""
import pytest

from mapcap.toy.evaluate import evaluate_toy_relevancy


@pytest.fixture(scope="module")
def figures(toy_model):
    rows = evaluate_toy_relevancy(toy_model, n_single=48, n_pair=32, seed=77, steps=16)  # RISE at 16 steps: fast
    return {(r["method"], r["start_layer"], r["metric"]): r["value"] for r in rows}


def test_chefer_all_blocks_points_at_the_object(figures):
    assert figures[("chefer", 0, "pointing_grid")] >= 0.9


@pytest.mark.parametrize("method,start", [("chefer", 0), ("chefer", -1), ("legrad", -2), ("grad_eclip", None),
                                          ("gradient", None)])
def test_every_method_beats_the_random_map_widely(figures, method, start):
    assert figures[(method, start, "pointing_grid")] >= figures[("random", None, "pointing_grid")] + 0.25
    # removing the most relevant patches first hurts more than removing random ones
    assert figures[(method, start, "deletion_auc")] < figures[("random", None, "deletion_auc")]


def test_top_region_of_default_segmentation_overlaps_the_object(figures):
    iou = figures[("chefer", 0, "region_iou_median")]
    assert iou >= 0.3 and iou >= 3 * figures[("random", None, "region_iou_median")]


def test_description_based_classification_is_as_good_as_class_names(toy_model):
    """Menon & Vondrick's classifier with the toy concept bank, on held-out scenes the CLIP never saw."""
    from mapcap.toy.train import EVAL_TEMPLATES, description_accuracy, heldout, zero_shot_accuracy

    x, y = heldout(n=240, seed=2024)
    names = zero_shot_accuracy(toy_model.model, toy_model.tokenizer, x, y, EVAL_TEMPLATES["simple"])
    described = description_accuracy(toy_model.model, toy_model.tokenizer, x, y)
    assert names >= 0.93 and described >= names - 0.02


def test_regions_at_map_resolution_overlap_the_object_as_full_size_ones_do(toy_model):
    """Scenes drawn at 640 px: segmenting at 256 px and scaling back finds the same object regions."""
    import numpy as np
    import torch
    from PIL import Image

    from mapcap.tasks.relevancy.methods import relevancy_maps
    from mapcap.tasks.segment import SegmentConfig, region_iou, segment_map
    from mapcap.tasks.zeroshot import text_classifier
    from mapcap.toy.dataset import make_scene
    from mapcap.toy.shapes import SHAPES

    rng = np.random.default_rng(3)
    scenes = [make_scene(rng, shape=SHAPES[i % len(SHAPES)], side=640) for i in range(16)]
    pix = torch.stack([toy_model.preprocess(Image.fromarray(s.image)) for s in scenes])
    emb = text_classifier(toy_model, tuple(SHAPES), ("a photo of a {}.",))[-1]
    maps = relevancy_maps(toy_model, "chefer", pix, emb[[SHAPES.index(s.objects[0].shape) for s in scenes]], 0)
    fast, full = [], []
    for m, s in zip(maps.numpy(), scenes):
        for cfg, out in ((SegmentConfig(resolution=256), fast), (SegmentConfig(resolution=0), full)):
            regions = segment_map(m, (640, 640), cfg)
            out.append(region_iou(regions[0], s.masks[0]) if regions else 0.0)
    assert np.median(full) >= 0.3
    assert abs(np.median(fast) - np.median(full)) <= 0.02 and np.abs(np.array(fast) - full).max() <= 0.05
