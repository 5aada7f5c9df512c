"""Each stage's `compute` on tiny inputs: a context filled in memory, no flow, no shared output folder."""
import shutil

import pyarrow as pa
import pytest
import torch

from mapcap.tasks.captioners.base import CaptionerConfig
from mapcap.tasks.concept_bank import resolve_bank
from mapcap.tasks.segment import SegmentConfig
from mapcap.tasks.pipeline.sharding import sampled
from mapcap.tasks.pipeline.base import get_stage
from mapcap.tasks.stages.captions import CaptionsConfig
from mapcap.tasks.stages.classify import ClassifyConfig
from mapcap.tasks.stages.concepts import ConceptsConfig
from mapcap.tasks.pipeline.context import StageContext
from mapcap.tasks.stages.evaluate import EvaluateConfig
from mapcap.tasks.stages.faithfulness import VARIANTS, FaithfulnessConfig
from mapcap.tasks.stages.regions import RegionsConfig
from mapcap.tasks.stages.relevancy import RelevancyConfig
from mapcap.tasks.stages.summarize import SummarizeConfig
from mapcap.tasks.templates import resolve_templates

TEMPLATES = resolve_templates(["a photo of a {}.", "{}"])


def ctx_with(items=None, outputs=None, shard=0):
    ctx = StageContext("memory://unused", "r", shard, items, workers=2)
    ctx.outputs.update(outputs or {})
    return ctx


def compute(name, cfg, ctx):
    ctx.begin(name)
    out = get_stage(name).compute(cfg, ctx)
    ctx.outputs.update(out)  # as the driver keeps them (classify's predictions stay Arrow)
    return {t: rows.to_pylist() if isinstance(rows, pa.Table) else rows for t, rows in out.items()}, ctx.failures.rows


@pytest.fixture(scope="module")
def classified(toy_model, tiny):
    classes, items = tiny
    cfg = ClassifyConfig(toy_model.spec, classes, TEMPLATES, top_k=3, batch_size=2)
    ctx = ctx_with(items)
    out, fails = compute("classify", cfg, ctx)
    return classes, items, out, fails


def test_classify_every_image_is_a_prediction_or_a_failure(classified):
    classes, items, out, fails = classified
    assert len(out["images"]) == len(items)
    predicted = {r["image_id"] for r in out["predictions"]}
    failed = {f["image_id"] for f in fails}
    assert predicted.isdisjoint(failed) and len(predicted) + len(failed) == len(items)
    assert [f["stage"] for f in fails] == ["classify"] and fails[0]["path"].endswith("broken.png")
    assert len(out["predictions"]) == 5 * (len(TEMPLATES) + 1)
    assert {r["template"] for r in out["predictions"]} == {*TEMPLATES, "ensemble"}


def test_a_long_stage_logs_how_far_it_is(toy_model, tiny, monkeypatch, caplog):
    """Between a stage's start and its result line, progress lines (rate-limited; here every batch)."""
    import logging

    from mapcap.tasks.pipeline import progress
    monkeypatch.setattr(progress, "PROGRESS_SECONDS", 0.0)
    classes, items = tiny
    ctx = ctx_with(items)
    ctx.begin("classify")
    with caplog.at_level(logging.INFO, logger="mapcap.tasks.pipeline.context"):
        get_stage("classify").compute(ClassifyConfig(toy_model.spec, classes, TEMPLATES, batch_size=2), ctx)
    lines = [r.getMessage() for r in caplog.records if "images (" in r.getMessage()]
    assert lines[0].startswith("shard 0 classify: 2/5 images (40 %, ") and lines[-1].startswith("shard 0 classify: 4/5")
    assert "s left)" in lines[0] and len(lines) == 2  # not at 0 and not at the end (the stage's own line says it)


def test_classify_with_a_bank_adds_description_rows(toy_model, tiny):
    classes, items = tiny
    bank = resolve_bank(None, toy_model.spec.name, classes)
    out, _ = compute("classify", ClassifyConfig(toy_model.spec, classes, TEMPLATES, bank=bank), ctx_with(items[:2]))
    assert sum(r["template"] == "descriptors" for r in out["predictions"]) == 2


