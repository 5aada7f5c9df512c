import json

import numpy as np
import pytest
import torch
from PIL import Image

from mapcap.tasks.captioners.base import CaptionerConfig, crop_region, make_captioner, square_box
from mapcap.tasks.metrics.clipscore import clipscore, ref_clipscore
from mapcap.tasks.concept_bank import load_descriptors
from mapcap.toy.dataset import make_scene


def _crops(n=48, seed=13):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        s = make_scene(rng, "single")
        ys, xs = np.nonzero(s.masks[0])
        box = (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
        out.append((crop_region(Image.fromarray(s.image), box, context=1.0), s.objects[0]))
    return out


def test_retrieval_captioner_names_shape_and_colour_of_toy_crops(toy_model):
    cap = make_captioner(CaptionerConfig("retrieval"), toy_model)
    crops = _crops()
    texts = cap.caption([c for c, _ in crops])
    shape_ok = np.mean([o.shape in t for t, (_, o) in zip(texts, crops)])
    colour_ok = np.mean([o.colour in t for t, (_, o) in zip(texts, crops)])
    assert shape_ok >= 0.85 and colour_ok >= 0.9, (shape_ok, colour_ok)


def test_clipscore_prefers_the_right_caption(toy_model):
    crops = _crops(16, seed=3)
    right = [f"a {o.colour} {o.shape}" for _, o in crops]
    wrong = [f"a {o.colour} {'ring' if o.shape != 'ring' else 'star'}" for _, o in crops]
    good = clipscore(toy_model, [c for c, _ in crops], right)
    bad = clipscore(toy_model, [c for c, _ in crops], wrong)
    assert (good >= 0).all() and (good <= 2.5).all() and good.mean() > bad.mean()
    ref = ref_clipscore(toy_model, [c for c, _ in crops], right, [[r] for r in right])
    assert (ref >= 0).all() and ref.mean() > 0


def test_bad_banks_and_names(tmp_path, toy_model):
    (tmp_path / "b.json").write_text(json.dumps(["not", "a", "dict"]))
    with pytest.raises(ValueError, match="must be a JSON object"):
        load_descriptors(tmp_path / "b.json")
    with pytest.raises(ValueError, match="unknown captioner 'nope'"):
        make_captioner(CaptionerConfig("nope"))


def test_crop_region_is_square_with_context_and_pads_outside():
    img = Image.new("RGB", (100, 100), (10, 20, 30))
    c = crop_region(img, (0, 0, 20, 10), context=1.0)
    assert c.size == (40, 40) and c.getpixel((0, 0)) == (10, 20, 30)


def test_crop_fill_is_the_images_mean_colour_and_inner_crops_are_plain():
    rng = np.random.default_rng(3)
    a = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    img = Image.fromarray(a)
    padded = crop_region(img, (0, 0, 10, 10), context=1.0)  # 20×20 around (5, 5): reaches outside
    assert padded.getpixel((0, 0)) == tuple(int(v) for v in a.reshape(-1, 3).mean(0))
    assert np.array_equal(np.asarray(padded)[5:, 5:], a[:15, :15])
    inner = crop_region(img.convert("L"), (20, 10, 30, 20), context=0.5)  # inside: no fill, RGB out
    x0, y0, x1, y1 = square_box((20, 10, 30, 20), 0.5)
    assert inner.mode == "RGB" and inner.size == (x1 - x0, y1 - y0)
    assert np.array_equal(np.asarray(inner), np.asarray(img.convert("L").convert("RGB"))[y0:y1, x0:x1])


def test_batched_scores_equal_one_pair_at_a_time(toy_model):
    from mapcap.tasks.captioners.base import CaptionerConfig, make_captioner
    from mapcap.tasks.models import encode_images
    crops = [Image.new("RGB", (40, 40), (200, 30 * i, 40)) for i in range(4)]
    texts = ["a red star", "a blue ring", "a red square", "a green cross"]
    refs = [["a red star"], ["a ring", "a blue ring in the middle"], ["x", "y", "a red square"], ["a cross"]]
    batched = ref_clipscore(toy_model, crops, texts, refs)
    single = torch.cat([ref_clipscore(toy_model, [c], [t], [r]) for c, t, r in zip(crops, texts, refs)])
    assert torch.allclose(batched, single, atol=1e-5)
    emb = encode_images(toy_model, crops)
    assert torch.allclose(clipscore(toy_model, crops, texts, image_emb=emb), clipscore(toy_model, crops, texts),
                          atol=1e-5)
    cap = make_captioner(CaptionerConfig("retrieval"), toy_model)
    assert cap.caption_embedded(crops, emb) == cap.caption(crops)


def test_the_general_bank_names_regions_with_objects_stuff_and_the_runs_classes(toy_model):
    """A CLIP without a phrase bank of its own gets the general bank: ImageNet's objects, stuff and the run's classes.
    The toy CLIP knows none of ImageNet's words, yet its own shapes still win far above chance (8 of 1,121)."""
    from mapcap.tasks.captioners.general_bank import general_phrases
    from mapcap.toy.dataset import SHAPES

    bank = general_phrases(tuple(SHAPES))
    assert len(bank) == len(set(bank)) > 1100 and "a Labrador Retriever" in bank and "grass" in bank
    assert bank[-len(SHAPES):] == [f"an {s}" if s[0] in "aeiou" else f"a {s}" for s in SHAPES]
    cap = make_captioner(CaptionerConfig("retrieval", concept_bank="general", classes=tuple(SHAPES)), toy_model)
    crops = _crops()
    texts = cap.caption([c for c, _ in crops])
    assert set(texts) <= set(bank)
    assert np.mean([o.shape in t for t, (_, o) in zip(texts, crops)]) > 0.15
