import numpy as np
import pyarrow.parquet as pq

from mapcap.toy.captions import ANY, ABSENT, bit, sample_caption, truth_matrix
from mapcap.toy.dataset import make_scene, png_to_mask, write_toy_dataset
from mapcap.toy.shapes import COLOURS, SHAPES


def test_scene_is_deterministic_per_seed():
    a = make_scene(np.random.default_rng(7), "single")
    b = make_scene(np.random.default_rng(7), "single")
    c = make_scene(np.random.default_rng(8), "single")
    assert np.array_equal(a.image, b.image) and a.caption == b.caption
    assert not np.array_equal(a.image, c.image)


def test_every_shape_has_a_mask_in_its_colour_and_a_caption_naming_it():
    rng = np.random.default_rng(0)
    for shape in SHAPES:
        s = make_scene(rng, "single", shape)
        mask = s.masks[0]
        assert 50 < mask.sum() < 0.5 * mask.size
        colour = np.asarray(COLOURS[s.objects[0].colour], float)
        inside = s.image[mask].astype(float).mean(0)
        outside = s.image[~mask].astype(float).mean(0)
        assert np.abs(inside - colour).sum() < np.abs(outside - colour).sum()
        article = "an" if s.objects[0].colour == "orange" else "a"
        assert s.caption.startswith(f"{article} {s.objects[0].colour} {shape} ")


def test_pairs_and_distractors_name_both_objects_with_disjoint_masks():
    rng = np.random.default_rng(1)
    for kind in ("pair", "distractor"):
        s = make_scene(rng, kind, "star")
        assert len(s.objects) == 2 and s.objects[1].shape != "star"
        assert " and " in s.caption and s.objects[1].shape in s.caption
        assert not (s.masks[0] & s.masks[1]).any()
    d = make_scene(rng, "distractor", "ring")
    assert d.masks[1].sum() < d.masks[0].sum()  # the distractor is the smaller object


def test_written_dataset_is_imagefolder_plus_manifest(tmp_path):
    manifest = write_toy_dataset(tmp_path, n_per_class=2, seed=3)
    t = pq.read_table(manifest)
    assert t.num_rows == 2 * len(SHAPES)
    assert {"path", "label", "split", "mask", "caption"} <= set(t.column_names)
    row = t.slice(0, 1).to_pylist()[0]
    assert (tmp_path / row["path"]).is_file() and row["path"].startswith(row["label"] + "/")
    assert png_to_mask(row["mask"]).shape == (128, 128)


def test_truth_matrix_treats_any_true_caption_as_positive():
    objs = np.array([[[3, 0, 0, 1], [ABSENT] * 4],  # red star
                     [[3, 2, 4, 1], [4, 0, 1, 0]],  # blue star + red ring
                     [[4, 2, 0, 0], [ABSENT] * 4]])  # blue ring
    cons = np.array([[[bit(3), ANY, ANY, ANY], [ABSENT] * 4],  # "a star"
                     [[bit(3), 0, ANY, ANY], [ABSENT] * 4],  # "a red star"
                     [[bit(3), ANY, ANY, ANY], [bit(4), ANY, ANY, ANY]],  # "a star and a ring"
                     [[bit(["star", "cross"]), ANY, ANY, ANY], [ABSENT] * 4],  # "inward corners"
                     [[bit(["circle", "ring"]), 0, ANY, ANY], [ABSENT] * 4]])  # "a red shape, which has no corners"
    t = truth_matrix(cons, objs)
    assert t.tolist() == [[True, True, False], [True, False, False], [False, True, False], [True, True, False],
                          [False, True, False]]


def test_descriptor_captions_are_true_of_every_shape_with_that_property():
    from mapcap.toy.concepts import PROPERTIES
    rng = np.random.default_rng(0)
    every = np.array([[[s, 0, 0, 1], [ABSENT] * 4] for s in range(len(SHAPES))])  # one red object per shape
    seen = set()
    for _ in range(400):
        text, cons = sample_caption(rng, every[SHAPES.index("cross")], descriptors=1.0)
        true_of = {SHAPES[i] for i, ok in enumerate(truth_matrix(cons[None], every)[0]) if ok}
        assert "cross" in true_of
        descriptor = next((d for d in PROPERTIES if text.endswith(d)), None)
        assert descriptor is not None and descriptor in ("right angles", "inward corners", "four arms", "twelve corners")
        if "cross" not in text.split(", ")[0] or text == descriptor:
            assert true_of == PROPERTIES[descriptor]  # class-free: every shape with the property
            seen.add(descriptor)
        else:
            assert true_of == {"cross"}  # names the class
    assert len(seen) == 4