@pytest.mark.parametrize("method", ["chefer", "gradient", "random"])
@pytest.mark.parametrize("batch_size", [1, 3])
def test_relevancy_grid_of_methods_and_batch_sizes(toy_model, classified, method, batch_size):
    classes, items, out, _ = classified
    start = 0 if method == "chefer" else None
    cfg = RelevancyConfig(toy_model.spec, classes, TEMPLATES, ((method, start),), batch_size)
    rel, fails = compute("relevancy", cfg, ctx_with(outputs=dict(out)))
    assert not fails
    rows = rel["relevancy"]
    assert len(rows) == 2 * 5 and {r["target"] for r in rows} == {"pred", "label"}
    grid = rows[0]["grid"]
    assert all(len(r["map"]) == grid * grid and r["method"] == method for r in rows)
    ref, _ = compute("relevancy", RelevancyConfig(toy_model.spec, classes, TEMPLATES, ((method, start),), 8),
                     ctx_with(outputs=dict(out)))
    for a, b in zip(rows, ref["relevancy"]):
        assert torch.allclose(torch.tensor(a["map"]), torch.tensor(b["map"]), atol=1e-5)


def test_a_non_finite_map_is_a_failure_row_and_the_rest_are_kept(toy_model, classified, monkeypatch):
    """Maps are checked all at once (one check per method, not a few small operations per map): the bad one
    still fails alone, named."""
    import math

    import mapcap.tasks.stages.relevancy as relevancy_stage
    classes, _, out, _ = classified
    real = relevancy_stage.relevancy_maps

    def one_nan(*a, **k):  # the second map of each batch goes NaN
        maps = real(*a, **k).clone()
        if len(maps) > 1:
            maps[1, 0, 0] = float("nan")
        return maps
    monkeypatch.setattr(relevancy_stage, "relevancy_maps", one_nan)
    cfg = RelevancyConfig(toy_model.spec, classes, TEMPLATES, (("gradient", None),), 8)
    rel, fails = compute("relevancy", cfg, ctx_with(outputs=dict(out)))
    assert [f["error_type"] for f in fails] == ["NonFiniteMap"] and "gradient map for class" in fails[0]["error"]
    ens = {r["image_id"]: r for r in out["predictions"] if r["template"] == "ensemble"}
    kept = {(r["image_id"], r["target"]) for r in rel["relevancy"]}
    lost = {(i, t) for i, r in ens.items() for t in ("pred", "label")} - kept
    bad = fails[0]["image_id"]
    assert lost and {i for i, _ in lost} == {bad} and f"class {ens[bad][next(iter(lost))[1]]!r}" in fails[0]["error"]
    assert all(math.isfinite(v) for r in rel["relevancy"] for v in r["map"])  # no NaN written


@pytest.fixture(scope="module")
def explained(toy_model, classified):
    classes, items, out, _ = classified
    ctx = ctx_with(outputs=dict(out))
    compute("relevancy", RelevancyConfig(toy_model.spec, classes, TEMPLATES, (("chefer", 0), ("gradient", None))), ctx)
    compute("regions", RegionsConfig(SegmentConfig(top_k=2)), ctx)
    return classes, ctx


