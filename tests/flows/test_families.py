"""The default `mapcap run` with a model of each image-tower family (tiny random configs, tests/towers/tiny.py):
every image gets maps from the tower's default method, and evaluate compares every method the tower supports."""
import shutil
from pathlib import Path

import pytest
import torch
import skimage

from mapcap.cli.main import main
from mapcap.storage.query import connect, run_sql
from mapcap.tasks.cache import forget
from mapcap.tasks.relevancy.methods import DEFAULTS, supported
from tests.towers.tiny import FAMILIES, register


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """Six of scikit-image's photographs in two class folders."""
    root = tmp_path_factory.mktemp("family-photos")
    data = Path(skimage.__file__).parent / "data"
    for cls, files in {"animal": ["chelsea.png", "horse.png", "astronaut.png"],
                       "object": ["coffee.png", "rocket.jpg", "motorcycle_left.png"]}.items():
        (root / cls).mkdir()
        for f in files:
            shutil.copy(data / f, root / cls / f)
    return root


@pytest.mark.parametrize("name", ["Tiny-EVA", "Tiny-MapViT", "Tiny-RN", "Tiny-ConvNeXt"])
def test_default_run_explains_every_family(prefect_harness, photos, tmp_path, capsys, name):
    register()
    kind = FAMILIES[name]
    forget(lambda k: k[0] == "clip" and k[1].name == name)  # seeded weights, whichever test built it before
    torch.manual_seed(1)  # seed 0 makes a random Tiny-RN whose Grad-CAM is zero on every photo (relu), 1 none
    out = str(tmp_path / "res")
    assert main(["run", str(photos), "--out", out, "--model", name, "--pretrained", "", "--device", "cpu",
                 "--run-name", name.lower()]) == 0
    assert "6 images, 0 failed" in capsys.readouterr().out
    con = connect(out)
    rel = run_sql(con, "SELECT image_id, method, target FROM relevancy").to_pylist()
    assert len({r["image_id"] for r in rel}) == 6 and {r["method"] for r in rel} == {DEFAULTS[kind][0]}
    assert {r["target"] for r in rel} == {"pred", "label"}
    # regions from the maps (a random model's map may be flat, or its regions below the minimum area)
    n_regions = run_sql(con, "SELECT count(DISTINCT image_id) AS n FROM regions").column("n")[0].as_py()
    assert n_regions >= 4
    compared = {r["method"] for r in run_sql(con, "SELECT DISTINCT method FROM evaluations").to_pylist()}
    assert compared == set(supported(kind))
    page = (Path(out) / "reports" / f"{name.lower()}.html").read_text()  # the report puts them side by side
    section = page[page.index('<h2 id="methods">'):page.index('<h2 id="caption-quality">')]
    assert all(f"<td>{m}</td>" in section for m in supported(kind)) and "Best deletion AUC: <b>" in section
    # random weights say so: the report's banner, the runs table
    assert '<p class="wrong banner"><b>Note:</b> random weights (no pretrained checkpoint)' in page
    assert run_sql(con, "SELECT pretrained FROM runs").column("pretrained").to_pylist() == ["random"]
