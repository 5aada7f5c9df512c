"""Compaction: a finished run's per-shard files become a few large ones; every query answers the same before,
during (large file written, originals not yet removed) and after; a later reprocess still works."""
import shutil

import pyarrow.parquet as pq
import pytest

from mapcap.flows.explain import ExplainParams, explain
from mapcap.storage.compact import compact_run, expand_run
from mapcap.storage.query import QUERIES, connect, named_query, run_sql
from mapcap.storage.schemas import TABLES
from mapcap.storage.writer import read_run, write_table

EVERYTHING = {t: f"SELECT * EXCLUDE (run_id) FROM {t} ORDER BY ALL" for t in TABLES
              if t not in ("runs", "relevancy", "regions")}
EVERYTHING["relevancy"] = "SELECT image_id, target, method, map FROM relevancy ORDER BY ALL"
EVERYTHING["regions"] = "SELECT image_id, target, region_id, bbox, mask_rle FROM regions ORDER BY ALL"
READY = [q for q in ("per_class_accuracy", "confusion_pairs", "per_template_accuracy", "row_counts",
                     "runs_compared") if q in QUERIES]


def answers(root: str) -> dict:
    con = connect(root)
    return {**{q: named_query(con, q, "c").to_pylist() for q in READY},
            **{t: run_sql(con, sql).to_pylist() for t, sql in EVERYTHING.items()}}


def test_compaction_keeps_every_answer_and_a_reprocess_still_works(prefect_harness, toy_dir, tmp_path):
    root = str(tmp_path / "out")
    params = ExplainParams(dataset=str(toy_dir), out=root, shard_size=16, run_name="c", device="cpu",
                           stages=["classify", "relevancy", "regions"])
    explain(params)
    before = answers(root)
    folder = tmp_path / "out" / "predictions" / "run=c"
    originals = sorted(folder.glob("*.parquet"))
    assert len(originals) == 3
    keep = tmp_path / "kept.parquet"
    shutil.copy(originals[0], keep)
    done = compact_run(root, "c")
    assert done["predictions"] == (3, 1) and done["failures"][1] == 1 and "runs" not in done
    assert [p.name[:8] for p in folder.glob("*.parquet")] == ["compact-"]
    assert answers(root) == before
    shutil.copy(keep, originals[0])  # the moment between writing the large file and removing the originals
    assert answers(root) == before
    originals[0].unlink()
    assert compact_run(root, "c") == {}  # nothing left to compact
    # a reprocess of the compacted run: another regions config redoes regions only
    again = explain(params.model_copy(update={"regions": params.regions.model_copy(update={"top_k": 1})}))
    assert again["shards_done"] == 3 and len(list(folder.glob("compact-*"))) == 0
    after = answers(root)
    same = set(before) - {"regions", "runs_compared"}  # a new regions config; the run record is rewritten
    assert {k: after[k] for k in same} == {k: before[k] for k in same}
    assert all(r["region_id"] == 0 for r in after["regions"])


def test_only_a_finished_run_is_compacted_and_expand_restores_files(tmp_path):
    root = str(tmp_path)
    write_table(root, "runs", "r", "run", [{"run_id": "r", "status": "running"}])
    with pytest.raises(ValueError, match=r"run 'r' under .* is running: only a finished run can be compacted"):
        compact_run(root, "r")
    write_table(root, "runs", "r", "run", [{"run_id": "r", "status": "finished"}])
    for i in range(3):
        write_table(root, "evaluations", "r", f"part-{i}", [{"run_id": "r", "metric": f"m{i}", "value": float(i)}],
                    config={"i": i}, config_hash=f"h{i}")
    assert compact_run(root, "r") == {"evaluations": (3, 1)}
    assert expand_run(root, "r") == 1
    files = sorted((tmp_path / "evaluations" / "run=r").iterdir())
    assert [f.name for f in files] == [f"part-{i}.parquet" for i in range(3)]
    assert [pq.read_schema(f).metadata[b"mapcap.config_hash"] for f in files] == [b"h0", b"h1", b"h2"]
    assert read_run(root, "evaluations", "r").column("metric").to_pylist() == ["m0", "m1", "m2"]