def test_regions_as_tensor_ops_match_scikit_image(explained):
    """The stage segments every map of the shard at once as tensor ops (tasks/segment_batch.py): the regions of
    the scikit-image reference, each at least 0.95 IoU with its match in image pixels."""
    from mapcap.tasks.masks import full_mask
    from mapcap.tasks.segment import segment_job
    _, ctx = explained
    cfg = RegionsConfig(SegmentConfig(top_k=2))
    rows = compute("regions", cfg, ctx_with(outputs={t: ctx.outputs[t] for t in ("images", "relevancy")}))[0]
    sizes = {r["image_id"]: (r["width"], r["height"]) for r in ctx.outputs["images"] if r["width"]}
    got: dict[tuple, list] = {}
    for r in rows["regions"]:
        got.setdefault((r["image_id"], r["target"], r["method"], r["start_layer"]), []).append(r)
    checked = 0
    for m in ctx.table("relevancy"):
        size = sizes[m["image_id"]]
        ref = segment_job((m["map"], m["grid"], size, cfg.segment, None))
        mine = got.get((m["image_id"], m["target"], m["method"], m["start_layer"]), [])
        assert len(mine) == len(ref)
        for a, b in zip(ref, mine):
            fa, fb = full_mask(a, size), full_mask(b, size)
            assert (fa & fb).sum() / (fa | fb).sum() >= 0.95
            checked += 1
    assert checked > 10


def test_regions_in_chunks_are_the_regions_of_one_batch_and_start_no_pool(explained, monkeypatch):
    """On CPU the shard's maps are segmented CHUNK at a time in this process (a pool's start cost more than the
    work): the rows of one batch, and no worker process started."""
    from mapcap.tasks import segment_batch
    from mapcap.tasks.pipeline import procpool
    _, ctx = explained
    cfg = RegionsConfig(SegmentConfig(top_k=2))
    pools = []
    real_pool = procpool._pool
    monkeypatch.setattr(procpool, "_pool", lambda w, pre: pools.append(w) or real_pool(w, pre))
    rows_one = compute("regions", cfg, ctx_with(outputs={t: ctx.outputs[t] for t in ("images", "relevancy")}))[0]
    monkeypatch.setattr(segment_batch, "CHUNK", 3)  # this shard's few maps would be one chunk
    many = ctx_with(outputs={t: ctx.outputs[t] for t in ("images", "relevancy")})
    many.workers = 2
    rows_many = compute("regions", cfg, many)[0]
    assert pools == [] and rows_one["regions"] and rows_one == rows_many


def test_superpixel_regions_are_the_same_in_worker_processes(explained, monkeypatch):
    from mapcap.tasks.pipeline import procpool
    _, ctx = explained
    cfg = RegionsConfig(SegmentConfig(top_k=2, superpixels=16))
    one = ctx_with(outputs={t: ctx.outputs[t] for t in ("images", "relevancy")})
    one.workers = 1
    many = ctx_with(outputs={t: ctx.outputs[t] for t in ("images", "relevancy")})
    many.workers = 2
    rows_one = compute("regions", cfg, one)[0]["regions"]
    monkeypatch.setattr(procpool, "MIN_ITEMS", 1)  # this shard's few maps would run in this process
    pools = []
    real_pool = procpool._pool
    monkeypatch.setattr(procpool, "_pool", lambda w, pre: pools.append(w) or real_pool(w, pre))
    rows_many = compute("regions", cfg, many)[0]["regions"]
    assert pools == [2]  # SLIC (scikit-image) segmented in a pool of two processes
    assert rows_one and rows_one == rows_many


def test_regions_table_is_each_rows_keys_with_its_maps_regions(explained):
    """The table built by index from columns (tasks/region_columns.py) holds, for every relevancy row in order,
    its keys and the regions of its map as segment_batch gives them; a right prediction's two rows share them."""
    import torch

    from mapcap.tasks.segment_batch import segment_batch
    from mapcap.tasks.stages.regions import KEYS
    _, ctx = explained
    cfg = SegmentConfig(top_k=2)
    sizes = {r["image_id"]: (r["width"], r["height"]) for r in ctx.outputs["images"] if r["width"]}
    rel = ctx.table("relevancy")
    per_map = segment_batch(torch.tensor([r["map"] for r in rel]).view(len(rel), rel[0]["grid"], rel[0]["grid"]),
                            [sizes[r["image_id"]] for r in rel], cfg)
    expected = [{k: r[k] for k in KEYS} | reg for r, regs in zip(rel, per_map) for reg in regs]
    got = [{k: v for k, v in row.items() if k != "on_object"} for row in ctx.table("regions")]
    shared = sum(r["target"] == "label" and r["class_name"] == r2["class_name"] and r["image_id"] == r2["image_id"]
                 for r in rel for r2 in rel if r2["target"] == "pred" and r2["method"] == r["method"]
                 and r2["start_layer"] == r["start_layer"])
    assert shared > 0 and len(got) == len(expected) > 10
    for a, b in zip(got, expected):
        assert a.keys() == b.keys() and all(a[k] == (pytest.approx(b[k], rel=1e-6) if isinstance(b[k], float) else b[k])
                                            for k in a), (a, b)


