"""The command line's fast paths: a typo, a missing folder, one image as DATASET and `--help` answer before torch,
open_clip or Prefect load and before any Prefect server starts; the shipped flag table matches the model."""
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from mapcap.cli.flag_table import TABLE, build_table, fingerprint, load_table

HEAVY = ("torch", "open_clip", "prefect", "transformers")
PROBE = ("import json, sys, time\n"
         "t0 = time.perf_counter()\n"
         "from mapcap.cli.main import main\n"
         "try:\n    rc = main(sys.argv[1:])\nexcept SystemExit as e:\n    rc = e.code\n"
         f"print(json.dumps({{'rc': rc, 's': time.perf_counter() - t0, 'heavy': [m for m in {HEAVY!r} "
         "if m in sys.modules]}), file=sys.stderr)\n")


def probe(*argv: str, tmp_path) -> tuple[dict, str]:
    env = dict(os.environ, PREFECT_HOME=str(tmp_path / "prefect"))
    env.pop("PREFECT_API_URL", None)
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", PROBE, *argv], capture_output=True, text=True, env=env, timeout=120)
    wall = time.perf_counter() - t0
    result = json.loads(done.stderr.strip().splitlines()[-1])
    assert not (tmp_path / "prefect" / "prefect.db").exists()  # no server ever started
    return result | {"wall": wall}, done.stdout + done.stderr


def test_the_shipped_flag_table_is_the_models():
    table = load_table()
    assert table is not None, f"{TABLE} is stale: run python -m mapcap.cli.flag_table"
    assert table == json.loads(json.dumps(build_table()))
    assert table["fingerprint"] == fingerprint()


@pytest.mark.parametrize("argv, said", [
    (["run", "--modle", "x"], "unrecognized arguments: --modle"),
    (["run", "/no/such/folder"], "dataset /no/such/folder does not exist"),
    (["run", "--shard-size", "0"], "must be ≥ 1"),
    (["run", "--regions.threshold", "nope"], "invalid choice: 'nope'"),
    (["run", "--run-name", "a'b"], "run name \"a'b\" cannot be a run id"),
])
def test_a_wrong_argument_answers_without_heavy_imports(tmp_path, argv, said):
    result, text = probe(*argv, tmp_path=tmp_path)
    assert result["rc"] == 2 and said in text
    assert result["heavy"] == [], "the check imported what a typo should not wait for"
    assert result["s"] < 5  # ~0.3 s idle; the model's imports alone take 6-30 s here
    assert "Traceback" not in text


def test_one_image_as_the_dataset_says_how_to_explain_it(tmp_path):
    image = tmp_path / "cat.jpg"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(image)
    result, text = probe("run", str(image), tmp_path=tmp_path)
    assert result["rc"] == 2 and result["heavy"] == []
    assert f"mapcap relevancy --image {image}" in text and "explorer" in text


def test_help_is_short_and_fast_and_help_all_is_whole(tmp_path):
    result, text = probe("run", "--help", tmp_path=tmp_path)
    assert result["rc"] == 0 and result["heavy"] == []
    lines = text.splitlines()
    assert len(lines) < 70 and "--help-all" in text and "--regions.threshold" not in text
    result, text = probe("run", "--help-all", tmp_path=tmp_path)
    assert result["rc"] == 0 and result["heavy"] == [] and "--regions.threshold" in text
