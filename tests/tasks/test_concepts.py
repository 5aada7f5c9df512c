"""Concept banks, description-based classification, and the mutual-knowledge measures."""
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from mapcap.tasks.zeroshot import classify_pixels, description_classifier, text_classifier
from mapcap.tasks.concept_bank import ConceptBank, class_prompt, descriptor_sentence, load_descriptors, resolve_bank
from mapcap.tasks.metrics.mutual_knowledge import (REMOVED, cumulative_masks, curve_auc, mi_curve, mutual_information, perturbed,
                            region_mask, visual_concepts)
from mapcap.tasks.segment import rle_encode
from mapcap.toy.concepts import PROPERTIES, TOY_CONCEPTS, toy_concept_bank
from mapcap.toy.shapes import SHAPES


@pytest.mark.parametrize("descriptor,sentence", [
    ("four corners", "which has four corners"), ("a long snout", "which is a long snout"),
    ("an orange beak", "which is an orange beak"), ("angular", "which is angular"),  # their first-letter quirk
    ("has a hole in the middle", "which has a hole in the middle"), ("often found in water", "which often found in water"),
    ("used for cutting", "which is used for cutting")])
def test_descriptor_sentences_follow_menon_and_vondrick(descriptor, sentence):
    assert descriptor_sentence(descriptor) == sentence
    assert class_prompt("golden_retriever", descriptor) == f"golden retriever, {sentence}"


def test_shipped_toy_bank_is_the_ground_truth_of_the_generator():
    assert json.loads(TOY_CONCEPTS.read_text()) == toy_concept_bank()
    bank = toy_concept_bank()
    assert set(bank) == set(SHAPES) and all(bank[s] for s in SHAPES)
    assert len({tuple(v) for v in bank.values()}) == len(SHAPES)  # every class has its own set
    for d, shapes in PROPERTIES.items():
        assert {s for s in SHAPES if d in bank[s]} == shapes


def test_bad_banks_are_refused_with_the_fix(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="not a readable JSON"):
        load_descriptors(bad)
    bad.write_text(json.dumps(["four corners"]))
    with pytest.raises(ValueError, match=r"JSON object \{class name"):
        load_descriptors(bad)
    bad.write_text(json.dumps({"star": ["five points"], "ring": ["  "]}))
    with pytest.raises(ValueError, match=r"no descriptors for classes \['ring', 'cross'\]"):
        load_descriptors(bad, ["star", "ring", "cross"])
    bad.write_text(json.dumps({"star": ["five points", "five points", "thin spikes"]}))
    assert load_descriptors(bad) == {"star": ["five points", "thin spikes"]}
    assert resolve_bank(None, "ViT-B-32", ("a", "b")) is None  # no bank: no descriptor rows, concepts refused


def test_mutual_information_is_the_authors_estimator():
    # X and Y share c = 2 descriptors: MI = ln N + ln M + H(uniform over c cells) = ln(N·M·c)
    assert mutual_information([1, 2, 3], [2, 3, 4, 5]) == pytest.approx(math.log(3 * 4 * 2), abs=1e-6)
    assert mutual_information([1, 2, 3], [4, 5]) == 0.0
    assert mutual_information([], [1]) == 0.0
    # more shared concepts, more mutual information; removed concepts match nothing
    assert mutual_information([1, 2, 3], [1, 2, 3]) > mutual_information([1, 2, 9], [1, 2, 3])
    assert mutual_information([REMOVED, 2, 9], [1, 2, 3]) == pytest.approx(math.log(3 * 3 * 1), abs=1e-6)


def test_mi_curve_removes_by_importance_and_its_auc_is_the_mean():
    curve = mi_curve([1, 2, 3], [2, 3, 4, 5])
    assert curve == pytest.approx([math.log(24), math.log(24), math.log(12), 0.0], abs=1e-6)
    assert curve_auc(curve) == pytest.approx(sum(curve) / 4)
    # shared knowledge held by the most important concepts falls faster: lower AUC
    assert curve_auc(mi_curve([2, 3, 1], [2, 3, 4, 5])) < curve_auc(curve)


def test_visual_concepts_are_distinct_ordered_by_image_similarity_and_tied_to_their_regions():
    region_top = torch.tensor([[4, 1, 2], [1, 0, 4]])  # (R=2, k=3)
    image_sims = torch.tensor([0.1, 0.9, 0.2, 0.0, 0.5])  # (V,)
    order, tied = visual_concepts(region_top, image_sims)
    assert order == [1, 4, 2, 0]
    assert tied == {4: [0, 1], 1: [0, 1], 2: [0], 0: [1]}