def test_regions_rank_by_mass_inside_the_image(explained):
    _, ctx = explained
    regs = ctx.table("regions")
    assert regs and {r["method"] for r in regs} == {"chefer", "gradient"}
    sizes = {r["image_id"]: (r["width"], r["height"]) for r in ctx.outputs["images"] if r["width"]}
    for r in regs:
        x0, y0, x1, y1 = r["bbox"]
        assert 0 <= x0 < x1 <= sizes[r["image_id"]][0] and 0 <= y0 < y1 <= sizes[r["image_id"]][1]
        assert r["region_id"] < 2
    by_map = {}
    for r in regs:
        by_map.setdefault((r["image_id"], r["target"], r["method"]), []).append(r)
    for rs in by_map.values():
        masses = [r["mass"] for r in sorted(rs, key=lambda r: r["region_id"])]
        assert masses == sorted(masses, reverse=True)


def test_captions_follow_the_primary_method_and_score(toy_model, explained, monkeypatch):
    import mapcap.tasks.stages.captions as captions_stage
    classes, ctx = explained
    encoded = []
    real = captions_stage.encode_pixels
    monkeypatch.setattr(captions_stage, "encode_pixels", lambda lm, px, *a: encoded.extend(px) or real(lm, px, *a))
    for method, start in (("chefer", 0), ("gradient", None)):  # gradient-only runs get captions too
        cfg = CaptionsConfig(toy_model.spec, CaptionerConfig("retrieval"), method, start, top_k=1)
        encoded.clear()
        ctx.shared.views.clear()  # views the first method's captions embedded would not be encoded again
        out, fails = compute("captions", cfg, ctx)
        rows = out["captions"]
        assert not fails and rows
        assert {r["method"] for r in rows if r["region_id"] >= 0} == {method}
        assert all(r["text"] and 0 <= r["clipscore"] <= 2.5 for r in rows)
        assert sum(r["region_id"] == -1 for r in rows) == 5  # one whole-image caption per image
        regions = [r for r in ctx.table("regions") if r["method"] == method and r["region_id"] == 0]
        assert len(rows) == 5 + len(regions)  # a row per region of either target...
        texts = {(r["image_id"], r["target"]): r["text"] for r in rows if r["region_id"] == 0}
        right = [r["image_id"] for r in ctx.table("predictions") if r["template"] == "ensemble" and r["correct"]]
        assert right and all(texts[(i, "pred")] == texts[(i, "label")] for i in right)  # ...one caption if shared
        assert len(encoded) == 5 + len({(r["image_id"], r["class_name"]) for r in regions})


