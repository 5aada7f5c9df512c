import json
import os

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mapcap.storage.query import QueryError, connect, format_table, named_query, run_sql
from mapcap.storage.schemas import META_SCHEMA_VERSION, SCHEMA_VERSION
from mapcap.storage.writer import (CorruptShardError, check_root, is_complete, read_file_metadata, table_path,
                            write_table)


def _fail_row(i=0):
    return {"run_id": "r1", "image_id": f"id{i}", "path": f"/p/{i}.png", "shard": 0, "stage": "load",
            "error_type": "OSError", "error": "boom"}


def test_write_is_atomic_and_carries_metadata(tmp_path):
    root = str(tmp_path)
    path = write_table(root, "failures", "r1", "shard-00000", [_fail_row()], config={"a": 1}, config_hash="h1",
                       versions={"torch": "x"})
    meta = pq.read_schema(path).metadata
    assert meta[META_SCHEMA_VERSION].decode() == SCHEMA_VERSION
    assert json.loads(meta[b"mapcap.config"]) == {"a": 1}
    assert is_complete(root, ["failures"], "r1", "shard-00000", "h1")
    assert not is_complete(root, ["failures"], "r1", "shard-00000", "other-config")
    assert not is_complete(root, ["failures", "images"], "r1", "shard-00000", "h1")
    assert [p.name for p in (tmp_path / "failures" / "run=r1").iterdir()] == ["shard-00000.parquet"]


def test_a_failed_write_leaves_no_file(tmp_path):
    bad = [_fail_row() | {"shard": "not an int"}]
    with pytest.raises((pa.ArrowInvalid, pa.ArrowTypeError, TypeError)):
        write_table(str(tmp_path), "failures", "r1", "shard-00000", bad)
    folder = tmp_path / "failures" / "run=r1"
    assert not folder.exists() or list(folder.iterdir()) == []


def test_unknown_table_is_named(tmp_path):
    with pytest.raises(ValueError, match="unknown table 'nope'"):
        write_table(str(tmp_path), "nope", "r1", "x", [])


def test_corrupt_file_is_detected_and_named(tmp_path):
    root = str(tmp_path)
    write_table(root, "failures", "r1", "shard-00000", [_fail_row()], config_hash="h")
    path = table_path(root, "failures", "r1", "shard-00001")
    with open(path, "wb") as f:
        f.write(b"PAR1 garbage")
    with pytest.raises(CorruptShardError, match="shard-00001.parquet is not a readable Parquet file"):
        read_file_metadata(root, "failures", "r1", "shard-00001")
    assert not is_complete(root, ["failures"], "r1", "shard-00001", "h")  # redone, not trusted
    ok, bad = check_root(root)
    assert ok == 1 and len(bad) == 1 and bad[0][0].endswith("shard-00001.parquet")
    with pytest.raises(QueryError, match="shard-00001.parquet|mapcap check"):
        run_sql(connect(root), "SELECT count(*) FROM failures")


def test_views_exist_before_any_run_and_queries_name_unknown_runs(tmp_path):
    con = connect(str(tmp_path))
    assert run_sql(con, "SELECT count(*) AS n FROM predictions").column("n").to_pylist() == [0]
    with pytest.raises(QueryError, match="no runs under this root"):
        named_query(con, "per_class_accuracy")
    with pytest.raises(QueryError, match="unknown query"):
        named_query(con, "nope")


def test_duckdb_reads_a_remote_root_through_fsspec():
    root = "memory://mapcap-test-root"
    for i in range(2):
        write_table(root, "failures", "r1", f"shard-{i:05d}", [_fail_row(i)])
    assert fsspec.filesystem("memory").exists("/mapcap-test-root/failures/run=r1/shard-00001.parquet")
    t = run_sql(connect(root), "SELECT image_id FROM failures ORDER BY 1")
    assert t.column("image_id").to_pylist() == ["id0", "id1"]
    assert "image_id" in format_table(t)


def test_format_table_shows_both_ends_of_a_long_table():
    t = pa.table({"class_name": [f"c{i}" for i in range(100)], "accuracy": [i / 100 for i in range(100)]})
    lines = format_table(t, ends=3).splitlines()
    assert [ln.split()[0] for ln in lines[2:]] == ["c0", "c1", "c2", "...", "c97", "c98", "c99"]
    assert lines[5] == "... 94 more rows ..."
    assert len(format_table(t.slice(0, 7), ends=3).splitlines()) == 9  # short enough: every row
    assert format_table(t, max_rows=5).splitlines()[-1] == "... 95 more rows"


