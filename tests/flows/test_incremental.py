"""A growing dataset: a new nightly run copies the rows of known images and computes only the new ones; resuming
a run after the dataset changed redoes only the shards the change falls into; a run sharded by sorted path (before
stable shards) is refused with the fix."""
import json
import shutil

import pytest

from mapcap.flows.explain import ExplainParams, explain
from mapcap.storage.query import connect, run_sql
from mapcap.storage.writer import write_table

PRED = "SELECT image_id, template, pred, pred_prob, topk_probs FROM predictions WHERE run_id = ? ORDER BY ALL"
MAPS = "SELECT image_id, target, map FROM relevancy WHERE run_id = ? ORDER BY ALL"


@pytest.fixture()
def growing(toy_dir, tmp_path):
    """A copy of the toy split (48 images) and two new images to add to it."""
    from mapcap.toy.dataset import write_toy_dataset

    data = tmp_path / "data"
    shutil.copytree(toy_dir, data)
    extra = tmp_path / "extra"
    write_toy_dataset(extra, n_per_class=1, seed=97531, split="test")
    new = sorted(p for p in extra.rglob("*.png"))[:2]
    return data, new


def stages(root: str, run: str) -> dict:
    con = connect(root)
    return json.loads(run_sql(con, "SELECT stages_json FROM runs WHERE run_id = ?", [run]).column(0)[0].as_py())


def test_a_new_run_over_a_grown_dataset_computes_only_the_new_images(prefect_harness, growing, tmp_path):
    data, new = growing
    root = str(tmp_path / "out")
    # 4 RISE steps, not 16: reuse is counted in rows, whatever the scores (the test took 20 s with 16, 13 s with 4)
    common = dict(dataset=str(data), out=root, shard_size=16, device="cpu", evaluate={"steps": 4},
                  stages=["classify", "relevancy", "regions", "faithfulness", "evaluate"])
    first = explain(ExplainParams(run_name="night-1", **common))
    assert first["n_images"] == 48 and first["shards_done"] == 3
    for p in new:
        shutil.copy(p, data / p.parent.name / f"new-{p.name}")
    second = explain(ExplainParams(run_name="night-2", **common))
    assert second["n_images"] == 50
    rec = stages(root, "night-2")
    assert rec["classify"]["rows_reused"]["images"] == 48 and rec["classify"]["rows"]["images"] == 50
    assert rec["relevancy"]["rows_reused"]["relevancy"] == 96 and rec["relevancy"]["rows"]["relevancy"] == 100
    assert rec["regions"]["rows_reused"]["regions"] > 0
    con = connect(root)
    # per-image faithfulness is reused too: only the new images are perturbed; evaluate averages all 50
    n_old = run_sql(con, "SELECT count(*) FROM faithfulness WHERE run_id = 'night-1'").column(0)[0].as_py()
    assert rec["faithfulness"]["rows_reused"]["faithfulness"] == n_old
    assert rec["faithfulness"]["rows"]["faithfulness"] > n_old
    n_eval = run_sql(con, "SELECT max(n) FROM evaluations WHERE run_id = 'night-2'").column(0)[0].as_py()
    assert n_eval == 50
    for sql in (PRED, MAPS):  # the old images' rows are the first run's, exactly
        a = run_sql(con, sql, ["night-1"]).to_pylist()
        b = [r for r in run_sql(con, sql, ["night-2"]).to_pylist() if r["image_id"] in {x["image_id"] for x in a}]
        assert a == b
    # resuming the first run over the grown dataset redoes only the shards the new images fell into, and copies
    # even those: the old images from its own files, the new ones from the second run
    again = explain(ExplainParams(run_name="night-1", **common))
    con = connect(root)
    redone = run_sql(con, "SELECT DISTINCT shard FROM images WHERE run_id = 'night-1' AND path LIKE '%new-%'"
                     ).column(0).to_pylist()
    assert again["shards_skipped"] == 3 - len(redone) and again["n_images"] == 50
    in_redone = run_sql(con, "SELECT count(*) FROM images WHERE run_id = 'night-1' AND list_contains(?, shard)",
                        [redone]).column(0)[0].as_py()
    assert stages(root, "night-1")["classify"]["rows_reused"]["images"] == in_redone

def test_a_run_sharded_by_sorted_path_is_refused_on_resume(prefect_harness, toy_dir, tmp_path):
    root = str(tmp_path)
    write_table(root, "runs", "old", "run", [{"run_id": "old", "status": "finished", "n_shards": 3}])
    with pytest.raises(ValueError, match=r"run 'old' was sharded by sorted path .* start a new run"):
        explain(ExplainParams(dataset=str(toy_dir), out=root, run_name="old", device="cpu", stages=["classify"]))