def test_clipcap_captions_from_the_embeddings_the_stage_computed(toy_model, explained, monkeypatch):
    """ClipCap trained on the run's CLIP captions from the crop embeddings the stage computes for CLIPScore: its
    own preprocess-and-encode path does not run, and the captions equal those of the crops captioned alone."""
    from mapcap.tasks.captioners import clipcap
    from mapcap.tasks.captioners.base import crop_region, make_captioner
    from mapcap.tasks.data import load_image
    _, ctx = explained
    ctx.shared.views.clear()
    own = []
    real = clipcap.encode_images
    monkeypatch.setattr(clipcap, "encode_images", lambda *a, **k: own.append(len(a[1])) or real(*a, **k))
    cfg = CaptionsConfig(toy_model.spec, CaptionerConfig("clipcap"), "chefer", 0, top_k=1)
    rows = compute("captions", cfg, ctx)[0]["captions"]
    assert rows and own == []
    paths = {r["image_id"]: r["path"] for r in ctx.outputs["images"]}
    boxes = {(r["image_id"], r["target"], r["region_id"]): r["bbox"] for r in ctx.table("regions")
             if r["method"] == "chefer" and r["start_layer"] == 0}
    crops = []
    for r in rows:
        img = load_image(paths[r["image_id"]])[0]
        crops.append(img if r["region_id"] < 0 else crop_region(img, boxes[(r["image_id"], r["target"], 0)], 1.0))
    alone = make_captioner(CaptionerConfig("clipcap"), toy_model).caption(crops)
    assert own and [r["text"] for r in rows] == alone


def _device_path(monkeypatch, on: bool):
    """The captions stage's GPU path (images decoded, cropped and preprocessed as tensors), here on CPU."""
    from mapcap.tasks.decode import geometry
    from mapcap.tasks.stages import captions
    monkeypatch.setattr(captions, "device_geometry", lambda lm, cap: geometry(lm.preprocess) if on else None)


def test_captions_cut_on_the_device_match_the_pil_crops(toy_model, explained, monkeypatch):
    _, ctx = explained
    cfg = CaptionsConfig(toy_model.spec, CaptionerConfig("retrieval", batch_size=4), "chefer", 0, top_k=2)
    from mapcap.tasks import frames
    runs = {}
    for on, at_once in ((False, 64), (True, 64), ("one image at a time", 1)):
        ctx.shared.views.clear()
        _device_path(monkeypatch, bool(on))
        monkeypatch.setattr(frames, "FULL_AT_ONCE", at_once)
        out, fails = compute("captions", cfg, ctx)
        assert not fails
        runs[on] = {(r["image_id"], r["target"], r["region_id"]): r for r in out["captions"]}
    assert runs["one image at a time"] == runs[True]  # images decoded a few at a time: the same rows
    assert runs[True].keys() == runs[False].keys() and len(runs[True]) > 5
    same = sum(r["text"] == runs[False][k]["text"] for k, r in runs[True].items())
    assert same >= 0.9 * len(runs[True])  # resampling differs a little between PIL and torch
    assert all(abs(r["clipscore"] - runs[False][k]["clipscore"]) < 0.05 for k, r in runs[True].items())


def test_captions_on_the_device_record_a_changed_image_once(toy_model, explained, monkeypatch, tmp_path):
    _, ctx = explained
    images = [dict(r) for r in ctx.outputs["images"]]
    victim, other = [r for r in images if r["width"]][:2]
    shutil.copy(other["path"], tmp_path / "changed.png")  # another picture under the classified one's name
    victim["path"] = str(tmp_path / "changed.png")
    moved = ctx_with(outputs={**ctx.outputs, "images": images})
    _device_path(monkeypatch, True)
    cfg = CaptionsConfig(toy_model.spec, CaptionerConfig("retrieval", batch_size=2), "chefer", 0, top_k=2)
    out, fails = compute("captions", cfg, moved)
    assert [(f["image_id"], f["error_type"]) for f in fails] == [(victim["image_id"], "ImageChanged")]
    assert out["captions"] and victim["image_id"] not in {r["image_id"] for r in out["captions"]}


def test_a_shard_embeds_each_view_once(toy_model):
    from PIL import Image

    from mapcap.tasks.pipeline.embeddings import embed_views, view_key
    ctx, calls = ctx_with(), []

    def encode(crops):
        calls.append(len(crops))
        return torch.nn.functional.normalize(torch.randn(len(crops), 4), dim=-1)

    img = Image.new("RGB", (8, 8))
    whole, crop = view_key(toy_model.spec, "a"), view_key(toy_model.spec, "a", [0, 0, 4, 4], 1.0)
    first = embed_views(ctx, [whole, crop], [img, img], encode)  # (2, 4)
    other = view_key(toy_model.spec, "a", [0, 0, 4, 4], 0.5)  # another context: another view
    again = embed_views(ctx, [crop, other, whole], [img, img, img], encode)  # (3, 4)
    assert calls == [2, 1] and again.shape == (3, 4)
    assert torch.equal(again[0], first[1]) and torch.equal(again[2], first[0])
    assert embed_views(ctx, [], [], encode).numel() == 0 and calls == [2, 1]


