"""The one parameter model: every field reachable from the CLI, params files, old flat names, planning checks."""
import json
import typing

import pytest
from pydantic import BaseModel

from mapcap.cli.commands import build_parser
from mapcap.cli.flag_table import build_table
from mapcap.cli.flags import params_from_args
from mapcap.tasks.pipeline.params import FLAT_NAMES, SECTIONS, ExplainParams

SAMPLES = {  # a non-default value per field where the type alone does not say which
    "dataset": "/data/photos", "stages": ["classify", "relevancy"], "redo_classes": ["star"],
    "relevancy.methods": ["gradient", "random"], "relevancy.start_layers": [0, -1],
    "classify.templates": ["a {} here", "one {}"], "summarize.synonyms": {"star": ["pentagram"]},
    "regions.mass": 0.25, "regions.min_area": 0.25, "precision": "bf16", "regions.threshold": "mass",
    "evaluate.base": "mean", "evaluate.deletion": "black", "evaluate.insertion": "mean",
}

TABLE = build_table()  # the flags as the model says (the shipped table is checked against it elsewhere)


def sample(dotted: str, field) -> tuple[list[str], object]:
    """(command-line values, the value the model should hold) for one field."""
    if dotted in SAMPLES:
        v = SAMPLES[dotted]
        args = [json.dumps(v)] if isinstance(v, dict) else [str(x) for x in v] if isinstance(v, list) else [str(v)]
        return args, v
    tp = field.annotation
    if typing.get_origin(tp) in (typing.Union, getattr(__import__("types"), "UnionType")):
        tp = next(a for a in typing.get_args(tp) if a is not type(None))
    if tp is bool:
        return [], not field.default
    if tp is int:
        return [str((field.default or 0) + 2)], (field.default or 0) + 2
    if tp is float:
        return ["0.75"], 0.75
    return ["some-value"], "some-value"


def every_field():
    for name, field in ExplainParams.model_fields.items():
        if name not in SECTIONS:
            yield name, field
    for section, model in SECTIONS.items():
        for name, field in model.model_fields.items():
            yield f"{section}.{name}", field


def get(params: ExplainParams, dotted: str):
    obj = params
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


@pytest.mark.parametrize("dotted", [d for d, _ in every_field()])
def test_every_field_is_settable_from_the_command_line(dotted):
    field = dict(every_field())[dotted]
    values, expected = sample(dotted, field)
    parser = build_parser(TABLE)
    if dotted == "dataset":
        argv = ["run", *values]
    else:
        flag = f"--{dotted}" if "." in dotted else f"--{dotted.replace('_', '-')}"
        if field.annotation is bool:
            flag = flag if expected else f"--{'no-' + dotted.replace('_', '-')}"
        argv = ["run", "somewhere", flag, *values]
    params = params_from_args(parser.parse_args(argv), TABLE)
    assert get(params, dotted) == expected
    if "." in dotted:  # the prefixed spelling too
        section, name = dotted.split(".")
        argv = ["run", "somewhere", f"--{section}-{name.replace('_', '-')}", *values] if field.annotation is not bool \
            else ["run", "somewhere", f"--{'' if expected else 'no-'}{section}-{name.replace('_', '-')}"]
        assert get(params_from_args(build_parser(TABLE).parse_args(argv), TABLE), dotted) == expected


def test_help_all_shows_every_field_description(capsys):
    with pytest.raises(SystemExit):
        build_parser(TABLE, show_all=True).parse_args(["run", "--help-all"])
    text = " ".join(capsys.readouterr().out.split())
    for dotted, field in every_field():
        assert " ".join(field.description.split()[:4]) in text, dotted
    assert "--captions.prompt" in text