def test_a_column_added_later_reads_as_null_from_older_files(tmp_path):
    root = str(tmp_path)
    old = pa.table({"run_id": ["r1"], "method": ["chefer"], "start_layer": pa.array([0], pa.int32()),
                    "metric": ["pointing_grid"], "value": [0.9], "n": [10]})  # evaluations before `captioner`
    path = tmp_path / "evaluations" / "run=r1" / "evaluations.parquet"
    path.parent.mkdir(parents=True)
    pq.write_table(old, path)
    write_table(root, "runs", "r1", "run", [{"run_id": "r1", "status": "finished"}])
    con = connect(root)
    assert run_sql(con, "SELECT captioner FROM evaluations").column("captioner").to_pylist() == [None]
    assert named_query(con, "evaluations", "r1").column("pointing_grid").to_pylist() == [0.9]
    assert named_query(con, "caption_quality", "r1").num_rows == 0
    write_table(root, "evaluations", "r1", "caption-quality", [
        {"run_id": "r1", "method": None, "start_layer": None, "metric": m, "value": v, "n": 4, "captioner": "clipcap"}
        for m, v in (("cider_d", 4.5), ("bleu_4", 0.25))])
    rows = named_query(connect(root), "caption_quality", "r1").to_pylist()
    assert [(r["captioner"], r["captioned"], r["cider_d"], r["bleu_4"]) for r in rows] == [
        ("clipcap", "image", 4.5, 0.25)]
    assert named_query(connect(root), "evaluations", "r1").num_rows == 1  # caption rows stay out of the map table


def test_mutual_knowledge_aggregates_both_ways_on_curves_of_unequal_length(tmp_path):
    """`mean_auc`: the mean of per-image AUCs; `curve_auc`: the authors' AUC of the zero-padded mean curve."""
    root = str(tmp_path)
    curves = {"a": [2.0, 1.0, 0.0], "b": [3.0, 2.0, 1.0, 0.5, 0.0], "c": [1.0, 0.0]}  # 3, 5 and 2 points
    write_table(root, "runs", "r1", "run", [{"run_id": "r1", "status": "finished", "model": "toy"}])
    write_table(root, "mutual_knowledge", "r1", "shard-00000", [
        {"run_id": "r1", "image_id": i, "shard": 0, "label": "cat", "pred": "cat", "correct": True,
         "mi": c[0], "mi_curve": c, "auc": sum(c) / len(c)} for i, c in curves.items()])
    con = connect(root)
    per_class = named_query(con, "mutual_knowledge_by_class", "r1").to_pylist()[0]
    per_image = [sum(c) / len(c) for c in curves.values()]
    padded = np.array([c + [0.0] * (5 - len(c)) for c in curves.values()])  # the authors' get_mean_scores
    assert abs(per_class["mean_auc"] - np.mean(per_image)) < 1e-9  # (1.0 + 1.3 + 0.5) / 3 = 0.9333
    assert abs(per_class["curve_auc"] - padded.mean(0).mean()) < 1e-9  # 10.5 / 15 = 0.7
    assert abs(per_class["curve_auc"] - 0.7) < 1e-9 and abs(per_class["mean_auc"] - 2.8 / 3) < 1e-9
    run = named_query(con, "mutual_knowledge_runs").to_pylist()[0]
    assert abs(run["curve_auc"] - 0.7) < 1e-9 and abs(run["mean_auc"] - 2.8 / 3) < 1e-9


def test_two_writers_of_one_name_never_remove_each_others_temp_files(tmp_path):
    """Writer A finishes (and cleans up left-over temp files) while writer B is still writing the same name: B's
    temp file is a live writer's and stays; a temp file of a dead process of this machine is removed."""
    import subprocess
    import threading

    from mapcap.storage.writer import HOST_ID, atomic_write

    fs, base = fsspec.filesystem("file"), str(tmp_path)
    final = f"{base}/t/run=r/shard-00000.parquet"
    writing, release, errors = threading.Event(), threading.Event(), []

    def slow(f):
        f.write(b"B" * 10)
        writing.set()
        release.wait(10)
        f.write(b"B" * 10)

    def writer_b():
        try:
            atomic_write(fs, final, slow)
        except Exception as e:  # the test fails below if B lost its temp file
            errors.append(e)

    b = threading.Thread(target=writer_b)
    b.start()
    assert writing.wait(10)
    dead = subprocess.Popen(["true"])
    dead.wait()  # a process id that is gone
    left = tmp_path / "t" / "run=r" / f".shard-00000.parquet.{HOST_ID}.{dead.pid}.{'0' * 32}.tmp"
    left.write_bytes(b"half")
    atomic_write(fs, final, lambda f: f.write(b"A"))  # A: done, and its cleanup ran while B writes
    temps = sorted(p.name for p in (tmp_path / "t" / "run=r").glob(".*.tmp"))
    assert len(temps) == 1 and f".{os.getpid()}." in temps[0]  # B's own temp is kept, the dead one's is gone
    release.set()
    b.join(10)
    assert not errors and (tmp_path / "t" / "run=r" / "shard-00000.parquet").read_bytes() == b"B" * 20
    assert not list((tmp_path / "t" / "run=r").glob(".*.tmp"))
