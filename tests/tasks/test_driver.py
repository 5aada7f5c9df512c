"""The stage registry and the one driver: order and dependencies declared once, hashing chained through
upstream stages, skip-if-complete, resume, uniform failures files, the stored config read back as data."""
import json

import pyarrow.parquet as pq
import pytest

from mapcap.storage.writer import table_path, write_table
from mapcap.tasks.captioners.base import CaptionerConfig
from mapcap.tasks.data import read_dataset
from mapcap.tasks.provenance import config_from_json, config_json, is_transient
from mapcap.tasks.segment import SegmentConfig
from mapcap.tasks.pipeline import base
from mapcap.tasks.pipeline.base import (STAGES, Stage, check_stage_list, dependencies, register_stage, stage_order,
                                      upstream)
from mapcap.tasks.stages.captions import CaptionsConfig
from mapcap.tasks.stages.classify import ClassifyConfig
from mapcap.tasks.pipeline.driver import StagePlan, run_run_stage, run_shard, stored_config
from mapcap.tasks.stages.regions import RegionsConfig
from mapcap.tasks.stages.relevancy import RelevancyConfig
from mapcap.tasks.stages.report import ReportConfig
from mapcap.tasks.templates import resolve_templates


def test_order_and_dependencies_come_from_reads_and_writes():
    order = stage_order()
    assert order == ["classify", "relevancy", "regions", "concepts", "captions", "faithfulness", "caption_quality",
                     "evaluate", "summarize", "report"]
    assert upstream("evaluate") == ("classify", "faithfulness")
    assert dependencies("regions") == ("relevancy", "classify")
    assert upstream("summarize") == ("classify", "relevancy", "regions", "captions")
    with pytest.raises(ValueError, match=r"'captions' needs \['relevancy', 'regions'\].*stages=\['classify', "
                                         r"'relevancy', 'regions', 'captions'\]"):
        check_stage_list(["classify", "captions"])
    with pytest.raises(ValueError, match="unknown stage"):
        check_stage_list(["classify", "segmentation"])


def test_a_new_stage_is_one_class():
    @register_stage("brightness", dict, reads=("images",), writes=("evaluations",), order=5)
    class Brightness(Stage):

        def compute(self, cfg, ctx):
            return {"evaluations": []}
    try:
        assert "brightness" in stage_order() and dependencies("brightness") == ("classify",)
        assert stage_order().index("brightness") > stage_order().index("classify")
    finally:
        STAGES.remove("brightness")


@pytest.fixture(scope="module")
def setup(toy_model, toy_dir):
    ds = read_dataset(str(toy_dir))
    items = [it for it in ds.items if it.label in ("star", "ring")][:6]
    tpl = resolve_templates(["a photo of a {}."])
    cls = ClassifyConfig(toy_model.spec, ds.classes, tpl, top_k=3)
    rel = RelevancyConfig(toy_model.spec, ds.classes, tpl, (("chefer", 0),))
    reg = RegionsConfig(SegmentConfig(top_k=2))
    cap = CaptionsConfig(toy_model.spec, CaptionerConfig("retrieval"), "chefer", 0)
    return items, [StagePlan("classify", cls), StagePlan("relevancy", rel), StagePlan("regions", reg),
                   StagePlan("captions", cap)]


def test_skip_resume_and_chained_hashes(setup, tmp_path):
    items, plans = setup
    root = str(tmp_path)
    first = run_shard(plans, root, "r", 0, items)
    assert not any(s["skipped"] for s in first["stages"].values())
    again = run_shard(plans, root, "r", 0, items)
    assert all(s["skipped"] for s in again["stages"].values())
    assert {n: s["hash"] for n, s in again["stages"].items()} == {n: s["hash"] for n, s in first["stages"].items()}
    # another regions config: regions and what reads it are redone, classify and relevancy reused
    changed = plans[:2] + [StagePlan("regions", RegionsConfig(SegmentConfig(top_k=1))), plans[3]]
    third = run_shard(changed, root, "r", 0, items)
    assert [n for n, s in third["stages"].items() if not s["skipped"]] == ["regions", "captions"]
    # a killed run: relevancy's output lost -> relevancy and everything after it redone, classify reused
    (tmp_path / "relevancy" / "run=r" / "shard-00000.parquet").unlink()
    fourth = run_shard(changed, root, "r", 0, items)
    assert [n for n, s in fourth["stages"].items() if not s["skipped"]] == ["relevancy"]
    assert fourth["stages"]["regions"]["skipped"]  # same inputs and config: its files are still valid