def test_params_file_yaml_and_json_with_flags_on_top(tmp_path):
    yml = tmp_path / "run.yaml"
    yml.write_text("dataset: /data/photos\nrelevancy:\n  methods: [gradient]\ncaptions:\n  prompt: a picture of\n"
                   "caption_beams: 3\n")  # an old flat name in a file still works
    p = params_from_args(build_parser(TABLE).parse_args(["run", "--params", str(yml), "--captions.top-k", "2"]), TABLE)
    assert (p.dataset, p.relevancy.methods, p.captions.prompt, p.captions.beams, p.captions.top_k) == (
        "/data/photos", ["gradient"], "a picture of", 3, 2)
    js = tmp_path / "run.json"
    js.write_text(json.dumps({"params": {"regions": {"top_k": 5}, "run_name": "x"}}))  # a deployment's shape
    p = params_from_args(build_parser(TABLE).parse_args(["run", "--params", str(js)]), TABLE)
    assert p.regions.top_k == 5 and p.run_name == "x"
    js.write_text('{"regions": {"top_k": "many"}}')
    with pytest.raises(ValueError, match="top_k"):
        params_from_args(build_parser(TABLE).parse_args(["run", "--params", str(js)]), TABLE)
    bad = tmp_path / "bad.yaml"
    bad.write_text("- just\n- a list\n")
    with pytest.raises(ValueError, match="must hold a mapping"):
        params_from_args(build_parser(TABLE).parse_args(["run", "--params", str(bad)]), TABLE)


def test_old_flat_names_move_to_their_sections():
    old = {"dataset": "toy", "top_k": 3, "batch_size": 16, "relevancy_methods": ["chefer"], "start_layers": [0],
           "segment_top_k": 2, "captioner": "clipcap", "caption_prompt": "x", "concept_bank": "b.json",
           "descriptors": "d.json", "eval_images": 9, "summary_k": 4, "synonyms": {"star": ["p"]}}
    p = ExplainParams.model_validate(old)
    assert (p.classify.top_k, p.classify.batch_size, p.relevancy.batch_size, p.relevancy.methods) == (3, 16, 16,
                                                                                                       ["chefer"])
    assert (p.regions.top_k, p.captions.captioner, p.captions.prompt, p.captions.phrase_bank) == (2, "clipcap", "x",
                                                                                                  "b.json")
    assert (p.concepts.descriptors, p.evaluate.images, p.summarize.k) == ("d.json", 9, 4)
    assert set(FLAT_NAMES) >= {"segment_threshold", "caption_context", "language_top_k"}
    with pytest.raises(ValueError, match="colour"):
        ExplainParams.model_validate({"colour": "red"})


def test_the_ui_form_is_nested_by_stage():
    schema = ExplainParams.model_json_schema()
    for section, model in SECTIONS.items():
        assert section in schema["properties"]
        assert issubclass(model, BaseModel)
    assert set(schema["$defs"]["RelevancyParams"]["properties"]) == {"methods", "start_layers", "batch_size"}


def test_planning_skips_what_a_run_lacks_and_fails_what_was_asked_for(tmp_path, toy_dir):
    photos = ExplainParams(dataset=str(toy_dir), model="ViT-B-32", pretrained="", device="cpu", evaluate={"images": 8})
    r = photos.resolve()
    skipped = dict(r.skipped)
    assert [s.name for s in r.shard_stages] == ["classify", "relevancy", "regions", "captions", "faithfulness"]
    assert set(skipped) == {"concepts", "classify.descriptions"}
    assert "concepts.descriptors" in skipped["concepts"]
    assert [s.name for s in r.run_stages] == ["caption_quality", "evaluate", "summarize", "report"]
    # without a phrase bank of its own, a real CLIP's regions are named from the general bank and the run's classes
    cap = next(s for s in r.shard_stages if s.name == "captions").config.captioner
    assert (cap.concept_bank, set(cap.classes)) == ("general", {p.name for p in toy_dir.iterdir() if p.is_dir()})
    with pytest.raises(ValueError, match="stage 'concepts' was asked for but cannot run: no concept bank"):
        photos.model_copy(update={"stages": ["classify", "relevancy", "regions", "concepts"]}).resolve()
    r = ExplainParams(dataset=str(toy_dir), relevancy={"methods": ["gradient", "chefer"]}).resolve()
    cap = next(s for s in r.shard_stages if s.name == "captions").config
    assert (cap.method, cap.start_layer) == ("gradient", None)  # the primary method is the first listed
    for s in r.shard_stages + r.run_stages:  # ... and every stage that reads maps uses it
        if hasattr(s.config, "method"):
            assert s.config.method == "gradient", s.name


