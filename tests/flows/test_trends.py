"""Summaries, trends and the report end to end, on a toy dataset built so the analysis has something to find:
some classes often carry a distractor shape, so they are classified worse and their captions name it."""
import subprocess

import numpy as np
import pytest

from mapcap.cli.main import main
from mapcap.flows.explain import ExplainParams, explain
from mapcap.storage.query import connect, named_query, run_sql

DISTRACTOR_RATE = {"circle": 0.9, "star": 0.9, "cross": 0.6, "square": 0.6, "diamond": 0.3}
CHROMIUM = "/usr/bin/chromium"  # Debian's chromium; .ci/run installs it
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--virtual-time-budget=10000"]


@pytest.fixture(scope="module")
def trend_run(prefect_harness, tmp_path_factory):
    from mapcap.toy.dataset import write_toy_dataset
    data = tmp_path_factory.mktemp("trend") / "data"
    write_toy_dataset(data, n_per_class=20, seed=77, distractor_rate=DISTRACTOR_RATE)
    out = str(tmp_path_factory.mktemp("trend-results"))
    params = ExplainParams(dataset=str(data), out=out, shard_size=80, batch_size=40, run_name="trend", device="cpu",
                           captioner="clipcap", caption_top_k=2,
                           stages=["classify", "relevancy", "regions", "captions", "caption_quality", "summarize",
                                   "report"])
    return params, explain(params)


def test_accuracy_falls_as_captions_name_other_classes(trend_run):
    params, _ = trend_run
    con = connect(params.out)
    stats = {r["property"]: r for r in named_query(con, "accuracy_vs_property", "trend").to_pylist()}
    other = stats["other_class_share"]
    assert other["n"] == 8 and other["pearson"] < -0.5 and other["spearman"] < 0 and other["slope"] < 0, other
    table = named_query(con, "per_class_table", "trend").to_pylist()
    worst = table[0]  # ordered by accuracy
    assert worst["class_name"] in DISTRACTOR_RATE and worst["accuracy"] < 0.9
    assert worst["other_class_share"] > min(r["other_class_share"] for r in table)
    assert worst["top_confusion"] is not None and worst["summary"]
    subsets = run_sql(con, "SELECT class_name, subset, n_images, accuracy FROM class_summaries").to_pylist()
    for cname in {r["class_name"] for r in subsets}:
        rows = {r["subset"]: r for r in subsets if r["class_name"] == cname}
        assert rows["all"]["n_images"] == 20
        assert sum(rows.get(s, {"n_images": 0})["n_images"] for s in ("correct", "wrong")) == 20
    from mapcap.tasks.metrics.summaries import mentions
    from mapcap.toy.shapes import SHAPES
    summaries = run_sql(con, "SELECT class_name, summary_text FROM class_summaries").to_pylist()
    assert any(mentions(r["summary_text"], tuple(s for s in SHAPES if s != r["class_name"]))
               for r in summaries if r["class_name"] in DISTRACTOR_RATE)  # a distractor class's summary names it
    points = named_query(con, "property_points", "trend").to_pylist()
    acc = {r["class_name"]: r["accuracy"] for r in table}
    assert all(np.isclose(p["accuracy"], acc[p["class_name"]]) for p in points)


def test_report_renders_in_headless_chromium(trend_run, tmp_path):
    params, result = trend_run
    report = result["report"]
    page = open(report).read()
    for section in ("accuracy", "templates", "topk", "explanations", "caption-quality", "summaries", "trends",
                    "failures"):
        assert f'id="{section}"' in page
    assert "<b>Note:</b>" not in page  # the toy CLIP on the toy world
    quality = page.split('id="caption-quality"')[1].split("<h2")[0]
    assert "<td>clipcap</td><td>image</td>" in quality and "cider_d" in quality
    shot = tmp_path / "report.png"
    run = subprocess.run([CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'u1'}", "--window-size=1200,3000",
                          f"--screenshot={shot}", f"file://{report}"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and shot.stat().st_size > 10_000, run.stderr[-2000:]
    from PIL import Image
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=np.float32)
    assert pixels.std() > 10  # something was drawn, not a blank page
    for width in (1280, 1920):  # the widths people read reports at: nothing cut, nothing scrolls sideways
        dom = subprocess.run([CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / f'u{width}'}", "--dump-dom",
                              f"--window-size={width},1000", f"file://{report}"], capture_output=True, text=True,
                             timeout=120)
        assert 'data-broken="0"' in dom.stdout and 'data-errors="0"' in dom.stdout, dom.stdout[:300]
        assert 'data-overflow="0"' in dom.stdout and 'data-clipped="0"' in dom.stdout, (width, dom.stdout[:300])
        n_images = int(dom.stdout.split('data-images="')[1].split('"')[0])
        assert n_images >= 10  # four figures and the overlay cards
        assert "Uncaught" not in dom.stderr


def test_cli_trends_report_and_runs_over_time(trend_run, tmp_path, capsys):
    params, _ = trend_run
    again = params.model_copy(update={"run_name": "trend-2", "stages": ["classify"]})
    explain(again)
    con = connect(params.out)
    drift = named_query(con, "accuracy_over_time").to_pylist()
    assert [r["run_id"] for r in drift] == ["trend", "trend-2"]
    assert drift[0]["change"] is None and np.isclose(drift[1]["change"], 0.0)  # same data, same model
    models = named_query(con, "models_across_runs").to_pylist()
    assert models[0]["runs"] == 2
    templates = named_query(con, "templates_across_runs").to_pylist()
    assert {r["template"] for r in templates} >= {"ensemble", "a photo of a {}."}
    assert main(["trends", "trend", "--root", params.out]) == 0
    assert "other_class_share" in capsys.readouterr().out
    out = tmp_path / "r.html"
    assert main(["report", "trend", "--root", params.out, "--out", str(out)]) == 0
    assert out.stat().st_size > 50_000 and 'id="trends"' in out.read_text()
