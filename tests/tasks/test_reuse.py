"""Reuse by content: a stage's rows for an image are copied from any earlier run in the root with the same
stage config chain (weights included), keyed by the image's content and label; only the rest is computed."""
import dataclasses
import json
import shutil

import numpy as np

from mapcap.storage.writer import read_run
from mapcap.tasks.data import Item, image_id_of
from mapcap.tasks.models import ModelSpec
from mapcap.tasks.stages.classify import ClassifyConfig
from mapcap.tasks.pipeline.driver import StagePlan, run_shard
from mapcap.tasks.stages.relevancy import RelevancyConfig
from mapcap.tasks.pipeline.reuse import content_hashes
from tests.tasks.test_driver import setup  # noqa: F401  (the six-image stage chain)

TABLES = ("images", "predictions", "relevancy", "regions", "captions")
RUN_COLUMNS = ("run_id", "shard")


def by_image(root: str, table: str, run: str) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for r in read_run(root, table, run).to_pylist():
        out.setdefault(r["image_id"], []).append({k: v for k, v in r.items() if k not in RUN_COLUMNS})
    return {k: sorted(v, key=lambda r: json.dumps(r, sort_keys=True, default=str)) for k, v in out.items()}


def test_a_new_run_copies_known_images_and_computes_only_the_new_one(setup, tmp_path):
    items, plans = setup
    root = str(tmp_path / "out")
    first = run_shard(plans, root, "a", 0, items[:5])
    assert all(s["reused_rows"] == {} for s in first["stages"].values())
    second = run_shard(plans, root, "b", 3, items)  # one image more, in another shard
    cls = second["stages"]["classify"]
    assert cls["reused_rows"]["images"] == 5 and cls["rows"]["images"] == 6
    for name, s in second["stages"].items():
        assert not s["skipped"] and 0 < s["reused_rows"][{"classify": "predictions"}.get(name, name)] \
            < s["rows"][{"classify": "predictions"}.get(name, name)], name
    for table in TABLES:  # old images: the very same rows, now under run b and shard 3
        a, b = by_image(root, table, "a"), by_image(root, table, "b")
        assert set(b) - set(a) and all(b[i] == a[i] for i in a), table
        rows = read_run(root, table, "b").to_pylist()
        assert {(r["run_id"], r["shard"]) for r in rows} == {("b", 3)}
    # the new image's rows are those a fresh computation gives
    fresh = run_shard(plans, root, "c", 0, items[5:], force=True)
    assert all(s["reused_rows"] == {} for s in fresh["stages"].values())
    new = (set(by_image(root, "images", "b")) - set(by_image(root, "images", "a"))).pop()
    pb, pc = by_image(root, "predictions", "b")[new], by_image(root, "predictions", "c")[new]
    assert [r["pred"] for r in pb] == [r["pred"] for r in pc]
    mb, mc = by_image(root, "relevancy", "b")[new], by_image(root, "relevancy", "c")[new]
    assert np.allclose([r["map"] for r in mb], [r["map"] for r in mc], atol=1e-5)


def test_another_config_reuses_upstream_stages_only(setup, tmp_path):
    items, plans = setup
    root = str(tmp_path)
    run_shard(plans, root, "a", 0, items)
    rel = plans[1].config
    changed = [plans[0], StagePlan("relevancy", dataclasses.replace(rel, variants=(("chefer", -1),)))] + plans[2:]
    again = run_shard(changed, root, "b", 0, items)["stages"]
    assert again["classify"]["reused_rows"]["images"] == 6
    assert [n for n, s in again.items() if s["reused_rows"].get("failures") is None] == \
        ["relevancy", "regions", "captions"]  # redone: nothing matched their chain


