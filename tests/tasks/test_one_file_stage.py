"""A stage with settings is one file: written here, named in MAPCAP_PLUGINS, it shows in `mapcap run --help`, in
the Prefect form of the explain flow, takes its old flat name, and runs (its rows land in `evaluations`)."""
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image

STAGE = textwrap.dedent('''
    """A user's stage in one file: each shard's mean brightness, times a gain."""
    from typing import Any

    import numpy as np
    from pydantic import Field

    from mapcap.tasks.pipeline.base import Section, Stage, register_stage
    from mapcap.tasks.provenance import frozen_config


    class BrightnessParams(Section):
        """image brightness"""

        gain: float = Field(1.0, gt=0, description="multiplies every brightness")


    @frozen_config
    class BrightnessConfig:
        gain: float = 1.0


    @register_stage("brightness", BrightnessConfig, reads=("images",), writes=("evaluations",),
                    settings=BrightnessParams, old_names={"brightness_gain": "gain"})
    class Brightness(Stage):
        def plan(self, params: Any, facts) -> BrightnessConfig:
            return BrightnessConfig(gain=params.brightness.gain)

        def compute(self, cfg: BrightnessConfig, ctx) -> dict:
            refs = {r["image_id"]: r["path"] for r in ctx.table("images")}
            images = ctx.images(refs)
            values = [float(np.asarray(im.convert("L")).mean()) / 255 for im in images.values()]
            return {"evaluations": [{"run_id": ctx.run_id, "method": None, "start_layer": None,
                                     "metric": "brightness", "value": cfg.gain * float(np.mean(values)),
                                     "n": len(values), "captioner": None}]}
''')

PROBE = textwrap.dedent('''
    import contextlib, io, json, sys
    from mapcap.cli.main import main
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
        main(["run", "--help-all"])
    from prefect.utilities.callables import parameter_schema
    from mapcap.flows.explain import explain
    from mapcap.tasks.pipeline.params import ExplainParams
    schema = parameter_schema(explain).model_dump_for_openapi()
    old = ExplainParams.model_validate({"brightness_gain": 3}).brightness.gain
    rc = main(["run", sys.argv[1], "--out", sys.argv[2], "--run-name", "b", "--device", "cpu",
               "--stages", "classify", "brightness", "--brightness.gain", "2"])
    print(json.dumps({"help": out.getvalue(), "schema": schema, "old": old, "rc": rc}))
''')


@pytest.fixture(scope="module")
def probe(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("one-file-stage")
    (tmp / "brightness_stage.py").write_text(STAGE)
    data = tmp / "data"
    for cls, grey in (("star", 40), ("ring", 200)):
        (data / cls).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(np.full((32, 32, 3), grey + 10 * i, np.uint8)).save(data / cls / f"{i}.png")
    env = dict(os.environ, PYTHONPATH=str(tmp), MAPCAP_PLUGINS="brightness_stage",
               PREFECT_HOME=str(tmp / "prefect"), PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="300")
    env.pop("PREFECT_API_URL", None)
    done = subprocess.run([sys.executable, "-c", PROBE, str(data), str(tmp / "out")], env=env, cwd=tmp,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1]), str(tmp / "out")


def test_the_stage_is_in_the_cli_help(probe):
    help_text = probe[0]["help"]
    assert "brightness stage" in help_text and "--brightness.gain" in help_text
    assert "multiplies every brightness" in help_text


def test_the_stage_is_in_the_prefect_form(probe):
    schema = probe[0]["schema"]
    params = schema["properties"]["params"]
    ref = params.get("$ref") or params["allOf"][0]["$ref"]
    model = schema["definitions"][ref.split("/")[-1]]
    section = model["properties"]["brightness"]
    target = schema["definitions"][(section.get("$ref") or section["allOf"][0]["$ref"]).split("/")[-1]]
    assert target["properties"]["gain"]["description"] == "multiplies every brightness"
    assert "brightness" in model["properties"]["stages"]["anyOf"][0]["items"]["enum"]


def test_the_old_flat_name_still_works(probe):
    assert probe[0]["old"] == 3


def test_the_stage_runs_with_its_setting(probe):
    from mapcap.storage.writer import read_run

    result, out = probe
    assert result["rc"] == 0
    rows = [r for r in read_run(out, "evaluations", "b").to_pylist() if r["metric"] == "brightness"]
    assert sum(r["n"] for r in rows) == 4
    means = {round(r["value"], 4) for r in rows}
    want = 2 * np.mean([40, 50, 200, 210]) / 255
    # one row per shard: the image-weighted mean of the shards' means is the run's mean brightness × gain
    assert abs(sum(r["value"] * r["n"] for r in rows) / 4 - want) < 1e-4, means