def test_concept_steps_remove_and_restore_exactly_the_tied_regions():
    a = np.zeros((6, 8), bool)
    a[1:3, 1:4] = True
    b = np.zeros((6, 8), bool)
    b[4:6, 5:8] = True
    steps = cumulative_masks([7, 3], {7: [1], 3: [0, 1]}, [a, b])
    assert [int(s.sum()) for s in steps] == [0, 6, 12]
    assert (steps[1] == b).all() and (steps[2] == (a | b)).all()
    img = Image.fromarray(np.arange(6 * 8 * 3, dtype=np.uint8).reshape(6, 8, 3))
    deleted, inserted = perturbed(img, steps)
    arr, mean = np.asarray(img), np.asarray(img).reshape(-1, 3).mean(0).round()
    assert (np.asarray(deleted[0]) == arr).all() and (np.asarray(inserted[-1])[a | b] == arr[a | b]).all()
    assert (np.asarray(deleted[1])[b] == mean).all() and (np.asarray(deleted[1])[~b] == arr[~b]).all()
    assert (np.asarray(inserted[0]) == mean).all()


def test_region_masks_round_trip_through_the_stored_rle():
    full = np.zeros((10, 12), bool)
    full[2:5, 3:9] = np.random.default_rng(0).random((3, 6)) > 0.4
    bbox = [3, 2, 9, 5]
    assert (region_mask(bbox, rle_encode(full[2:5, 3:9]), (12, 10)) == full).all()


def test_description_row_is_the_mean_prompt_similarity_per_class(toy_model, toy_dir):
    bank = resolve_bank(None, toy_model.spec.name, tuple(SHAPES))
    assert bank.source == str(TOY_CONCEPTS) and bank.of("ring")[-1] == "has a hole in the middle"
    images = [Image.open(p).convert("RGB") for p in sorted(toy_dir.glob("*/*.png"))[:6]]
    pix = torch.stack([toy_model.preprocess(i) for i in images])
    probs = classify_pixels(toy_model, pix, text_classifier(toy_model, bank.classes, ("{}",)),
                            description_classifier(toy_model, bank))  # (3, B, C)
    assert probs.shape == (3, 6, len(SHAPES))
    with torch.no_grad():
        img = torch.nn.functional.normalize(toy_model.model.encode_image(pix), dim=-1)
        scores = []
        for c in SHAPES:
            t = toy_model.model.encode_text(toy_model.tokenizer([class_prompt(c, d) for d in bank.of(c)]))
            scores.append((img @ torch.nn.functional.normalize(t, dim=-1).T).mean(-1))
        manual = (toy_model.model.logit_scale.exp() * torch.stack(scores, -1)).softmax(-1)
    assert torch.allclose(probs[-1], manual, atol=1e-5)


def test_concept_bank_is_hashable_config():
    bank = ConceptBank(("a", "b"), (("x", "y"), ("y", "z")), "mem")
    assert bank.vocabulary == ("x", "y", "z") and hash(bank) == hash(ConceptBank(("a", "b"), (("x", "y"), ("y", "z")), "mem"))


def test_perturbations_at_model_resolution_match_perturbing_first(toy_model, toy_dir):
    """Blending at the model's input size equals drawing the perturbation at full size then preprocessing, up to
    the resampled mask edges: exactly for empty and full masks, closely in class probabilities."""
    from mapcap.tasks.metrics.mutual_knowledge import class_probs
    from mapcap.tasks.metrics.perturb import perturbed_pixels
    from mapcap.tasks.zeroshot import text_classifier
    images = [Image.open(p).convert("RGB") for p in sorted(toy_dir.glob("*/*.png"))[:8]]
    class_emb = text_classifier(toy_model, tuple(SHAPES), ("a photo of a {}.",))[-1]
    diffs = []
    for k, img in enumerate(images):
        W, H = img.size
        half = np.zeros((H, W), bool)
        half[:, : W // 2 + 7 * k] = True
        steps = [np.zeros((H, W), bool), half, np.ones((H, W), bool)]
        fast = perturbed_pixels(toy_model.preprocess, img, steps)  # (6, 3, S, S)
        deleted, inserted = perturbed(img, steps)
        slow = torch.stack([toy_model.preprocess(im) for im in deleted + inserted])
        assert fast.shape == slow.shape == (6, 3, 64, 64)
        for j in (0, 2, 3, 5):  # nothing or everything perturbed: the same pixels
            assert (fast[j] - slow[j]).abs().max() < 1e-5, j
        diffs.append((class_probs(toy_model, fast, class_emb) - class_probs(toy_model, slow, class_emb)).abs().max())
    assert max(diffs) < 0.05, diffs
