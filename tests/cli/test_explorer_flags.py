"""`mapcap explorer --max-pixels N --max-file-mb M`: the per-image decode limits reach the explorer's app (whose
refusals name these flags), and a value that cannot be a limit is refused with the fix."""
import base64

import pytest
from fastapi.testclient import TestClient

from mapcap.cli.main import main
from mapcap.explorer.app import make_app
from mapcap.tasks.limits import DEFAULT_LIMITS, DecodeLimits
from tests.hostile import bomb_png


def served_limits(monkeypatch, *flags: str) -> DecodeLimits:
    import mapcap.explorer.app

    got = {}
    monkeypatch.setattr(mapcap.explorer.app, "serve_explorer", lambda *a, **kw: got.update(kw))
    assert main(["explorer", "--port", "1", *flags]) == 0
    return got["decode"]


def test_the_flags_reach_the_explorer_and_default_to_a_runs_limits(monkeypatch, capsys):
    assert served_limits(monkeypatch) == DEFAULT_LIMITS
    assert served_limits(monkeypatch, "--max-pixels", "1000", "--max-file-mb", "0.5") == DecodeLimits(1000, 0.5)


@pytest.mark.parametrize("flags, said", [
    (["--max-pixels", "0"], "--max-pixels 0 must be at least 1 (default 64000000)"),
    (["--max-file-mb", "-1"], "--max-file-mb -1 must be above 0 (default 256)"),
])
def test_a_limit_that_cannot_be_one_is_refused_with_the_fix(capsys, flags, said):
    assert main(["explorer", *flags]) == 2
    assert said in capsys.readouterr().err


def test_the_apps_decode_limits_refuse_an_image_over_them(tmp_path):
    png = bomb_png(40)  # 1,600 pixels declared
    app = make_app(str(tmp_path), "t" * 32, allow_hosts=("testserver",), decode=DecodeLimits(max_pixels=1000))
    with TestClient(app) as client:
        r = client.post("/api/explain", json={"image_b64": base64.b64encode(png).decode(), "texts": ["star"]},
                        headers={"Authorization": f"Bearer {'t' * 32}"})
    assert r.status_code == 400, r.text
    assert "40x40" in r.json()["detail"] and "--max-pixels raises it" in r.json()["detail"]
