"""End to end: the real flow under Prefect's test harness, read back through DuckDB."""
import shutil
from pathlib import Path

import pytest

from mapcap.cli.main import main
from mapcap.flows.explain import ExplainParams, explain
from mapcap.storage.query import connect, named_query, run_sql


@pytest.fixture(scope="module")
def toy_with_corrupt(toy_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("toyc") / "data"
    shutil.copytree(toy_dir, root)
    (root / "star" / "zz-corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    return root


@pytest.fixture(scope="module")
def first_run(prefect_harness, toy_with_corrupt, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("results"))
    params = ExplainParams(dataset=str(toy_with_corrupt), out=out, shard_size=16, run_name="e2e", device="cpu",
                           classify={"templates": "simple", "batch_size": 8},
                           relevancy={"batch_size": 8, "methods": ["chefer", "gradient"]})
    return params, explain(params)


def test_flow_classifies_the_toy_world_and_counts_add_up(first_run):
    params, result = first_run
    con = connect(params.out)
    assert result["run_id"] == "e2e" and result["n_images"] == 49
    assert result["accuracy"] >= 0.95
    acc = run_sql(con, "SELECT avg(correct::INT) AS a FROM predictions WHERE template='ensemble'").column("a")[0]
    assert acc.as_py() >= 0.95
    counts = named_query(con, "row_counts", "e2e").to_pylist()[0]
    assert counts == {"images": 49, "predicted": 48, "failed": 1}
    assert result["notes"] == []  # the toy CLIP on the toy world: nothing to warn about
    fail = run_sql(con, "SELECT path, stage, error FROM failures").to_pylist()
    assert len(fail) == 1 and fail[0]["path"].endswith("zz-corrupt.png") and fail[0]["stage"] == "classify"
    per_template = run_sql(con, "SELECT template, count(*) AS n FROM predictions GROUP BY 1").to_pylist()
    assert {r["template"] for r in per_template} == {"ensemble", "descriptors", *params_templates()}
    assert {r["n"] for r in per_template} == {48}
    run = run_sql(con, "SELECT status, n_images, n_failures, n_shards, params_json, code_version FROM runs")
    row = run.to_pylist()[0]
    assert row["status"] == "finished" and row["n_images"] == 49 and row["n_failures"] == 1
    assert row["n_shards"] == 4 and '"shard_size": 16' in row["params_json"] and row["code_version"]


def params_templates():
    from mapcap.tasks.templates import resolve_templates
    return resolve_templates("simple")


def test_rerun_skips_finished_shards_and_force_redoes_them(prefect_harness, tmp_path):
    """Every stage, both passes, on a run of its own: one image a class and a corrupt file in three shards (the
    module's run, forced, redid the faithfulness of 49 images: a 32 s test, now 13 s)."""
    import os
    from mapcap.storage.writer import table_path
    from mapcap.toy.dataset import write_toy_dataset
    data = tmp_path / "data"
    write_toy_dataset(data, n_per_class=1, seed=4321, split="test")
    (data / "star" / "zz-corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    params = ExplainParams(dataset=str(data), out=str(tmp_path / "out"), shard_size=4, run_name="force",
                           device="cpu", evaluate={"steps": 4})
    first = explain(params)
    assert first["shards_done"] == 3 and first["n_images"] == 9 and first["n_failures"] == 1
    again = explain(params)
    assert again["shards_skipped"] == 3 and again["n_failures"] == 1
    deferred = table_path(params.out, "faithfulness", "force", "shard-00000")
    before = os.stat(deferred).st_mtime_ns
    forced = explain(params.model_copy(update={"force": True}))
    assert forced["shards_skipped"] == 0 and forced["shards_done"] == 3 and forced["n_failures"] == 1
    assert os.stat(deferred).st_mtime_ns != before  # the deferred stage (a later pass) was redone too
    con = connect(params.out)
    assert run_sql(con, "SELECT count(*) AS n FROM images").column("n")[0].as_py() == 9  # no duplicates
    assert run_sql(con, "SELECT count(DISTINCT image_id) AS n FROM faithfulness").column("n")[0].as_py() == 8


def test_cli_sql_and_named_queries(first_run, capsys):
    params, _ = first_run
    assert main(["classes", "e2e", "--root", params.out]) == 0
    out = capsys.readouterr().out
    assert "class_name" in out and "star" in out
    assert main(["sql", "--root", params.out, "--format", "csv",
                 "SELECT label, count(*) AS n FROM images GROUP BY 1 ORDER BY 1"]) == 0
    csv = capsys.readouterr().out.splitlines()
    assert csv[0] == '"label","n"' and len(csv) == 9
    assert main(["classes", "no-such-run", "--root", params.out]) == 2
    assert "unknown run 'no-such-run'" in capsys.readouterr().err


def test_bad_model_fails_before_any_shard(prefect_harness, toy_dir, tmp_path):
    with pytest.raises(ValueError, match="unknown open_clip model 'ViT-Nope'"):
        explain(ExplainParams(dataset=str(toy_dir), model="ViT-Nope", pretrained="", out=str(tmp_path)))
    assert not (tmp_path / "predictions").exists()
    with pytest.raises(ValueError, match="hf captioner needs captioner_path"):
        explain(ExplainParams(dataset=str(toy_dir), captions={"captioner": "hf"}, out=str(tmp_path)))
    with pytest.raises(ValueError, match="stage 'concepts' was asked for but cannot run: no concept bank for model "
                                         "ViT-B-32: pass concepts.descriptors"):
        explain(ExplainParams(dataset=str(toy_dir), model="ViT-B-32", pretrained="", out=str(tmp_path),
                              stages=["classify", "relevancy", "regions", "concepts"]))
    bank = tmp_path / "bank.json"
    bank.write_text('{"star": ["five points"]}')
    with pytest.raises(ValueError, match=r"has no descriptors for classes \['circle', 'cross'"):
        explain(ExplainParams(dataset=str(toy_dir), concepts={"descriptors": str(bank)}, out=str(tmp_path)))
    with pytest.raises(ValueError, match="unknown relevancy method 'grad-cam'"):
        explain(ExplainParams(dataset=str(toy_dir), relevancy={"methods": ["grad-cam"]}, out=str(tmp_path)))
    with pytest.raises(ValueError, match="start layer 4 is out of range for MapCap-Toy-ViT, whose vision tower has "
                                         "4 blocks"):
        explain(ExplainParams(dataset=str(toy_dir), relevancy={"start_layers": [4]}, out=str(tmp_path)))
    assert not (tmp_path / "predictions").exists()


def test_relevancy_stage_writes_maps_for_pred_and_label(first_run):
    params, _ = first_run
    con = connect(params.out)
    rows = run_sql(con, "SELECT method, start_layer, target, count(*) AS n, count(DISTINCT image_id) AS images, "
                        "min(len(map)) AS lo, max(len(map)) AS hi FROM relevancy GROUP BY ALL ORDER BY ALL").to_pylist()
    assert [(r["method"], r["start_layer"], r["target"]) for r in rows] == [
        ("chefer", 0, "label"), ("chefer", 0, "pred"), ("gradient", None, "label"), ("gradient", None, "pred")]
    assert all(r["n"] == 48 and r["images"] == 48 and r["lo"] == r["hi"] == 64 for r in rows)
    same = run_sql(con, """SELECT count(*) AS n FROM relevancy a JOIN relevancy b USING (image_id, method)
                           JOIN predictions p USING (image_id)
                           WHERE a.target = 'pred' AND b.target = 'label' AND p.template = 'ensemble'
                             AND p.correct AND a.map = b.map""").column("n")[0].as_py()
    n_correct = run_sql(con, "SELECT sum(correct::INT) AS n FROM predictions WHERE template='ensemble'")
    assert same == 2 * n_correct.column("n")[0].as_py()  # correct: one map serves both targets


def test_concepts_stage_writes_concepts_and_mutual_knowledge(first_run, capsys, tmp_path):
    params, _ = first_run
    con = connect(params.out)
    mk = run_sql(con, "SELECT * FROM mutual_knowledge").to_pylist()
    assert len(mk) == 48 and len({r["image_id"] for r in mk}) == 48  # the corrupt image has no row
    for r in mk:
        assert r["n_visual"] == len(r["visual"]) >= 3 and r["n_language"] == 5
        assert len(r["mi_curve"]) == r["n_visual"] + 1 and r["mi_curve"][-1] == 0.0
        assert abs(r["mi"] - r["mi_curve"][0]) < 1e-5 and abs(r["auc"] - sum(r["mi_curve"]) / len(r["mi_curve"])) < 1e-5
        assert len(r["deletion_curve"]) == len(r["insertion_curve"]) == r["n_visual"] + 1
    kinds = run_sql(con, "SELECT source, count(DISTINCT image_id) AS n, max(rank) AS k FROM concepts "
                         "GROUP BY 1 ORDER BY 1").to_pylist()
    assert [(k["source"], k["n"], k["k"]) for k in kinds] == [("image", 48, 2), ("language", 48, 4), ("region", 48, 2)]
    per_class = named_query(con, "mutual_knowledge_by_class", "e2e").to_pylist()
    assert len(per_class) == 8
    run = named_query(con, "mutual_knowledge_runs").to_pylist()[0]
    assert run["deletion"] < run["insertion"] and run["acc_drop"] > 0.3  # the top concepts' regions matter
    top = run_sql(con, "SELECT avg(top_visual_of_label::INT) AS share FROM mutual_knowledge WHERE correct")
    assert top.column("share")[0].as_py() >= 0.8  # the top visual concept is a true descriptor of the class
    assert main(["concepts", "e2e", "--root", params.out]) == 0
    out = capsys.readouterr().out
    assert "descriptors_accuracy" in out and "mean_auc" in out and "(all)" in out
    report = Path(first_run[1]["report"]).read_text()
    assert 'id="concepts"' in report and report.count('<li class="concepts">visual concepts: <b>') >= 8
    figure = tmp_path / "runs.png"
    assert main(["mk-runs", "--root", params.out, "--figure", str(figure)]) == 0
    assert "e2e" in capsys.readouterr().out and figure.read_bytes()[:4] == b"\x89PNG"


def test_evaluations_table_scores_every_variant(first_run):
    params, _ = first_run
    ev = run_sql(connect(params.out), "SELECT method, start_layer, metric, value, n FROM evaluations").to_pylist()
    got = {(r["method"], r["start_layer"], r["metric"]): r for r in ev}
    for variant in (("chefer", 0), ("chefer", -1), ("gradient", None), ("random", None)):
        for metric in ("positive_auc", "negative_auc", "deletion_auc", "insertion_auc", "pointing_grid",
                       "pointing_pixel"):
            assert (*variant, metric) in got
    assert got[("chefer", 0, "pointing_grid")]["value"] >= 0.8
    assert got[("chefer", 0, "positive_auc")]["value"] < got[("chefer", 0, "negative_auc")]["value"]
    assert got[("random", None, "pointing_grid")]["value"] < 0.5
    for k in ("chefer", 0), ("chefer", -1):  # showing the most relevant cells first beats showing random ones
        assert got[(*k, "insertion_auc")]["value"] > got[("random", None, "insertion_auc")]["value"]
        assert got[(*k, "insertion_auc")]["value"] > got[(*k, "deletion_auc")]["value"]
    assert got[("chefer", 0, "pointing_grid")]["n"] == run_sql(connect(params.out), "SELECT sum(correct::INT) AS n "
        "FROM predictions WHERE template = 'ensemble'").column("n")[0].as_py()


def test_cli_relevancy_writes_raw_maps_and_an_overlay(toy_dir, tmp_path, capsys):
    import numpy as np
    image = sorted((toy_dir / "star").glob("*.png"))[0]
    out = tmp_path / "exp.npz"
    assert main(["relevancy", "--image", str(image), "--text", "star", "--text", "ring", "--out", str(out)]) == 0
    data = np.load(out)
    assert data["maps"].shape == (2, 8, 8) and data["maps"].dtype == np.float32
    assert data["probs"][0] > data["probs"][1]
    assert out.with_suffix(".png").stat().st_size > 1000
    assert "wrote" in capsys.readouterr().out
    assert main(["relevancy", "--image", str(image), "--text", "", "--out", str(out)]) == 2


def test_two_shape_dataset_gets_a_discrimination_score(prefect_harness, tmp_path):
    from mapcap.toy.dataset import write_toy_dataset
    write_toy_dataset(tmp_path / "pairs", n_per_class=3, seed=8, kind="pair")
    out = str(tmp_path / "res")
    explain(ExplainParams(dataset=str(tmp_path / "pairs"), out=out, stages=["classify", "faithfulness", "evaluate"],
                          run_name="pairs", device="cpu", evaluate={"steps": 4}))  # RISE steps: not discrimination
    ev = {(r["method"], r["start_layer"], r["metric"]): r for r in run_sql(
        connect(out), "SELECT * FROM evaluations").to_pylist()}
    assert ev[("chefer", 0, "discrimination")]["n"] == 24  # each image: the mean of both objects' class maps
    per = run_sql(connect(out), "SELECT avg(value) AS v, count(*) AS n FROM faithfulness WHERE method = 'chefer' "
                  "AND start_layer = 0 AND metric = 'discrimination'").to_pylist()[0]
    assert per["n"] == 24 and per["v"] == pytest.approx(ev[("chefer", 0, "discrimination")]["value"])
    assert abs(ev[("random", None, "discrimination")]["value"] - 0.5) < 0.1
    assert run_sql(connect(out), "SELECT count(*) AS n FROM relevancy").column("n")[0].as_py() == 0


def test_regions_stage_segments_stored_maps_and_reruns_only_itself(first_run):
    from mapcap.storage.writer import table_path
    from mapcap.tasks.masks import region_pixels
    params, _ = first_run
    con = connect(params.out)
    regs = run_sql(con, "SELECT * FROM regions").to_pylist()
    assert regs and max(r["region_id"] for r in regs) <= 2
    for r in regs[:50]:  # masks stored at the working size, scaled to the image's pixels by the reader
        assert max(r["mask_size"]) <= 256 and region_pixels(r)[1].sum() == r["area"]
    per_map = run_sql(con, "SELECT count(DISTINCT (image_id, target, method)) AS n FROM regions").column("n")[0]
    assert per_map.as_py() >= 0.9 * 48 * 2 * 2  # nearly every map has at least one region
    rel = table_path(params.out, "relevancy", "e2e", "shard-00000")
    before = __import__("os").stat(rel).st_mtime_ns
    explain(params.model_copy(update={"regions": params.regions.model_copy(update={"top_k": 1})}))
    assert __import__("os").stat(rel).st_mtime_ns == before  # maps reused, not recomputed
    assert run_sql(connect(params.out), "SELECT max(region_id) AS m FROM regions").column("m")[0].as_py() == 0


def test_a_crashing_shard_is_recorded_and_a_rerun_resumes(prefect_harness, toy_dir, tmp_path, monkeypatch):
    from mapcap.tasks.stages.classify import Classify
    original = Classify.compute
    tries = []

    def crash_on_shard_1(self, cfg, ctx):
        if ctx.shard == 1:
            tries.append(1)
            raise OSError("simulated GPU fault")  # transient: retried (twice), then the shard fails
        return original(self, cfg, ctx)

    params = ExplainParams(dataset=str(toy_dir), out=str(tmp_path), shard_size=16, run_name="crash", device="cpu",
                           stages=["classify"])
    monkeypatch.setattr(Classify, "compute", crash_on_shard_1)
    with pytest.raises(RuntimeError, match=r"shard\(s\) \[1\] failed.*run_name='crash'"):
        explain(params)
    run = run_sql(connect(str(tmp_path)), "SELECT status, failed_shards FROM runs").to_pylist()[0]
    assert run == {"status": "failed", "failed_shards": [1]}
    assert len(tries) == 3  # an I/O error can pass: two retries
    monkeypatch.setattr(Classify, "compute", original)
    again = explain(params)
    assert again["shards_skipped"] == 2 and again["shards_done"] == 3  # only shard 1 was redone
    con = connect(str(tmp_path))
    assert named_query(con, "row_counts", "crash").to_pylist()[0] == {"images": 48, "predicted": 48, "failed": 0}
    assert run_sql(con, "SELECT status FROM runs").column("status").to_pylist() == ["finished"]


def test_captions_stage_captions_regions_and_whole_images(first_run):
    params, _ = first_run
    con = connect(params.out)
    rows = run_sql(con, """SELECT c.region_id, c.target, c.text, c.clipscore, c.ref_clipscore, p.label, p.correct
                           FROM captions c JOIN predictions p USING (run_id, image_id)
                           WHERE p.template = 'ensemble'""").to_pylist()
    whole = [r for r in rows if r["region_id"] == -1]
    assert len(whole) == 48 and all(r["target"] == "image" for r in whole)
    assert all(0 <= r["clipscore"] <= 2.5 and r["ref_clipscore"] is not None for r in rows)
    named = [r["label"] in r["text"] for r in whole if r["correct"]]
    assert sum(named) / len(named) >= 0.9  # the whole-image caption names the true shape
    assert any(r["region_id"] == 0 for r in rows)


def test_caption_quality_is_recorded_and_printed(first_run, capsys):
    params, _ = first_run
    rows = named_query(connect(params.out), "caption_quality", "e2e").to_pylist()
    assert [(r["captioner"], r["captioned"], r["n"]) for r in rows] == [
        ("retrieval", "image", 48), ("retrieval", "true-class top region (chefer @0)", 48)]
    assert all(r["cider_d"] > 1.0 and 0 < r["bleu_1"] <= 1 and r["ref_clipscore"] > 0.5 for r in rows)
    assert main(["captions", "e2e", "--root", params.out]) == 0
    out = capsys.readouterr().out
    assert "captions against the reference captions" in out and "cider_d" in out and "retrieval" in out


def test_rerun_with_clipcap_reuses_maps_and_regions(first_run):
    import os
    from mapcap.storage.writer import table_path
    params, _ = first_run
    stages = ["classify", "relevancy", "regions", "captions"]
    explain(params.model_copy(update={"stages": stages}))  # whatever earlier tests changed, regions now match
    kept = [table_path(params.out, t, "e2e", "shard-00000") for t in ("relevancy", "regions")]
    before = [os.stat(p).st_mtime_ns for p in kept]
    explain(params.model_copy(update={"captions": params.captions.model_copy(update={"captioner": "clipcap"}),
                                      "stages": stages}))
    assert [os.stat(p).st_mtime_ns for p in kept] == before  # maps and regions reused, not recomputed
    rows = run_sql(connect(params.out), """SELECT c.captioner, c.region_id, c.text, p.label
                                           FROM captions c JOIN predictions p USING (run_id, image_id)
                                           WHERE p.template = 'ensemble' AND p.correct""").to_pylist()
    assert {r["captioner"] for r in rows} == {"retrieval", "clipcap"}  # both stay, side by side
    whole = [r for r in rows if r["captioner"] == "clipcap" and r["region_id"] == -1]
    assert len(whole) >= 40 and sum(r["label"] in r["text"] for r in whole) / len(whole) >= 0.85


def test_reprocess_redoes_only_the_shards_of_the_named_classes(prefect_harness, toy_dir, tmp_path):
    import os
    from mapcap.flows.reprocess import ReprocessParams, reprocess
    from mapcap.storage.writer import table_path
    params = ExplainParams(dataset=str(toy_dir), out=str(tmp_path), shard_size=16, run_name="rp", device="cpu",
                           stages=["classify"])
    explain(params)
    files = [table_path(str(tmp_path), "predictions", "rp", f"shard-{i:05d}") for i in range(3)]
    before = [os.stat(f).st_mtime_ns for f in files]
    labels = [set(r["label"] for r in run_sql(connect(str(tmp_path)), f"SELECT label FROM images WHERE shard = {i}")
                  .to_pylist()) for i in range(3)]
    result = reprocess(ReprocessParams(run_name="rp", out=str(tmp_path), classes=["ring"]))
    after = [os.stat(f).st_mtime_ns for f in files]
    assert [b != a for b, a in zip(before, after)] == ["ring" in ls for ls in labels]
    assert result["shards_skipped"] == 3 - sum("ring" in ls for ls in labels)
    con = connect(str(tmp_path))
    assert named_query(con, "row_counts", "rp").to_pylist()[0] == {"images": 48, "predicted": 48, "failed": 0}
    with pytest.raises(ValueError, match=r"redo_classes \['zebra'\] are not classes"):
        reprocess(ReprocessParams(run_name="rp", out=str(tmp_path), classes=["zebra"]))
    with pytest.raises(ValueError, match="no run 'nope'"):
        reprocess(ReprocessParams(run_name="nope", out=str(tmp_path)))


def test_a_stage_without_its_upstream_stage_is_refused_not_skipped(capsys):
    with pytest.raises(ValueError, match=r"stage 'concepts' needs \['relevancy', 'regions'\].*'classify', "
                                         r"'relevancy', 'regions', 'concepts'"):
        ExplainParams(stages=["classify", "concepts"])
    assert main(["run", "toy", "--stages", "classify", "relevancy", "summarize"]) == 2
    assert "stage 'summarize' needs ['regions', 'captions']" in capsys.readouterr().err
    assert ExplainParams(stages=["classify", "relevancy", "regions", "concepts"]).stages[-1] == "concepts"


def test_regions_know_whether_they_lie_on_the_object_and_summaries_use_it(first_run):
    params, _ = first_run
    con = connect(params.out)
    regs = run_sql(con, "SELECT r.target, r.method, r.region_id, r.on_object, i.path FROM regions r JOIN images i "
                        "USING (run_id, image_id) WHERE r.run_id = 'e2e'").to_pylist()
    assert regs and all(r["on_object"] is not None for r in regs)  # the toy manifest has every object's mask
    top = {m: [r["on_object"] for r in regs if (r["region_id"], r["target"], r["method"]) == (0, "label", m)]
           for m in ("chefer", "gradient")}
    share_of = {m: sum(v) / len(v) for m, v in top.items()}  # measured: chefer 0.77, gradient 0.31
    assert share_of["chefer"] >= 0.6 and share_of["chefer"] > share_of["gradient"] + 0.2
    summ = run_sql(con, "SELECT on_object_share FROM class_summaries WHERE run_id = 'e2e' AND subset = 'all' "
                        "AND n_images > 0").column(0).to_pylist()
    assert summ and all(x is not None and 0.0 <= x <= 1.0 for x in summ)  # summaries average the regions' flag


def test_report_lists_the_images_a_stage_could_not_use(first_run):
    from mapcap.tasks.report.html import build_report
    params, _ = first_run
    _, page = build_report(params.out, "e2e", explained=2, sampled=2)
    assert "<p>49 images, 48 classified (1 could not be read" in page
    failures = page.split('id="failures"')[1]
    assert "1 failure row(s) of 49 images" in failures
    assert "<td>classify</td><td>OSError</td><td>1</td>" in failures  # by stage and error
    assert "zz-corrupt.png</td><td>OSError</td><td>cannot decode" in failures  # the file itself


def test_run_summary_prints_what_could_not_be_read(first_run, capsys):
    from mapcap.cli.summary import print_run_summary
    params, result = first_run
    print_run_summary(params.out, result)
    out = capsys.readouterr().out
    assert "run e2e: 49 images, 1 failed" in out
    block = out.split("images a stage could not use")[1].split("\n\n")[0]
    assert "FROM failures WHERE run_id = 'e2e'" in block and "classify  OSError" in block and "zz-corrupt.png" in block
    assert "per-class accuracy, worst first" in out and "; all " not in out  # 5 classes: every one printed
