"""What every new user does first: `mapcap run` with default settings on a folder of ordinary photos."""
import json
import shutil
from pathlib import Path

import pytest
import skimage

from mapcap.flows.cli import main
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


def test_default_run_on_photos_does_every_stage_it_can(prefect_harness, photos, tmp_path, capsys):
    out = str(tmp_path / "res")
    assert main(["run", str(photos), "--out", out, "--run-name", "photos", "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "run photos: 7 images, 0 failed" in printed
    assert "skipped concepts: the model's own concept bank does not cover this dataset" in printed
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
