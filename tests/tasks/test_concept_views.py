"""The concepts stage's device path (tasks/concept_views.py; gated to CUDA, here forced on CPU) against its PIL path
on the toy world: the same concepts, mutual knowledge and faithfulness within stated bounds, perturbations close
to perturbed_pixels's, and no decode of an image whose frame the shard holds."""
import numpy as np
import pytest
import torch

from mapcap.tasks import concept_views as cv
from mapcap.tasks.concept_bank import resolve_bank
from mapcap.tasks.data import read_dataset
from mapcap.tasks.decode import geometry
from mapcap.tasks import frames as frames_mod
from mapcap.tasks.frames import frames
from mapcap.tasks.metrics.mutual_knowledge import cumulative_masks
from mapcap.tasks.metrics.perturb import perturbed_pixels
from mapcap.tasks.pipeline import images as images_mod
from mapcap.tasks.pipeline.images import ImageCache
from mapcap.tasks.stages import concepts
from tests.tasks.test_roi_crops import _compute, toy_explained  # noqa: F401 (a fixture)

TEMPLATES = ("a photo of a {}.",)


@pytest.fixture(scope="module")
def cfg(toy_model, toy_dir):
    classes = tuple(read_dataset(str(toy_dir)).classes)
    bank = resolve_bank(None, toy_model.spec.name, classes)
    return concepts.ConceptsConfig(toy_model.spec, classes, TEMPLATES, bank, method="chefer", start_layer=0)


def run(ctx, cfg, monkeypatch, device: bool, cache: ImageCache | None = None) -> dict:
    """The concepts stage on the explained toy shard, by one path, with no view embedded before it."""
    ctx.shared.views.clear()
    ctx.pictures.cache = cache or ImageCache()
    monkeypatch.setattr(concepts, "device_geometry", lambda lm: geometry(lm.preprocess) if device else None)
    out, fails = _compute("concepts", cfg, ctx)
    assert not fails
    return out


@pytest.fixture(scope="module")
def both(toy_explained, cfg):
    """{False: PIL path's tables, True: device path's}."""
    mp = pytest.MonkeyPatch()
    try:
        return {on: run(toy_explained, cfg, mp, on) for on in (False, True)}
    finally:
        mp.undo()


def test_device_concepts_match_the_pil_path(both):
    """Top concept of ≥ 90 % of views (images and regions) the same, and MI / AUC the same for ≥ 90 % of images
    (they follow from the concepts alone). Measured (48 images, 106 views): top concept 97.2 %, top-k set 92.5 %;
    MI and AUC the same for 93.8 % of images, mean |ΔMI| 0.020, |ΔAUC| 0.023 nats."""
    tops = {}
    for on, out in both.items():
        tops[on] = {}
        for r in out["concepts"]:
            if r["source"] != "language":
                tops[on].setdefault((r["image_id"], r["source"], r["region_id"]), {})[r["rank"]] = r["descriptor"]
    assert tops[True].keys() == tops[False].keys()
    first = sum(v[0] == tops[False][k][0] for k, v in tops[True].items()) / len(tops[True])
    sets = sum(set(v.values()) == set(tops[False][k].values()) for k, v in tops[True].items()) / len(tops[True])
    mk = {on: {r["image_id"]: r for r in out["mutual_knowledge"]} for on, out in both.items()}
    assert mk[True].keys() == mk[False].keys()
    mi = np.array([[mk[on][i]["mi"] for i in sorted(mk[on])] for on in (False, True)])  # (2, N)
    auc = np.array([[mk[on][i]["auc"] for i in sorted(mk[on])] for on in (False, True)])
    same_mi = float(np.mean(np.isclose(mi[0], mi[1]) & np.isclose(auc[0], auc[1])))
    print(f"device vs PIL: top concept same for {first:.1%} of {len(tops[True])} views, top-k set for {sets:.1%}; "
          f"MI and AUC same for {same_mi:.1%} of {len(mk[True])} images, mean |ΔMI| {abs(mi[0] - mi[1]).mean():.4f}, "
          f"|ΔAUC| {abs(auc[0] - auc[1]).mean():.4f}")
    assert first >= 0.9 and same_mi >= 0.9
    assert abs(mi[0] - mi[1]).mean() < 0.1 and abs(auc[0] - auc[1]).mean() < 0.1