def test_captions_reuse_the_classification_pass_embeddings(toy_model, tiny, monkeypatch):
    """In one shard chain the whole images are not encoded again for their captions: same texts and scores as a
    chain whose classify rows came from elsewhere (no embeddings kept), only the region crops encoded."""
    import mapcap.tasks.stages.captions as captions_stage
    classes, items = tiny
    encoded = []
    real = captions_stage.encode_pixels
    monkeypatch.setattr(captions_stage, "encode_pixels", lambda lm, px, *a: encoded.extend(px) or real(lm, px, *a))
    cfg = CaptionsConfig(toy_model.spec, CaptionerConfig("retrieval"), "chefer", 0, top_k=1)
    runs = {}
    for kept in (True, False):
        ctx = ctx_with(items)
        compute("classify", ClassifyConfig(toy_model.spec, classes, TEMPLATES, top_k=3, batch_size=2), ctx)
        if not kept:
            ctx.shared.views.clear()
        compute("relevancy", RelevancyConfig(toy_model.spec, classes, TEMPLATES, (("chefer", 0),)), ctx)
        compute("regions", RegionsConfig(SegmentConfig(top_k=1)), ctx)
        encoded.clear()
        rows = compute("captions", cfg, ctx)[0]["captions"]
        crops = {(r["image_id"], r["class_name"]) for r in ctx.table("regions") if r["region_id"] == 0}
        assert len(encoded) == len(crops) + (0 if kept else 5)  # 5 readable images: their whole-image crops
        runs[kept] = {(r["image_id"], r["target"], r["region_id"]): r for r in rows}
    assert runs[True].keys() == runs[False].keys()
    for key, r in runs[True].items():
        assert r["text"] == runs[False][key]["text"]
        assert r["clipscore"] == pytest.approx(runs[False][key]["clipscore"], abs=1e-4)


def test_concepts_one_mutual_knowledge_row_per_image(toy_model, explained):
    classes, ctx = explained
    bank = resolve_bank(None, toy_model.spec.name, classes)
    cfg = ConceptsConfig(toy_model.spec, classes, TEMPLATES, bank, method="chefer", start_layer=0)
    out, fails = compute("concepts", cfg, ctx)
    assert not fails and len(out["mutual_knowledge"]) == 5
    assert {r["source"] for r in out["concepts"]} == {"image", "region", "language"}


def test_faithfulness_per_image_and_evaluate_means(toy_model, explained):
    classes, ctx = explained
    out, fails = compute("faithfulness", FaithfulnessConfig(toy_model.spec, classes, TEMPLATES, "", 1.0), ctx)
    rows = out["faithfulness"]
    classified = {r["image_id"] for r in ctx.table("predictions")}
    assert not fails and {r["image_id"] for r in rows} == classified
    per = {}
    for r in rows:
        per.setdefault((r["method"], r["start_layer"], r["metric"]), []).append(r["value"])
    assert {len(v) for v in per.values()} == {5}  # every image, every variant's four AUCs (no masks here)
    assert {m for _, _, m in per} == {"positive_auc", "negative_auc", "deletion_auc", "insertion_auc"}
    assert all(0.0 <= v <= 1.0 for vs in per.values() for v in vs)
    run_ctx = ctx_with(outputs={"faithfulness": rows}, shard=None)
    ev, _ = compute("evaluate", EvaluateConfig(VARIANTS), run_ctx)
    got = {(r["method"], r["start_layer"], r["metric"]): r for r in ev["evaluations"]}
    assert got.keys() == per.keys() and all(r["n"] == 5 for r in got.values())
    for k, vs in per.items():
        assert got[k]["value"] == pytest.approx(sum(vs) / len(vs))
    assert [(r["method"], r["start_layer"]) for r in ev["evaluations"]][::4] == list(VARIANTS)
    half, _ = compute("faithfulness", FaithfulnessConfig(toy_model.spec, classes, TEMPLATES, "", 0.5), ctx)
    assert {r["image_id"] for r in half["faithfulness"]} == {i for i in classified if sampled(i, 0.5)}


