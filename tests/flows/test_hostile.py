"""A run over a hostile folder (tests/hostile.py): every file is a row of `images` (with a `failures` row when it
cannot be used) or a counted skip; nothing hangs, no shard is lost."""
import json
from pathlib import Path

import pytest

from mapcap.flows.explain import ExplainParams, explain
from mapcap.storage.writer import read_run
from tests.hostile import EXPECTED, hostile_folder


@pytest.fixture(scope="module")
def hostile_run(prefect_harness, tmp_path_factory) -> tuple[Path, str]:
    base = tmp_path_factory.mktemp("hostile")
    data = hostile_folder(base)
    out = str(base / "out")
    explain(ExplainParams(dataset=str(data), out=out, run_name="hostile", device="cpu", stages=["classify"],
                          shard_size=4))
    return data, out


def test_every_file_is_a_row_or_a_counted_skip(hostile_run):
    data, out = hostile_run
    images = read_run(out, "images", "hostile").to_pylist()
    failures = {f["path"]: f for f in read_run(out, "failures", "hostile").to_pylist()}
    by_path = {r["path"]: r for r in images}
    assert len(by_path) == len(images)  # one row per file, duplicates included
    rows = {str(Path(p).relative_to(data)) if p.startswith(str(data)) else "dog/outside.png": r
            for p, r in by_path.items()}
    expected_rows = {k: v for k, v in EXPECTED.items() if v != "skip"}
    assert set(rows) == set(expected_rows)
    for rel, want in expected_rows.items():
        row = rows[rel]
        if want is None:
            assert row["width"] == 32 and row["path"] not in failures, rel
        else:
            failure = failures.get(row["path"], {})
            assert row["width"] is None and failure.get("error_type") == want, (rel, failure)
    assert "--max-pixels" in failures[str(data / "cat/bomb.png")]["error"]
    assert "--max-file-mb" in failures[str(data / "cat/big.jpg")]["error"]
    run = read_run(out, "runs", "hostile").to_pylist()[0]
    skips = sum(v == "skip" for v in EXPECTED.values())
    assert run["status"] == "finished" and run["n_skipped"] == skips
    assert sum(json.loads(run["skipped_json"]).values()) == skips
    assert run["n_images"] == len(expected_rows)