def test_every_stage_writes_its_failures_file_and_config_as_data(setup, tmp_path):
    items, plans = setup
    root = str(tmp_path)
    run_shard(plans, root, "r", 2, items, force=True)
    for sp in plans:
        suffix = "-retrieval" if sp.name == "captions" else ""
        assert pq.read_metadata(table_path(root, "failures", "r", f"shard-00002{suffix}-{sp.name}"))
        table = {"classify": "predictions", "relevancy": "relevancy", "regions": "regions",
                 "captions": "captions"}[sp.name]
        assert stored_config(root, table, "r", f"shard-00002{suffix}") == sp.config  # round trip
    meta = pq.read_schema(table_path(root, "relevancy", "r", "shard-00002")).metadata
    doc = json.loads(meta[b"mapcap.config"])
    assert doc["stage"] == "relevancy" and doc["config"]["variants"] == [["chefer", 0]]


def test_config_json_round_trip_of_nested_configs(setup):
    _, plans = setup
    for sp in plans:
        cls = type(sp.config)
        assert config_from_json(cls, config_json(sp.config)) == sp.config
    with pytest.raises(ValueError, match="(?s)stored ReportConfig does not fit.*colour"):
        config_from_json(ReportConfig, '{"explained": 3, "colour": "red"}')


def test_run_stage_skips_when_complete_and_redoes_after_upstream_change(setup, tmp_path):
    items, plans = setup
    root = str(tmp_path)
    shard = run_shard(plans[:1], root, "r", 0, items)
    write_table(root, "runs", "r", "run", [{"run_id": "r", "status": "finished"}])  # what the flow records
    rep = StagePlan("report", ReportConfig(explained=2, sampled=2))
    first = run_run_stage(rep, root, "r", [shard], {})
    assert not first["skipped"] and (tmp_path / "reports" / "r.html").exists()
    assert run_run_stage(rep, root, "r", [shard], {})["skipped"]
    (tmp_path / "reports" / "r.html").unlink()
    assert not run_run_stage(rep, root, "r", [shard], {})["skipped"]  # its file is gone: redone
    other = run_shard([StagePlan("classify", ClassifyConfig(**{**plans[0].config.__dict__, "top_k": 2}))], root,
                      "r", 0, items)
    assert not run_run_stage(rep, root, "r", [other], {})["skipped"]


def test_only_errors_that_can_pass_are_retried():
    import torch
    assert is_transient(OSError("disk")) and is_transient(TimeoutError()) and is_transient(ConnectionError())
    assert is_transient(torch.cuda.OutOfMemoryError("oom"))
    assert not is_transient(ValueError("unknown relevancy method")) and not is_transient(KeyError("x"))


def test_stage_modules_register_themselves():
    STAGES.load()
    assert set(STAGES) >= {"classify", "relevancy", "regions", "concepts", "captions", "evaluate", "summarize",
                           "report"}


def test_a_deferred_stage_runs_in_a_second_pass_after_a_first_report(toy_dir):
    """faithfulness is deferred: the first pass runs the other shard stages and the run stages that do not need
    it (the report among them); the second runs everything, forcing only the deferred stage."""
    from mapcap.tasks.pipeline.params import ExplainParams
    from mapcap.tasks.pipeline.planning import passes
    from mapcap.tasks.pipeline.tasks import merged

    first, second = passes(ExplainParams(dataset=str(toy_dir), device="cpu").resolve())
    assert "faithfulness" not in [sp.name for sp in first[0]] and "report" in [sp.name for sp in first[1]]
    assert "evaluate" not in [sp.name for sp in first[1]] and first[2] == frozenset()
    assert "faithfulness" in [sp.name for sp in second[0]] and second[2] == frozenset({"faithfulness"})
    assert [sp.name for sp in second[1]][-1] == "report"
    one = {"shard": 0, "stages": {"classify": {"skipped": False, "seconds": 2.0}}}
    two = {"shard": 0, "stages": {"classify": {"skipped": True, "seconds": 0.0},
                                  "faithfulness": {"skipped": False, "seconds": 5.0}}}
    assert merged(one, two)["stages"] == {"classify": {"skipped": False, "seconds": 2.0},
                                          "faithfulness": {"skipped": False, "seconds": 5.0}}
    only = passes(ExplainParams(dataset=str(toy_dir), device="cpu", stages=["classify", "relevancy"]).resolve())
    assert len(only) == 1
