"""The explorer against hostile files and fields, over HTTP on loopback: a FIFO in a run's dataset, a
decompression bomb (upload and path), `pretrained` paths, start layers out of range, flow runs without an API."""
from __future__ import annotations

import base64
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from tests.flows.test_explorer_security import _explain, dataset  # noqa: F401  (the toy run's dataset folder)
from tests.hostile import bomb_png


def test_a_fifo_is_refused_without_hanging_the_server(explorer, dataset):  # noqa: F811
    fifo = dataset / "star" / "y.jpg"
    os.mkfifo(fifo)
    try:
        t0 = time.monotonic()
        with ThreadPoolExecutor(8) as ex:
            replies = list(ex.map(lambda _: _explain(explorer, image_path=str(fifo)), range(8)))
        assert all(r.status_code == 400 and "FIFO" in r.json()["detail"] for r in replies), replies[0].text
        assert time.monotonic() - t0 < 30
        assert httpx.get(f"{explorer.url}/api/info", headers=explorer.auth, timeout=10).status_code == 200
    finally:
        fifo.unlink()


def test_a_bomb_is_refused_from_its_header(explorer, dataset):  # noqa: F811
    bomb = bomb_png(9000)  # 81 MP declared, 236 KB on disk: over the 64 MP budget
    r = _explain(explorer, image_b64=base64.b64encode(bomb).decode())
    assert r.status_code == 400 and "9000x9000" in r.json()["detail"] and "64 MP" in r.json()["detail"]
    on_disk = dataset / "star" / "bomb.png"
    on_disk.write_bytes(bomb)
    try:
        r = _explain(explorer, image_path=str(on_disk))
        assert r.status_code == 400 and "pixel budget" in r.json()["detail"]
    finally:
        on_disk.unlink()


def test_pretrained_is_a_tag_or_a_checkpoint_in_an_allowed_folder(explorer, dataset, tmp_path):  # noqa: F811
    star = str(sorted((dataset / "star").glob("*.png"))[0])
    exists = tmp_path / "weights.pt"
    exists.write_bytes(b"not a checkpoint")
    details = set()
    for given in ("/etc/shadow", "/root/nope.pt", str(exists), str(tmp_path / "missing.pt"), "../../etc/passwd"):
        r = _explain(explorer, image_path=star, pretrained=given)
        assert r.status_code == 403, (given, r.text)
        details.add(r.json()["detail"].replace(repr(given), "PATH"))
    assert len(details) == 1 and "--allow-weights" in details.pop()  # one answer: nothing about the file
    inside = Path(explorer_root(explorer)) / "missing.pt"  # inside the results root: allowed, then checked
    r = _explain(explorer, image_path=star, pretrained=str(inside))
    assert r.status_code == 422 and "neither a local checkpoint file" in r.json()["detail"]
    assert _explain(explorer, image_path=star, pretrained="toy").status_code == 200


def explorer_root(explorer) -> str:
    return httpx.get(f"{explorer.url}/api/info", headers=explorer.auth).json()["root"]


def test_fields_are_checked_against_the_model(explorer, dataset):  # noqa: F811
    star = str(sorted((dataset / "star").glob("*.png"))[0])
    for layer in (-100, 4, 99):
        r = _explain(explorer, image_path=star, start_layer=layer)
        assert r.status_code == 422 and "0..3" in r.json()["detail"] and "-4..-1" in r.json()["detail"], r.text
    r = _explain(explorer, image_path=star, method="nope")
    assert r.status_code == 422 and "chefer" in r.json()["detail"]
    r = _explain(explorer, image_path=star, model="nope-model")
    assert r.status_code == 422 and "unknown open_clip model" in r.json()["detail"]
    assert _explain(explorer, image_path=star, start_layer=-4).status_code == 200


def test_flow_runs_answer_409_without_a_prefect_api(explorer, monkeypatch):
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    t0 = time.monotonic()
    r = httpx.get(f"{explorer.url}/api/flow-runs/00000000-0000-0000-0000-000000000000", headers=explorer.auth)
    assert r.status_code == 409 and "PREFECT_API_URL" in r.json()["detail"]
    assert time.monotonic() - t0 < 5  # no temporary server was started to answer