def test_device_faithfulness_matches_the_pil_path(both):
    """Deletion / insertion means per image (the predicted class's mean probability over the steps) within 0.05
    on average, 0.2 at most, over the images whose ordered visual concepts (hence steps) are the same in both
    paths (≥ 80 % of them). Measured: 42 of 48 images; |Δdeletion| mean 0.002, max 0.016; |Δinsertion| mean
    0.006, max 0.036."""
    mk = {on: {r["image_id"]: r for r in out["mutual_knowledge"]} for on, out in both.items()}
    same = [i for i in mk[True] if mk[True][i]["visual"] == mk[False][i]["visual"]]
    diff = np.array([[abs(mk[True][i][m] - mk[False][i][m]) for m in ("deletion", "insertion")] for i in same])
    print(f"faithfulness over {len(same)} images: mean |Δdeletion| {diff[:, 0].mean():.4f} (max "
          f"{diff[:, 0].max():.4f}), |Δinsertion| {diff[:, 1].mean():.4f} (max {diff[:, 1].max():.4f})")
    assert len(same) >= 0.8 * len(mk[True]) and diff.mean(0).max() < 0.05 and diff.max() < 0.2


@pytest.mark.parametrize("factor, bound", [(1, 0.4), (cv.SUPERSAMPLE, 0.2)])
def test_device_perturbations_match_perturbed_pixels(toy_model, toy_explained, factor, bound):
    """The deletion / insertion images of every image's region steps, masks drawn at the model's resolution
    (hard, or soft by SUPERSAMPLE) against perturbed_pixels (PIL preprocess, masks at the frame's size): mean
    absolute difference in levels of 255 over all inputs. Measured (48 images, 212 inputs): hard masks mean
    0.184 (max 0.726), soft masks 0.095 (max 0.256). The mean-colour canvas (insertion step 0) is the same."""
    ctx = toy_explained
    geo = geometry(toy_model.preprocess)
    images = {r["image_id"]: r for r in ctx.table("images")}
    regs: dict[str, list] = {}
    for r in ctx.table("regions"):
        if r["target"] == "pred" and r["method"] == "chefer" and r["start_layer"] == 0:
            regs.setdefault(r["image_id"], []).append(r)
    ids = sorted(regs)
    sizes = {i: (images[i]["width"], images[i]["height"]) for i in ids}
    paths = {i: images[i]["path"] for i in ids}
    ctx.pictures.cache = ImageCache()
    pil = frames(ctx, paths, sizes, {}, None)
    dc = cv.device_chunk(ctx, "cpu", geo, ids, paths, sizes, regs, 1.0)
    levels = []
    steps = {}
    for i in ids:
        order, tied = list(range(len(regs[i]))), {r: [r] for r in range(len(regs[i]))}
        steps[i] = cumulative_masks(order, tied, cv.model_masks(regs[i], dc.shapes[i], sizes[i], geo, factor))
        ref = perturbed_pixels(toy_model.preprocess, pil[i],
                               cumulative_masks(order, tied, concepts.frame_masks(regs[i], pil[i])))
        levels.append(ref)
    got = cv.device_perturbed(dc, steps, geo)  # (Σ 2K, 3, S, S)
    ref = torch.cat(levels)
    assert got.shape == ref.shape
    per = ((got - ref).abs().mean((1, 2, 3)) * 255 * torch.tensor(geo.std).mean()).tolist()  # levels of 255
    print(f"masks ×{factor}: perturbations of {len(ids)} images ({len(per)} inputs) vs perturbed_pixels: mean "
          f"{np.mean(per):.3f} levels, max {np.max(per):.3f}")
    assert np.mean(per) < bound and np.max(per) < 4 * bound
    k = 2 * len(steps[ids[0]])  # the first image: its step 0 (nothing removed) is the preprocessed image
    assert (got[0] - ref[0]).abs().mean() * 255 * 0.5 < 1.0 and (got[k // 2] - ref[k // 2]).abs().max() < 1e-5


def test_no_decode_when_the_shard_holds_the_frames(toy_model, toy_explained, cfg, monkeypatch):
    """With every image's frame in the shard's cache (as the classify stage's device decode leaves them), the
    device path reads and decodes no file; the PIL path decodes each image."""
    ctx = toy_explained
    calls = []
    real_load, real_files = images_mod.load_image, images_mod.decode_files
    monkeypatch.setattr(images_mod, "load_image", lambda *a, **k: calls.append(a[0]) or real_load(*a, **k))
    monkeypatch.setattr(images_mod, "decode_files", lambda paths, *a: calls.append(paths) or real_files(paths, *a))
    geo = geometry(toy_model.preprocess)
    cache = ImageCache()
    ctx.pictures.cache = cache
    ctx.device_frames({r["image_id"]: r["path"] for r in ctx.table("images")}, "cpu", frames_mod.frame_side(geo))
    assert calls
    calls.clear()
    out = run(ctx, cfg, monkeypatch, True, cache)
    assert calls == [] and len(out["mutual_knowledge"]) == len(ctx.table("images"))
    run(ctx, cfg, monkeypatch, False)
    assert len(calls) == len(ctx.table("images"))


def test_model_masks_cover_the_crop_and_bad_factors_name_themselves(toy_model):
    geo = geometry(toy_model.preprocess)
    whole = cv.model_masks([], (96, 128), (128, 96), geo, factor=3)
    assert len(whole) == 1 and whole[0].shape == (3 * geo.crop,) * 2 and whole[0].all()
    with pytest.raises(ValueError, match="factor 0"):
        cv.model_masks([], (96, 128), (128, 96), geo, factor=0)


def test_an_unreadable_image_is_a_failure_row_on_the_device_path(toy_explained, cfg, monkeypatch, tmp_path):
    """A file gone since classify: its failures row names the concepts stage; the other images get their rows."""
    from mapcap.tasks.pipeline.context import StageContext
    rows = [dict(r) for r in toy_explained.table("images")]
    rows[0]["path"] = str(tmp_path / "gone.png")
    ctx = StageContext("memory://unused", "r", 0, [], workers=2)
    ctx.outputs.update(toy_explained.outputs)
    ctx.outputs["images"] = rows
    monkeypatch.setattr(concepts, "device_geometry", lambda lm: geometry(lm.preprocess))
    out, fails = _compute("concepts", cfg, ctx)
    assert [(f["stage"], f["path"]) for f in fails] == [("concepts", rows[0]["path"])]
    assert {r["image_id"] for r in out["mutual_knowledge"]} == {r["image_id"] for r in rows[1:]}


def test_reduced_frames_and_small_chunks_give_the_same_concepts(toy_explained, cfg, both, monkeypatch):
    """Frames reduced to 3/4 of the 128 px toy images (images with a crop narrower than S in theirs cut from the
    full image) and chunks of 8 images: the top concept of ≥ 90 % of views as the PIL path's. Measured: 93.4 %,
    23 of 48 images cut from the full image."""
    monkeypatch.setattr(frames_mod, "frame_side", lambda geo: 96)
    monkeypatch.setattr(concepts, "CHUNK", 8)
    full, real = [], frames_mod.needs_full
    monkeypatch.setattr(frames_mod, "needs_full", lambda *a: full.append(real(*a)) or full[-1])
    out = run(toy_explained, cfg, monkeypatch, True)
    top = {on: {(r["image_id"], r["source"], r["region_id"]): r["descriptor"] for r in o["concepts"]
                if r["rank"] == 0 and r["source"] != "language"} for on, o in ((True, out), (False, both[False]))}
    assert top[True].keys() == top[False].keys()
    same = sum(v == top[False][k] for k, v in top[True].items()) / len(top[True])
    print(f"frames of 96 px, chunks of 8: top concept same for {same:.1%}; {sum(full)}/{len(full)} images cut from "
          f"the full image")
    assert same >= 0.9 and 0 < sum(full) < len(full)
