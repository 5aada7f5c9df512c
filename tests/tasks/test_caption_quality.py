"""Caption metrics against references: BLEU / CIDEr-D equal coco-caption's, RefCLIPScore equals the authors' formula,
the article rule, and the caption_quality stage on stored rows (no model)."""
import math

import pytest
import torch

from mapcap.tasks.articles import indefinite_article, with_article
from mapcap.tasks.metrics.caption_quality import bleu, cider_d, tokenize
from mapcap.tasks.metrics.clipscore import CLIPSCORE_PREFIX, ref_clipscore, refclipscore_from
from mapcap.tasks.models import encode_images, encode_texts
from mapcap.tasks.stages.caption_quality import CaptionQualityConfig
from tests.tasks.test_stages import compute, ctx_with

# Caption sets, pre-tokenized (lower case, no punctuation), and what pycocoevalcap 1.2 gives for them:
# Bleu(4).compute_score(gts, res) and Cider().compute_score(gts, res), gts = {i: refs}, res = {i: [candidate]}.
# Computed once with pycocoevalcap 1.2 (run from its unpacked wheel, not a dependency of MapCap).
COCO = {
    "toy": (["an orange circle", "a red star", "a blue ring and a green cross", "a yellow square",
             "an orange hexagon"],
            [["an orange circle in the top left"], ["a red star at the bottom"], ["a blue ring and a small green cross"],
             ["a yellow diamond in the center"], ["an orange hexagon on the right"]],
            [0.4534322896997534, 0.4313001377579982, 0.39008012647428764, 0.3452281925631209],
            [3.2500699687708865, 4.073877758422835, 6.620040547813177, 1.6530673756057115, 3.803036774494416]),
    "coco": (["a man riding a horse on a beach", "two dogs play in the snow", "a plate of food", "a cat",
              "people walking down a busy street at night"],
             [["a man rides a brown horse along the beach", "a person on a horse near the ocean", "horse and rider on sand"],
              ["two dogs playing in snow", "a pair of dogs running through the snow together"],
              ["a plate with rice and vegetables", "food on a white plate", "a dinner plate with meat and broccoli on it"],
              ["a black cat sitting on a couch", "a cat lying on a sofa"],
              ["a crowded street at night with people walking", "pedestrians on a city street lit up at night",
               "a busy street"]],
             [0.7120782747439293, 0.5675047990843392, 0.31420867130077074, 3.722811943260663e-05],
             [1.1563297493639353, 1.8163522955441933, 1.1307766519853608, 1.5159002542437237, 2.461187566268948]),
    "ties": (["a b c d", "x y", "a a a a a a"], [["a b c e", "a b c d e f"], ["x y z", "x"], ["a a b", "a"]],
             [0.6666666666111113, 0.6085806193910172, 0.49793386066863754, 0.41914447649694275],
             [5.2207215894733014, 2.7499277733951386, 0.6830831704493839]),
}


@pytest.mark.parametrize("name", sorted(COCO))
def test_bleu_and_cider_d_equal_coco_caption(name):
    cands, refs, want_bleu, want_cider = COCO[name]
    assert bleu(cands, refs) == pytest.approx(want_bleu, rel=1e-9, abs=1e-12)
    assert cider_d(cands, refs) == pytest.approx(want_cider, rel=1e-9)


def test_metrics_tokenize_and_check_their_input():
    assert tokenize("An orange Circle, top-left.") == ["an", "orange", "circle", "top", "left"]
    assert cider_d(["An orange circle."], [["an orange circle"]]) == cider_d(["an orange circle"], [["an orange circle"]])
    assert bleu(["a red star at the top"], [["a red star at the top"]])[3] == pytest.approx(1.0)
    assert bleu(["a red star"], [["a red star"]])[3] == pytest.approx((1e-15 / 1e-9) ** 0.25)  # no 4-grams
    assert bleu(["a red"], [["a red star"]])[0] == pytest.approx(math.exp(1 - 3 / 2))  # brevity penalty
    with pytest.raises(ValueError, match="2 candidates but 1 reference lists"):
        bleu(["a", "b"], [["a"]])
    with pytest.raises(ValueError, match=r"candidates \[1\] have no reference captions"):
        cider_d(["a", "b"], [["a"], []])


def test_refclipscore_equals_the_authors_formula_by_hand():
    # image–text: 2.5 · max(cos, 0); text–text: max over references, unclamped; harmonic mean 2ab / (a + b)
    img = torch.tensor([[0.8, 0.6], [0.6, 0.8], [-1.0, 0.0]])  # (3, 2) unit
    cand = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])  # (3, 2) unit
    refs = torch.tensor([[0.6, 0.8], [0.8, 0.6], [-0.6, 0.8], [0.6, 0.8]])  # (4, 2): cos 0.6, 0.8 | -0.6 | 0.6
    owner = torch.tensor([0, 0, 1, 2])
    scores = 2.5 * (img * cand).sum(-1).clamp(min=0)  # 2.0, 1.5, 0.0
    got = refclipscore_from(scores, cand, refs, owner)
    # 2·2.0·0.8 / 2.8 = 8/7; 2·1.5·(−0.6) / 0.9 = −2 (the paper's max(·, 0) would give 0); 0 · 0.6 → 0
    assert got.tolist() == pytest.approx([8 / 7, -2.0, 0.0])
    with pytest.raises(ValueError, match="every candidate needs at least one reference"):
        refclipscore_from(scores, cand, refs[:2], owner[:2])


