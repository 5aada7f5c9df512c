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


def probe(*argv: str, tmp_path, home: str | None = None) -> tuple[dict, str]:
    env = dict(os.environ, PREFECT_HOME=home or str(tmp_path / "prefect"))
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


@pytest.mark.parametrize("cmd", ["run", "demo"])
def test_a_prefect_home_without_its_parent_folder_is_refused_before_the_server(tmp_path, cmd):
    home = tmp_path / "no-such-parent" / "prefect"
    result, text = probe(cmd, tmp_path=tmp_path, home=str(home))  # its last line is the probe's
    assert result["rc"] == 2 and result["heavy"] == [] and "Traceback" not in text
    assert text.strip().splitlines()[:-1] == [f"mapcap {cmd}: error: PREFECT_HOME {home}: its parent folder "
                                         f"{home.parent} does not exist (Prefect creates the home folder only): "
                                         f"create it (mkdir -p {home.parent}) or unset PREFECT_HOME (Prefect then "
                                         f"uses ~/.prefect)"]
    assert not home.parent.exists()


def test_a_prefect_home_prefect_can_create_passes_and_a_file_is_refused(tmp_path):
    from mapcap.cli.checks import check_prefect_home

    check_prefect_home(None)
    check_prefect_home(str(tmp_path / "new"))  # Prefect creates this one (its parent exists)
    (tmp_path / "file").write_text("")
    with pytest.raises(ValueError, match=r"PREFECT_HOME .*file is a file, not a folder: .* or unset it"):
        check_prefect_home(str(tmp_path / "file"))


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