def test_unset_batch_sizes_follow_the_device(toy_dir):
    from mapcap.tasks.pipeline.plan import default_batch
    assert default_batch("cuda:1", 64, 256) == 256 and default_batch("cpu", 64, 256) == 64
    cfg = {s.name: s.config for s in ExplainParams(dataset=str(toy_dir), device="cpu").resolve().shard_stages}
    assert (cfg["classify"].batch_size, cfg["relevancy"].batch_size, cfg["captions"].captioner.batch_size) == (64, 64,
                                                                                                            32)
    set_ = ExplainParams(dataset=str(toy_dir), device="cpu", classify={"batch_size": 8}, relevancy={"batch_size": 4},
                         captions={"batch_size": 5}).resolve()
    cfg = {s.name: s.config for s in set_.shard_stages}
    assert (cfg["classify"].batch_size, cfg["relevancy"].batch_size, cfg["captions"].captioner.batch_size) == (8, 4, 5)


def test_the_evaluation_sample_follows_the_models_cost_off_a_gpu(toy_dir):
    from types import SimpleNamespace

    from mapcap.tasks.cost import EVAL_IMAGES, default_eval_images
    from mapcap.tasks.pipeline.plan import RANDOM_WEIGHTS

    def planned(**kw):
        r = ExplainParams(dataset=str(toy_dir), device="cpu", **kw).resolve()
        return {s.name: s.config for s in r.shard_stages}["faithfulness"].sample, r.notes

    # 48 images; 6 methods × (17 perturbed + 2 × 15 RISE steps + 3) = 300 forwards of 5.9 GFLOP each, against
    # 11 per image for the rest of the run: even 4 images would cost more than the run, so the stage is left out
    r = ExplainParams(dataset=str(toy_dir), device="cpu", model="ViT-B-32", pretrained="").resolve()
    why = dict(r.skipped)["faithfulness"]
    assert "would cost" in why and "the rest of this run" in why and "--evaluate.images 4" in why
    assert "evaluate" in dict(r.skipped) and "faithfulness" not in {s.name for s in r.shard_stages}
    # a run 12× larger affords a sample that costs what the rest of the run does, said in a note
    from mapcap.tasks.models import load_model
    n, note = default_eval_images(load_model(r.plan.model), 6, 16, n_images=600, n_maps=1)
    assert 4 <= n < 64 and "costs no more than the rest of the run" in note and "--evaluate.images" in note
    assert planned(model="ViT-B-32", pretrained="", evaluate={"images": 64}) == (1.0, (RANDOM_WEIGHTS,))  # as asked
    assert planned() == (1.0, ())  # the toy CLIP keeps the full sample
    assert default_eval_images(SimpleNamespace(spec=SimpleNamespace(device="cuda:0")), 4) == (EVAL_IMAGES, None)


def test_caption_quality_runs_where_the_dataset_has_reference_captions(tmp_path, toy_dir):
    import shutil
    r = ExplainParams(dataset=str(toy_dir)).resolve()
    cq = next(s for s in r.run_stages if s.name == "caption_quality").config
    assert cq.dataset == str(toy_dir) and (cq.method, cq.start_layer) == ("chefer", 0)
    folder = tmp_path / "no-refs"
    shutil.copytree(toy_dir, folder, ignore=shutil.ignore_patterns("manifest.parquet"))
    skipped = dict(ExplainParams(dataset=str(folder)).resolve().skipped)
    assert "has no reference captions" in skipped["caption_quality"]
    with pytest.raises(ValueError, match="stage 'caption_quality' was asked for but cannot run"):
        ExplainParams(dataset=str(folder), stages=["classify", "relevancy", "regions", "captions",
                                                   "caption_quality"]).resolve()


