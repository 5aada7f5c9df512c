"""Byte-identical files are counted, not merged: each is a row of `images` (and of every per-image table), and
every query, the class summaries and the report agree on n per class."""
import shutil

import pytest

from mapcap.flows.explain import ExplainParams, explain
from mapcap.storage.query import connect, named_query
from mapcap.storage.writer import read_run

RUN = "dups_1.v2-a"  # a run id as typed: `mapcap classes dups_1.v2-a` finds it


@pytest.fixture(scope="module")
def dup_run(prefect_harness, tmp_path_factory) -> tuple[str, dict]:
    from mapcap.toy.dataset import write_toy_dataset
    data = tmp_path_factory.mktemp(RUN) / "data"
    write_toy_dataset(data, n_per_class=2, seed=77, split="test")
    circles = sorted((data / "circle").iterdir())
    shutil.copy(circles[0], data / "circle" / "copy-a.png")  # a duplicate pair within a class
    shutil.copy(circles[0], data / "circle" / "copy-b.png")  # ... a third copy
    shutil.copy(circles[1], data / "square" / "copy-c.png")  # the same bytes labelled as another class
    out = str(tmp_path_factory.mktemp("dups-out"))
    result = explain(ExplainParams(dataset=str(data), out=out, run_name=RUN, device="cpu", shard_size=6,
                                   stages=["classify", "relevancy", "regions", "captions", "summarize"]))
    return out, result


def test_every_file_is_counted_by_every_query(dup_run):
    dup_run, _ = dup_run
    images = read_run(dup_run, "images", RUN).to_pylist()
    assert len(images) == 8 * 2 + 3 and len({r["path"] for r in images}) == len(images)
    assert len({r["image_id"] for r in images}) == len(images)  # one key per file
    assert len({r["content_id"] for r in images}) == len(images) - 3  # the content hash kept for reuse
    con = connect(dup_run)
    per_class = {r["class_name"]: r["n"] for r in named_query(con, "per_class_accuracy", RUN).to_pylist()}
    table = {r["class_name"]: r["n"] for r in named_query(con, "per_class_table", RUN).to_pylist()}
    summaries = {r["class_name"]: r["n_images"] for r in named_query(con, "class_summaries", RUN).to_pylist()
                 if r["subset"] == "all"}
    assert per_class["circle"] == 4 and per_class["square"] == 3 and per_class["star"] == 2
    assert per_class == table == summaries
    per_image = named_query(con, "class_captions", RUN).to_pylist()
    assert {r["class_name"]: r["n"] for r in per_image}["circle"] <= 4  # no join fans out over copies
    dups = named_query(con, "duplicate_files", RUN).to_pylist()[0]
    assert (dups["n_identical"], dups["n_duplicates"], dups["n_groups"]) == (5, 3, 2)


def test_the_run_summary_says_how_many_files_are_identical(dup_run, capsys):
    from mapcap.cli.summary import print_run_summary

    out, result = dup_run
    print_run_summary(out, result)
    assert "5 files are byte-identical to another (2 groups, 3 copies beyond the first of each)" in \
        capsys.readouterr().out
