"""Stored configs of earlier runs still load and still match: the configs (hence the hashes that decide whether a
finished shard is reused) that this version resolves for the same parameters are the ones stored before the
stages declared their own settings (tests/data/stored_configs.json, written by the version before)."""
import json
from pathlib import Path

import pytest

from mapcap.tasks.pipeline.base import get_stage
from mapcap.tasks.pipeline.params import ExplainParams
from mapcap.tasks.provenance import config_from_json, config_hash, to_jsonable
from mapcap.toy import TOY_DIR

STORED = json.loads((Path(__file__).resolve().parents[1] / "data" / "stored_configs.json").read_text())


def _here(value, dataset: str):
    """The stored JSON with this machine's paths: the toy dataset's and the toy package's."""
    text = json.dumps(value).replace('"{dataset}"', json.dumps(dataset)).replace('"{toy}/', f'"{TOY_DIR}/')
    return json.loads(text)


@pytest.mark.parametrize("case", sorted(STORED))
def test_resolved_configs_and_hashes_are_the_stored_ones(case):
    stored = STORED[case]
    params = ExplainParams.model_validate(stored["params"])
    resolved = params.resolve()
    plans = {sp.name: sp.config for sp in resolved.shard_stages + resolved.run_stages}
    assert sorted(plans) == sorted(stored["stages"])
    for name, cfg in plans.items():
        want = _here(stored["stages"][name], resolved.plan.dataset)
        assert to_jsonable(cfg) == want, name
        assert config_hash(cfg) == config_hash(want), name  # what the driver compares with a stored file's hash
        loaded = config_from_json(get_stage(name).Config, json.dumps(want))
        assert loaded == cfg and type(loaded) is type(cfg), name


def test_a_stored_config_with_an_unknown_field_is_refused():
    cfg = dict(STORED["default"]["stages"]["report"], colour="red")
    with pytest.raises(ValueError, match="colour"):
        config_from_json(get_stage("report").Config, json.dumps(cfg))