def test_the_temporary_prefect_api_starts_early_only_for_flow_commands(prefect_harness, monkeypatch):
    """`mapcap run` starts Prefect's temporary server while it imports; other commands, help, and runs against a
    configured server (here the test harness's) start nothing."""
    import threading

    from mapcap.cli.startup import start_prefect_api_early
    before = {t.name for t in threading.enumerate()}
    for argv in (["sql", "--root", "x", "SELECT 1"], ["run", "--help"], ["demo", "-h"], ["run", "data"]):
        start_prefect_api_early(argv)()
    assert "mapcap-prefect-api" not in {t.name for t in threading.enumerate()} - before

    import mapcap.cli.startup as startup
    calls = []

    class Server:  # Prefect's temporary server, recorded instead of started
        address = "http://127.0.0.1:1"

        def start(self):
            from prefect.settings import get_current_settings
            calls.append(f"start, analytics {get_current_settings().server.analytics_enabled}")

    monkeypatch.setattr("prefect.server.api.server.SubprocessASGIServer", Server)
    from prefect.settings import PREFECT_API_URL, temporary_settings
    with temporary_settings({PREFECT_API_URL: None}):
        startup.start_prefect_api_early(["--debug", "run", "data"])()
    assert calls == ["start, analytics False"]  # a server for one command does not phone home


def test_runs_on_the_temporary_server_send_no_heartbeats_and_no_analytics(prefect_harness):
    from prefect.settings import PREFECT_API_URL, get_current_settings, temporary_settings

    from mapcap.cli.startup import flow_settings
    every = get_current_settings().flows.heartbeat_frequency
    assert every and PREFECT_API_URL.value()  # the harness's server: a real one, heartbeats kept
    with flow_settings():
        assert get_current_settings().flows.heartbeat_frequency == every
    with temporary_settings(updates={PREFECT_API_URL: None}):  # no server configured: the temporary one
        with flow_settings():
            assert get_current_settings().flows.heartbeat_frequency is None
            assert get_current_settings().server.analytics_enabled is False  # nor analytics
        assert get_current_settings().flows.heartbeat_frequency == every


def test_gpu_runs_take_a_gpu_concurrency_slot_only_where_a_limit_is_set(prefect_harness):
    """Shard tasks of a GPU run carry the tag (one slot request per start) once `prefect concurrency-limit create
    mapcap-gpu 1` made a limit; never on CPU."""
    from prefect.client.orchestration import get_client

    from mapcap.tasks.pipeline.tasks import GPU_TAG, gpu_limit_set, shard_task_on
    assert not gpu_limit_set() and not shard_task_on("cuda").tags
    with get_client(sync_client=True) as client:
        client.create_concurrency_limit(tag=GPU_TAG, concurrency_limit=1)  # what the README's command does
        try:
            assert gpu_limit_set()
            assert set(shard_task_on("cuda").tags) == set(shard_task_on("cuda:1").tags) == {GPU_TAG}
            assert not shard_task_on("cpu").tags and shard_task_on("cpu").name == shard_task_on("cuda").name
        finally:
            client.delete_concurrency_limit_by_tag(GPU_TAG)
    assert not gpu_limit_set()


def test_query_commands_start_without_the_model_libraries(tmp_path):
    """`mapcap sql` and the ready queries build a parser without the flow's flags: torch, open_clip and Prefect
    are not imported (a query answers in a second, not after seconds of imports); `run` still has every flag."""
    import subprocess
    import sys

    code = ("import sys; from mapcap.cli.main import main; "
            f"rc = main(['sql', '--root', {str(tmp_path)!r}, 'SELECT 42 AS answer']); "
            "print(rc, sorted(m for m in ('torch', 'open_clip', 'prefect') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "42" in out and out.strip().splitlines()[-1] == "0 []"
    from mapcap.cli.commands import build_parser
    run = build_parser(TABLE).parse_args(["run", "data", "--shard-size", "64", "--regions.top-k", "2"])
    assert (run.dataset, run.shard_size) == ("data", 64)