def test_a_relabelled_or_changed_image_is_computed_and_paths_follow_the_new_run(setup, tmp_path):
    items, plans = setup
    root = str(tmp_path / "out")
    data = tmp_path / "data"
    data.mkdir()
    moved = []
    for i, it in enumerate(items[:4]):  # the same images under other names
        shutil.copy(it.path, data / f"img-{i}.png")
        moved.append(Item(str(data / f"img-{i}.png"), it.label))
    bad = data / "truncated.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    run_shard(plans[:1], root, "a", 0, list(items[:4]) + [Item(str(bad), "star")])
    relabelled = Item(moved[0].path, "ring" if moved[0].label != "ring" else "star")
    newer = data / "truncated-2.png"
    shutil.copy(bad, newer)
    b = run_shard(plans[:1], root, "b", 0, [relabelled] + moved[1:] + [Item(str(newer), "star")])
    assert b["stages"]["classify"]["reused_rows"] == {"images": 4, "predictions": 3 * 2, "failures": 1}
    images = {r["path"]: r for r in read_run(root, "images", "b").to_pylist()}
    assert set(images) == {it.path for it in moved} | {str(newer)}  # copied rows name this run's paths
    fails = read_run(root, "failures", "b").to_pylist()
    assert [(f["path"], f["run_id"]) for f in fails] == [(str(newer), "b")]


def test_retrained_weights_at_the_same_path_change_the_reuse_hash(tmp_path):
    ckpt = tmp_path / "model.pt"
    ckpt.write_bytes(b"weights one")
    cfg = ClassifyConfig(ModelSpec("MapCap-Toy-ViT", str(ckpt), "cpu", "fp32"), ("a", "b"), ("{}",))
    plans = [StagePlan("classify", cfg), StagePlan("relevancy", RelevancyConfig(cfg.model, cfg.classes,
                                                                                  cfg.templates))]
    before = content_hashes(plans)
    ckpt.write_bytes(b"weights two, retrained")
    after = content_hashes(plans)
    assert before["classify"] != after["classify"] and before["relevancy"] != after["relevancy"]


def test_rows_are_reused_from_a_compacted_run_and_an_empty_shard_writes_empty_files(setup, tmp_path):
    from mapcap.storage.compact import compact_run
    from mapcap.storage.writer import write_table

    items, plans = setup
    root = str(tmp_path)
    run_shard(plans, root, "a", 0, items[:3])
    run_shard(plans, root, "a", 1, items[3:])
    write_table(root, "runs", "a", "run", [{"run_id": "a", "status": "finished"}])
    assert compact_run(root, "a")["relevancy"] == (2, 1)
    b = run_shard(plans, root, "b", 0, items)["stages"]
    assert b["classify"]["reused_rows"]["images"] == 6 and b["relevancy"]["reused_rows"]["relevancy"] == 12
    for table in TABLES:
        assert by_image(root, table, "b") == by_image(root, table, "a"), table
    empty = run_shard(plans, root, "b", 1, [])["stages"]  # a hash bucket no image falls into
    assert all(not s["skipped"] and not any(s["rows"].values()) for s in empty.values())
    assert run_shard(plans, root, "b", 1, [])["stages"]["captions"]["skipped"]


def test_unchanged_files_are_not_read_again_to_know_their_content(setup, tmp_path, monkeypatch):
    from mapcap.tasks.pipeline import reuse

    items, plans = setup
    data = tmp_path / "data"
    data.mkdir()
    local = []
    for i, it in enumerate(items[:4]):
        shutil.copy(it.path, data / f"img-{i}.png")
        local.append(Item(str(data / f"img-{i}.png"), it.label))
    root = str(tmp_path / "out")
    run_shard(plans[:1], root, "a", 0, local)
    hashed: list[str] = []
    real = reuse.hash_file
    monkeypatch.setattr(reuse, "hash_file", lambda path, limits: hashed.append(path) or real(path, limits))
    shutil.copy(items[5].path, local[3].path)  # another picture under an old name: new size or mtime
    b = run_shard(plans[:1], root, "b", 0, local)["stages"]["classify"]
    assert len(hashed) == 1  # only the rewritten file was read to hash it
    assert b["reused_rows"]["images"] == 3 and b["rows"]["images"] == 4
    ids = {r["path"]: r["content_id"] for r in read_run(root, "images", "b").to_pylist()}
    assert ids[local[3].path] == image_id_of(data.joinpath("img-3.png").read_bytes())
    assert all(ids.values())  # rows copied from run a carry their content id too