def test_summarize_picks_captions_per_class(toy_model, explained):
    classes, ctx = explained
    caps, _ = compute("captions", CaptionsConfig(toy_model.spec, CaptionerConfig("retrieval"), "chefer", 0, top_k=2),
                      ctx)
    run_ctx = ctx_with(outputs=dict(ctx.outputs), shard=None)
    out, _ = compute("summarize", SummarizeConfig(toy_model.spec, classes, "retrieval", method="chefer",
                                                  start_layer=0, k=2), run_ctx)
    rows = {(r["class_name"], r["subset"]): r for r in out["class_summaries"]}
    first = classes[0]
    assert rows[(first, "all")]["n_captions"] >= 1 and 1 <= len(rows[(first, "all")]["summary"]) <= 2
    assert rows[(classes[7], "all")]["n_images"] == 0  # a class without images still gets its row


def test_an_image_removed_after_classify_is_a_failure_in_each_stage_that_reads_it(toy_model, tiny, tmp_path):
    classes, items = tiny
    gone = tmp_path / "gone.png"
    shutil.copy(items[1].path, gone)
    mine = [items[0], type(items[0])(str(gone), items[1].label)]
    ctx = ctx_with(mine)
    out, _ = compute("classify", ClassifyConfig(toy_model.spec, classes, TEMPLATES), ctx)
    assert len({r["image_id"] for r in out["predictions"]}) == 2
    gone.unlink()
    later = ctx_with(outputs=dict(out))  # a new worker: nothing decoded yet
    _, fails = compute("relevancy", RelevancyConfig(toy_model.spec, classes, TEMPLATES, (("chefer", 0),)), later)
    assert [(f["stage"], f["path"]) for f in fails] == [("relevancy", str(gone))]
    assert len({r["image_id"] for r in later.table("relevancy")}) == 1
    compute("regions", RegionsConfig(), later)
    bank = resolve_bank(None, toy_model.spec.name, classes)
    _, fails = compute("concepts", ConceptsConfig(toy_model.spec, classes, TEMPLATES, bank, start_layer=0), later)
    assert [(f["stage"], f["path"]) for f in fails] == [("concepts", str(gone))]


def test_a_changed_file_is_a_failure_not_a_wrong_row(toy_model, tiny, tmp_path):
    classes, items = tiny
    f = tmp_path / "changes.png"
    shutil.copy(items[0].path, f)
    ctx = ctx_with([type(items[0])(str(f), items[0].label)])
    out, _ = compute("classify", ClassifyConfig(toy_model.spec, classes, TEMPLATES), ctx)
    shutil.copy(items[2].path, f)  # another picture under the same name
    _, fails = compute("relevancy", RelevancyConfig(toy_model.spec, classes, TEMPLATES, (("chefer", 0),)),
                       ctx_with(outputs=dict(out)))
    assert [x["error_type"] for x in fails] == ["ImageChanged"]


def test_concepts_on_a_sample_fixed_by_image_id(toy_model, explained):
    import hashlib
    ids = [hashlib.sha256(str(i).encode()).hexdigest()[:16] for i in range(2000)]
    share = sum(sampled(i, 0.25) for i in ids) / len(ids)
    assert 0.22 < share < 0.28 and all(sampled(i, 1.0) for i in ids)
    classes, ctx = explained
    bank = resolve_bank(None, toy_model.spec.name, classes)
    keep = [r["image_id"] for r in ctx.table("predictions") if r["template"] == "ensemble"
            and sampled(r["image_id"], 0.5)]
    cfg = ConceptsConfig(toy_model.spec, classes, TEMPLATES, bank, method="chefer", start_layer=0, sample=0.5)
    out, _ = compute("concepts", cfg, ctx)
    assert sorted(r["image_id"] for r in out["mutual_knowledge"]) == sorted(keep)


