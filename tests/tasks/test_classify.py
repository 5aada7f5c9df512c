import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F

from mapcap.storage.writer import table_path
from mapcap.tasks.stages.classify import ClassifyConfig
from mapcap.tasks.pipeline.driver import StagePlan, run_shard
from mapcap.tasks.pipeline.tasks import shard_task
from mapcap.tasks.zeroshot import classify_pixels, text_classifier
from mapcap.tasks.data import read_dataset
from mapcap.tasks.templates import resolve_templates

REFERENCE = Path(__file__).resolve().parents[1] / "data" / "reference_classify.json"


@pytest.fixture(scope="module")
def cfg(toy_model, toy_dir):
    ds = read_dataset(str(toy_dir))
    return ClassifyConfig(toy_model.spec, ds.classes, resolve_templates("simple"), top_k=3, batch_size=5)


def test_ensemble_is_the_normalised_mean_of_normalised_template_embeddings(toy_model, cfg):
    emb = text_classifier(toy_model, cfg.classes, cfg.templates)
    assert emb.shape == (len(cfg.templates) + 1, len(cfg.classes), 64)
    one = F.normalize(toy_model.model.encode_text(toy_model.tokenizer([t.format("star") for t in cfg.templates])), dim=-1)
    ens = F.normalize(one.mean(0), dim=-1)
    assert torch.allclose(emb[-1, cfg.classes.index("star")], ens, atol=1e-5)
    assert torch.allclose(emb.norm(dim=-1), torch.ones(emb.shape[:2]), atol=1e-5)


def test_shard_task_writes_tables_records_failures_and_skips_when_done(cfg, toy_dir, tmp_path):
    ds = read_dataset(str(toy_dir))
    items = list(ds.items[:12])
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff garbage")
    items.append(type(items[0])(str(bad), "star"))
    root = str(tmp_path / "out")
    plans = [StagePlan("classify", cfg)]
    res = shard_task.fn(plans, root, "r", 3, items, workers=2)  # the task's logic, without a flow run
    assert res["n_images"] == 13 and not res["stages"]["classify"]["skipped"]
    assert res["stages"]["classify"]["rows"] == {"failures": 1, "images": 13,
                                                 "predictions": 12 * (len(cfg.templates) + 1)}
    preds = pq.read_table(table_path(root, "predictions", "r", "shard-00003")).to_pylist()
    assert len(preds) == 12 * (len(cfg.templates) + 1)
    for r in preds:
        assert r["topk_probs"] == sorted(r["topk_probs"], reverse=True) and len(r["topk_labels"]) == 3
        assert r["pred"] == r["topk_labels"][0] and r["correct"] == (r["pred"] == r["label"])
        assert (r["label_rank"] == 1) == r["correct"]
    fails = pq.read_table(table_path(root, "failures", "r", "shard-00003-classify")).to_pylist()
    assert [(f["path"], f["stage"]) for f in fails] == [(str(bad), "classify")]
    assert run_shard(plans, root, "r", 3, items)["stages"]["classify"]["skipped"]
    assert not run_shard(plans, root, "r", 3, items[:-1])["stages"]["classify"]["skipped"]  # other inputs: redone


def test_batch_size_does_not_change_results(toy_model, cfg, toy_dir):
    from mapcap.tasks.data import load_image
    pix = torch.stack([toy_model.preprocess(load_image(it.path)[0]) for it in read_dataset(str(toy_dir)).items[:6]])
    emb = text_classifier(toy_model, cfg.classes, cfg.templates)
    whole = classify_pixels(toy_model, pix, emb)
    parts = torch.cat([classify_pixels(toy_model, p, emb) for p in pix.split(2)], dim=1)
    assert torch.allclose(whole, parts, atol=1e-5)
    assert torch.allclose(whole.sum(-1), torch.ones(whole.shape[:2]), atol=1e-5)


def test_matches_stored_reference_outputs(toy_model, cfg, toy_dir):
    """Regression: ensemble probabilities of the first toy images, stored when the checkpoint was trained."""
    from mapcap.tasks.data import load_image
    ref = json.loads(REFERENCE.read_text())
    key = lambda it: f"{Path(it.path).parent.name}/{Path(it.path).name}"  # noqa: E731
    items = [it for it in read_dataset(str(toy_dir)).items if key(it) in ref["images"]]
    assert len(items) == len(ref["images"])
    pix = torch.stack([toy_model.preprocess(load_image(it.path)[0]) for it in items])
    probs = classify_pixels(toy_model, pix, text_classifier(toy_model, cfg.classes, cfg.templates))[-1]
    expected = torch.tensor([ref["images"][key(it)] for it in items])
    assert torch.allclose(probs, expected, atol=2e-4)


def write_reference(toy_dir, toy_model, cfg, n=10):  # run by hand after retraining the toy CLIP
    from mapcap.tasks.data import load_image
    items = read_dataset(str(toy_dir)).items[::5][:n]
    pix = torch.stack([toy_model.preprocess(load_image(it.path)[0]) for it in items])
    probs = classify_pixels(toy_model, pix, text_classifier(toy_model, cfg.classes, cfg.templates))[-1]
    images = {f"{Path(it.path).parent.name}/{Path(it.path).name}": [round(float(v), 6) for v in p]
              for it, p in zip(items, probs)}
    REFERENCE.write_text(json.dumps({"classes": list(cfg.classes), "images": images}, indent=1))


def _rows_one_by_one(image_ids, labels, classes, templates, probs, top_k):
    """The per-row construction the Arrow columns replaced: the reference they must equal."""
    k = min(top_k, len(classes))
    top_p, top_i = probs.topk(k, dim=-1)
    names = list(templates) + ["ensemble"] + ["descriptors"] * (probs.shape[0] - len(templates) - 1)
    rows = []
    for t, name in enumerate(names):
        for b, (iid, label) in enumerate(zip(image_ids, labels)):
            lp = float(probs[t, b, classes.index(label)])
            pred = classes[int(top_i[t, b, 0])]
            rows.append({"run_id": "r", "image_id": iid, "shard": 3, "template": name, "label": label, "pred": pred,
                         "correct": pred == label, "pred_prob": float(top_p[t, b, 0]), "label_prob": lp,
                         "label_rank": int((probs[t, b] > lp).sum()) + 1,
                         "topk_labels": [classes[int(i)] for i in top_i[t, b]], "topk_probs": top_p[t, b].tolist()})
    return rows


@pytest.mark.parametrize("shape", [(7, 33, 5), (8, 1, 3), (2, 4, 20)])  # (rows per image, images, top-k)
def test_prediction_columns_equal_rows_built_one_by_one(shape):
    import pyarrow as pa

    from mapcap.storage.schemas import SCHEMAS
    from mapcap.tasks.zeroshot import prediction_table
    R, B, k = shape
    classes = tuple(f"class {i}" for i in range(9))
    templates = tuple(f"t{i} {{}}" for i in range(min(R - 1, 6)))
    probs = torch.rand(R, B, len(classes), generator=torch.Generator().manual_seed(R * B)).softmax(-1)
    ids = [f"{i:016x}" for i in range(B)]
    labels = [classes[(3 * i) % len(classes)] for i in range(B)]
    got = prediction_table("r", 3, ids, labels, classes, templates, probs, k)
    ref = pa.Table.from_pylist(_rows_one_by_one(ids, labels, classes, templates, probs, k),
                               schema=SCHEMAS["predictions"])
    assert got.equals(ref)