def test_refclipscore_puts_the_prefix_on_candidates_and_references(toy_model):
    from mapcap.toy.dataset import make_scene
    from PIL import Image
    import numpy as np
    rng = np.random.default_rng(3)
    crops = [Image.fromarray(make_scene(rng).image) for _ in range(3)]
    texts = ["an orange circle", "a blue ring", "a red star"]
    refs = [["an orange circle in the top left"], ["a ring", "a blue ring at the bottom"], ["a green square"]]
    got = ref_clipscore(toy_model, crops, texts, refs)
    img = encode_images(toy_model, crops)  # (3, D)
    emb = lambda ts: encode_texts(toy_model, [CLIPSCORE_PREFIX + t for t in ts])  # noqa: E731
    a = 2.5 * (img * emb(texts)).sum(-1).clamp(min=0)  # (3,)
    b = torch.stack([(emb(r) @ emb([t])[0]).max() for t, r in zip(texts, refs)])  # (3,)
    assert torch.allclose(got, 2 * a * b / (a + b), atol=1e-5)
    bare = torch.stack([(encode_texts(toy_model, r) @ encode_texts(toy_model, [t])[0]).max()
                        for t, r in zip(texts, refs)])
    assert not torch.allclose(b, bare, atol=1e-3)  # the prefix changes the text side: the test can tell


def test_the_article_rule():
    assert with_article("orange circle") == "an orange circle" and with_article("red star") == "a red star"
    assert [indefinite_article(w) for w in ("umbrella", "unicorn", "hour", "house", "one", "egg", "euro")] == \
        ["an", "a", "an", "a", "a", "an", "a"]
    with pytest.raises(ValueError, match="needs a word"):
        indefinite_article(" ")


def test_toy_references_bank_and_training_captions_use_the_rule():
    import numpy as np
    from mapcap.toy.captions import sample_caption
    from mapcap.toy.dataset import caption_bank, make_scene
    from mapcap.toy.train_captioner import sample_crops
    rng = np.random.default_rng(0)
    scenes = [make_scene(rng, kind) for kind in ("single", "distractor", "pair") for _ in range(60)]
    orange = [s.caption for s in scenes if any(o.colour == "orange" for o in s.objects)]
    assert orange and all(" a orange" not in f" {c}" for c in orange)
    assert any(c.startswith("an orange ") for c in orange)
    assert "an orange circle" in caption_bank()["circle"] and "a red circle" in caption_bank()["circle"]
    assert all(" a orange" not in f" {cap}" for _, cap, _, _ in sample_crops(80, 1))
    objs = np.array([[0, 5, 4, 1], [-9, -9, -9, -9]])  # an orange circle alone (COLOURS[5] = orange)
    texts = [sample_caption(rng, objs)[0] for _ in range(300)]
    assert not [t for t in texts if " a orange" in f" {t}"] and any("an orange" in t for t in texts)


def _caption(iid, text, region=-1, captioner="perfect", target="image", method=None, start=None):
    return {"image_id": iid, "region_id": region, "target": target, "method": method, "start_layer": start,
            "captioner": captioner, "text": text, "clipscore": 1.0, "ref_clipscore": 0.5}


def test_caption_quality_stage_scores_each_captioner_on_images_with_references(toy_dir):
    from mapcap.storage.manifest import annotations
    rows = sorted(annotations(str(toy_dir)), key=lambda r: r["path"])[:4]
    images = [{"image_id": f"i{k}", "path": r["path"]} for k, r in enumerate(rows)]
    images.append({"image_id": "no-ref", "path": "/elsewhere/x.png"})
    caps = []
    for k, r in enumerate(rows):
        iid = f"i{k}"
        caps += [_caption(iid, r["caption"]), _caption(iid, "a purple blob", captioner="vague"),
                 _caption(iid, r["caption"].split(" in ")[0].split(" at ")[0].split(" on ")[0], 0, "perfect", "label",
                          "chefer", 0),
                 _caption(iid, "a thing", 0, "perfect", "pred", "chefer", 0)]  # not the true class: not scored
    caps.append(_caption("no-ref", "a red star"))
    ctx = ctx_with(outputs={"images": images, "captions": caps}, shard=None)
    out, fails = compute("caption_quality", CaptionQualityConfig(str(toy_dir), "chefer", 0), ctx)
    got = {(r["captioner"], r["method"], r["metric"]): r for r in out["evaluations"]}
    assert not fails and {r["n"] for r in out["evaluations"]} == {4}
    assert {(c, m) for c, m, _ in got} == {("perfect", None), ("vague", None), ("perfect", "chefer")}
    assert got[("perfect", None, "bleu_4")]["value"] == pytest.approx(1.0)
    assert got[("perfect", None, "cider_d")]["value"] > got[("perfect", "chefer", "cider_d")]["value"] > \
        got[("vague", None, "cider_d")]["value"]
    assert got[("perfect", "chefer", "ref_clipscore")]["start_layer"] == 0
    assert got[("vague", None, "ref_clipscore")]["value"] == pytest.approx(0.5)
