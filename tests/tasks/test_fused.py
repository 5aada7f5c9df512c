"""One forward for classification and Chefer maps equals the two plain passes (fp32, within 1e-4)."""
import pytest
import torch

from mapcap.tasks.data import read_dataset
from mapcap.tasks.relevancy.fused import classify_and_explain
from mapcap.tasks.relevancy.methods import relevancy_maps
from mapcap.tasks.stages.classify import ClassifyConfig
from mapcap.tasks.stages.relevancy import RelevancyConfig
from mapcap.tasks.templates import resolve_templates
from mapcap.tasks.zeroshot import classify_pixels, text_classifier
from tests.tasks.test_stages import compute, ctx_with

TEMPLATES = resolve_templates(["a photo of a {}.", "{}"])


@pytest.fixture(scope="module")
def batch(toy_model, toy_dir):
    """Twelve toy images and their labels."""
    from PIL import Image
    ds = read_dataset(str(toy_dir))
    items = ds.items[::max(1, len(ds.items) // 12)][:12]
    pixels = torch.stack([toy_model.preprocess(Image.open(it.path).convert("RGB")) for it in items])
    labels = torch.tensor([ds.classes.index(it.label) for it in items])
    return tuple(ds.classes), pixels, labels


@pytest.mark.parametrize("starts", [[-1], [0], [-1, 1]])
@pytest.mark.parametrize("size", [1, 5, 12])
def test_one_pass_equals_classify_then_relevancy(toy_model, batch, starts, size):
    classes, pixels, labels = batch
    pixels, labels = pixels[:size], labels[:size]
    classifier = text_classifier(toy_model, classes, TEMPLATES)  # (T + 1, C, D)
    out = classify_and_explain(toy_model, pixels, classifier, starts)
    plain = classify_pixels(toy_model, pixels, classifier)  # (T + 1, B, C)
    assert (out.probs - plain).abs().max() <= 1e-5
    assert torch.equal(out.pred, plain[-1].argmax(-1))
    for s in starts:
        ref = relevancy_maps(toy_model, "chefer", pixels, classifier[-1][out.pred], s)  # (B, g, g)
        assert (out.maps[s] - ref).abs().max() <= 1e-4, s


def test_classify_stage_computes_the_pending_relevancy_maps(toy_model, tiny, monkeypatch):
    """The stages through the fused pass write what the plain passes write, without a second forward."""
    import mapcap.tasks.stages.relevancy as relevancy_stage
    classes, items = tiny
    items = [type(items[0])(items[0].path, items[1].label)] + items[1:]  # one wrong prediction at least
    ccfg = ClassifyConfig(toy_model.spec, classes, TEMPLATES, top_k=3, batch_size=2)
    rcfg = RelevancyConfig(toy_model.spec, classes, TEMPLATES, variants=(("chefer", -1), ("chefer", 0),
                                                                         ("gradient", None)))
    results, calls = {}, []
    real = relevancy_stage.relevancy_maps
    monkeypatch.setattr(relevancy_stage, "relevancy_maps", lambda lm, method, pix, *a: calls.append(
        (method, len(pix))) or real(lm, method, pix, *a))
    for fused in (False, True):
        ctx = ctx_with(items)
        ctx.shared.pending = {"relevancy": rcfg} if fused else {}
        calls.clear()
        preds, _ = compute("classify", ccfg, ctx)
        maps, fails = compute("relevancy", rcfg, ctx)
        assert not [f for f in fails if f["error_type"] == "NonFiniteMap"]
        chefer = sum(n for m, n in calls if m == "chefer")
        results[fused] = preds["predictions"], maps["relevancy"], chefer
        wrong = [r for r in preds["predictions"] if r["template"] == "ensemble" and not r["correct"]]
    (p0, m0, c0), (p1, m1, c1) = results[False], results[True]
    assert wrong and c0 == 2 * (5 + len(wrong))  # plain: every (image, class) pair, for both chefer variants
    assert c1 == 2 * len(wrong)  # fused: only the wrong images' true-class maps are left to the plain path
    key = lambda r: (r["image_id"], r["template"])  # noqa: E731
    assert [(r["image_id"], r["template"], r["pred"]) for r in sorted(p0, key=key)] == \
        [(r["image_id"], r["template"], r["pred"]) for r in sorted(p1, key=key)]
    assert max(abs(a["pred_prob"] - b["pred_prob"]) for a, b in zip(sorted(p0, key=key), sorted(p1, key=key))) <= 1e-5
    rkey = lambda r: (r["image_id"], r["target"], r["method"], r["start_layer"])  # noqa: E731
    assert [rkey(r) for r in sorted(m0, key=rkey)] == [rkey(r) for r in sorted(m1, key=rkey)]
    for a, b in zip(sorted(m0, key=rkey), sorted(m1, key=rkey)):
        assert max(abs(x - y) for x, y in zip(a["map"], b["map"])) <= 1e-4


def test_one_pass_in_bf16_agrees_with_fp32_batch1(toy_model, batch):
    import numpy as np

    from mapcap.tasks.models import LoadedModel
    from mapcap.tasks.relevancy.chefer import chefer
    classes, pixels, labels = batch
    classifier = text_classifier(toy_model, classes, TEMPLATES)
    spec = toy_model.spec
    bf16 = LoadedModel(type(spec)(spec.name, spec.pretrained, "cpu", "bf16"), toy_model.model,
                       toy_model.preprocess, toy_model.tokenizer)
    out = classify_and_explain(bf16, pixels, classifier, [-1])
    for k in range(len(pixels)):
        single = chefer(toy_model, pixels[k:k + 1], classifier[-1][out.pred[k:k + 1]], -1)[0]
        r = np.corrcoef(out.maps[-1][k].flatten().numpy(), single.detach().flatten().numpy())[0, 1]
        assert r >= 0.99, (k, r)