def test_image_cache_keeps_gpu_tensors_under_their_own_budget():
    """A GPU shard's pixels must not be evicted by the host budget (the first images would go back to PIL)."""
    from mapcap.tasks.pipeline.context import ImageCache
    cache = ImageCache(max_bytes=100, device_bytes=1000)
    for i in range(5):
        cache.put(("host", i), object(), 40)  # 200 bytes > 100: the oldest go
        cache.put(("gpu", i), torch.empty(1, device="meta"), 150)  # a tensor on a device: 750 < 1000, all kept
    assert [cache.get(("host", i)) is not None for i in range(5)] == [False, False, False, True, True]
    assert all(cache.get(("gpu", i)) is not None for i in range(5))
    cache.get(("gpu", 0))  # used recently: kept over gpu 1
    cache.put(("gpu", 5), torch.empty(1, device="meta"), 400)  # 1,150 > 1,000: the least recently used goes
    assert cache.get(("gpu", 1)) is None and cache.get(("gpu", 0)) is not None
    assert cache.get(("host", 4)) is not None  # the other budget is untouched


def test_classify_with_the_gpu_decode_path_gives_the_pil_path_results(toy_model, tmp_path, monkeypatch):
    """The classify stage as it runs on a GPU (JPEGs decoded and preprocessed as tensor ops, here on CPU, a few
    files per decode), against the PIL path: the same images rows, predictions within resampling differences,
    an unreadable JPEG a failure row in both."""
    import numpy as np
    from PIL import Image

    import mapcap.tasks.decode as decode
    from mapcap.tasks.data import Item
    from mapcap.tasks.decode import geometry
    from mapcap.tasks.pipeline import images
    from mapcap.toy.dataset import make_scene
    from mapcap.toy.shapes import SHAPES
    rng = np.random.default_rng(12)
    items = []
    for k in range(6):
        shape = SHAPES[k % 3]
        path = tmp_path / f"{k}.jpg"
        Image.fromarray(make_scene(rng, shape=shape).image).resize((160 + 8 * k, 120)).save(path, quality=92)
        items.append(Item(str(path), shape))
    (tmp_path / "cut.jpg").write_bytes((tmp_path / "0.jpg").read_bytes()[:300])
    items.append(Item(str(tmp_path / "cut.jpg"), SHAPES[0]))
    cfg = ClassifyConfig(toy_model.spec, tuple(SHAPES[:3]), TEMPLATES, top_k=2, batch_size=4)
    monkeypatch.setattr(decode, "DECODE_BATCH", 4)
    decoded, real = [], images.decode_jpegs
    monkeypatch.setattr(images, "decode_jpegs", lambda paths, *a: decoded.extend(paths) or real(paths, *a))
    runs = {}
    for gpu_path in (False, True):
        monkeypatch.setattr(images, "tensor_decode", lambda pre, dev: geometry(pre) if gpu_path else None)
        out, fails = compute("classify", cfg, ctx_with(items))
        runs[gpu_path] = out, [(f["path"], f["stage"]) for f in fails]
    assert decoded == [it.path for it in items]  # the tensor path ran, once, in the second run
    (slow, slow_fails), (fast, fast_fails) = runs[False], runs[True]
    assert fast["images"] == slow["images"] and fast_fails == slow_fails == [(items[-1].path, "classify")]
    key = lambda r: (r["image_id"], r["template"])  # noqa: E731
    for a, b in zip(sorted(fast["predictions"], key=key), sorted(slow["predictions"], key=key)):
        assert key(a) == key(b) and a["pred"] == b["pred"] and abs(a["label_prob"] - b["label_prob"]) < 0.05
