"""What every new user does first: `mapcap run` with default settings on a folder of ordinary photos."""
import json
import os
import subprocess
import sys
import shutil
from pathlib import Path

import pytest
import skimage

from mapcap.cli.main import main
from mapcap.storage.query import connect, run_sql

PHOTOS = {"animal": ["chelsea.png", "horse.png"], "object": ["coffee.png", "rocket.jpg", "motorcycle_left.png"],
          "person": ["astronaut.png", "camera.png"]}


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """scikit-image's bundled photographs in three class folders (RGB, grey, JPEG and PNG, up to 740 px)."""
    root = tmp_path_factory.mktemp("photos")
    data = Path(skimage.__file__).parent / "data"
    for cls, files in PHOTOS.items():
        (root / cls).mkdir()
        for f in files:
            shutil.copy(data / f, root / cls / f)
    return root


def test_default_run_on_photos_does_every_stage_it_can(photos, tmp_path):
    """The command a user types, in its own process (its own temporary Prefect server), output and all."""
    out = str(tmp_path / "res")
    env = dict(os.environ, PREFECT_HOME=str(tmp_path / "prefect"), PREFECT_LOGGING_LEVEL="INFO")  # a user's
    env.pop("PREFECT_API_URL", None)
    done = subprocess.run([sys.executable, "-m", "mapcap.cli.main", "run", str(photos), "--out", out, "--run-name",
                           "photos", "--device", "cpu"], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    printed, said = done.stdout, done.stderr
    # quiet by default: no traceback, each reason once, one progress line per stage run
    lines = [line.split(" ", 1)[1] for line in said.splitlines() if line[:2].isdigit()]  # without the time
    assert "Traceback" not in said and "Finished in state" not in said and "Warning" not in said
    assert len(lines) == len(set(lines)), [x for x in lines if lines.count(x) > 1]
    bars = [x for x in lines if x.startswith("[") and "] " in x]
    assert len(bars) >= 8 and bars[-1].startswith("[####################]"), said[:3000]
    # the report is written before the costly evaluation, and again after it
    reports = [n for n, x in enumerate(bars) if " report: " in x]
    faith = next(n for n, x in enumerate(bars) if " faithfulness: " in x)
    assert len(reports) == 2 and reports[0] < faith < reports[1], bars
    assert "run photos: 7 images, 0 failed" in printed
    assert "skipped concepts, classify.descriptions: the model's own concept bank does not cover this" in printed
    # the default toy CLIP knows eight shapes, not animals: the run says its results mean nothing here
    assert "note: the model MapCap-Toy-ViT was trained on 8 classes only (circle, " in printed
    assert "are not among them" in printed and "--pretrained laion2b_s34b_b88k" in printed
    con = connect(out)
    count = lambda t: run_sql(con, f"SELECT count(DISTINCT image_id) AS n FROM {t}").column("n")[0].as_py()  # noqa
    for table in ("predictions", "relevancy", "regions", "captions"):
        assert count(table) == 7, table
    summaries = run_sql(con, "SELECT class_name FROM class_summaries WHERE subset = 'all'").column("class_name")
    assert sorted(summaries.to_pylist()) == ["animal", "object", "person"]
    page = (Path(out) / "reports" / "photos.html").read_text()
    assert len(page) > 10_000 and "<b>Note:</b> the model MapCap-Toy-ViT was trained on 8 classes only" in page
    stages = run_sql(con, "SELECT stages_json FROM runs").column("stages_json")[0].as_py()
    assert '"concepts": {"reason": "the model' in stages and '"status": "skipped"' in stages
    record = json.loads(stages)  # where each stage's seconds went, summed over shards
    for stage, parts in {"classify": {"decode", "pixels", "model", "rows", "write"}, "regions": {"segment", "write"},
                         "captions": {"load", "crops", "embed", "caption", "score", "write"}}.items():
        phases = record[stage]["phases"]
        turn = {k: phases.pop(k, 0.0) for k in ("device", "device_wait")}  # spans the other parts (device_turn.py)
        assert set(phases) == parts and (stage == "regions" or turn["device"] > 0), stage
        assert 0 < sum(phases.values()) <= record[stage]["seconds"] + 0.01, stage
    assert 0 < record["device"]["busy_share"] <= 1
    templates = run_sql(con, "SELECT DISTINCT template FROM predictions").column("template").to_pylist()
    assert "descriptors" not in templates  # description-based classification off: no bank for these classes


def test_classify_only_on_photos(prefect_harness, photos, tmp_path, capsys):
    out = str(tmp_path / "res")
    assert main(["run", str(photos), "--out", out, "--stages", "classify", "--device", "cpu"]) == 0
    assert "7 images, 0 failed" in capsys.readouterr().out
    assert main(["run", str(photos), "--out", out, "--stages", "classify", "relevancy", "regions", "concepts"]) == 2
    assert "stage 'concepts' was asked for but cannot run" in capsys.readouterr().err
