"""The explorer against a hostile caller, over HTTP on loopback: foreign hosts, missing tokens, files outside
the runs, oversized and cross-site requests (explorer/guard.py)."""
from __future__ import annotations

import base64
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from mapcap.explorer.guard import allowed_folders
from mapcap.storage.query import connect, run_sql


@pytest.fixture(scope="module")
def dataset(toy_run) -> Path:
    """The toy run's dataset folder, as its `runs` row records it."""
    return Path(run_sql(connect(toy_run), "SELECT dataset FROM runs WHERE run_id = 'ex'").column(0)[0].as_py())


def _explain(explorer, headers: dict | None = None, **image) -> httpx.Response:
    body = {"texts": ["a photo of a star", "a photo of a ring"], **image}
    return httpx.post(f"{explorer.url}/api/explain", json=body, headers=explorer.auth if headers is None else headers,
                      timeout=60)


@pytest.mark.parametrize("host", ["evil.example.com", "evil.example.com:8765", "127.0.0.1.nip.io", "[::2]", ""])
def test_a_foreign_host_is_refused_even_with_the_token(explorer, host):
    for path in ("/", "/api/info"):
        r = httpx.get(f"{explorer.url}{path}", headers={**explorer.auth, "Host": host})
        assert r.status_code == 403, (host, path)
        assert "--allow-host" in r.json()["detail"]


def test_loopback_and_allowed_hosts_are_served(explorer):
    for host in ("localhost", "LOCALHOST:1234", "127.0.0.1", "[::1]:80", explorer.proxy_host):
        r = httpx.get(f"{explorer.url}/api/info", headers={**explorer.auth, "Host": host})
        assert r.status_code == 200 and r.json()["runs"] == ["ex"], host


def test_the_api_needs_the_token_in_a_header(explorer):
    url = f"{explorer.url}/api/info"
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": f"Bearer {explorer.token}x"},
                    {"Authorization": explorer.token}, {"Authorization": "Bearer caf\u00e9".encode("utf-8")}):
        r = httpx.get(url, headers=headers)
        assert r.status_code == 401 and "token" in r.json()["detail"], headers
        assert r.headers["www-authenticate"] == "Bearer"
    assert httpx.get(f"{url}?token={explorer.token}").status_code == 401  # the URL form is for the page only
    assert httpx.get(url, headers=explorer.auth).status_code == 200
    for path in ("/openapi.json", "/favicon.ico", "/api/runs/ex/classes"):
        assert httpx.get(f"{explorer.url}{path}").status_code == 401, path
    page = httpx.get(f"{explorer.url}/")  # the page: static, no data, asks for the token itself
    assert page.status_code == 200 and "sessionStorage" in page.text
    assert httpx.get(f"{explorer.url}/docs", headers=explorer.auth).status_code == 404  # no doc pages


def test_paths_outside_the_runs_are_refused_alike_whether_they_exist_or_not(explorer, dataset, tmp_path):
    outside = tmp_path / "private.png"
    shutil.copy(sorted((dataset / "star").glob("*.png"))[0], outside)
    (dataset / "star" / "escape.png").symlink_to(outside)  # a link inside pointing outside
    try:
        given = [str(outside), str(tmp_path / "missing.png"), "/etc/shadow", "/etc/passwd",
                 str(dataset / ".." / ".." / tmp_path.name / "private.png"), str(dataset / "star" / "escape.png"),
                 f"{dataset}/../{tmp_path.name}/private.png", "relative/../../x.png", "/tmp/\x00.png"]
        details = set()
        for path in given:
            r = _explain(explorer, image_path=path)
            assert r.status_code == 403, (path, r.text)
            details.add(r.json()["detail"].replace(repr(path), "PATH"))
        assert len(details) == 1, details  # one message: nothing about the file itself
        assert "upload the image instead" in details.pop()
    finally:
        (dataset / "star" / "escape.png").unlink()


def test_an_image_of_the_runs_dataset_is_explained(explorer, dataset):
    star = sorted((dataset / "star").glob("*.png"))[0]
    for path in (str(star), str(dataset / "star" / ".." / "star" / star.name)):
        r = _explain(explorer, image_path=path)
        assert r.status_code == 200, r.text
        assert len(r.json()["overlays"]) == 2
    r = _explain(explorer, image_path=str(dataset / "star" / "gone.png"))  # inside: the usual error
    assert r.status_code == 400 and "cannot read" in r.json()["detail"]


def test_oversized_requests_are_refused_with_the_limit(explorer):
    too_big = base64.b64encode(b"\0" * int(1.1 * explorer.upload_mb * 2**20)).decode()  # the body passes, the file not
    r = _explain(explorer, image_b64=too_big)
    assert r.status_code == 413 and f"the limit is {explorer.upload_mb:g} MB" in r.json()["detail"]
    huge = b"x" * int(2 * explorer.upload_mb * 2**20)
    headers = {**explorer.auth, "Content-Type": "application/json"}
    r = httpx.post(f"{explorer.url}/api/explain", content=huge, headers=headers)  # declared length over the cap
    assert r.status_code == 413 and "--max-upload-mb" in r.json()["detail"]
    r = httpx.post(f"{explorer.url}/api/explain", content=(huge[i:i + 65536] for i in range(0, len(huge), 65536)),
                   headers=headers)  # streamed without a length
    assert r.status_code == 413
    r = _explain(explorer, image_b64="AAAA", texts=["x"] * 65)
    assert r.status_code == 422 and "64" in r.text
    r = _explain(explorer, image_b64="AAAA", texts=["x" * 301])
    assert r.status_code == 422 and "300" in r.text
    r = httpx.get(f"{explorer.url}/api/runs/ex/images?limit=100000", headers=explorer.auth)
    assert r.status_code == 422


def test_no_cross_site_writes_and_no_cors(explorer):
    url = f"{explorer.url}/api/reprocess"
    form = httpx.post(url, data={"run": "ex"}, headers=explorer.auth)  # what an HTML form can send
    assert form.status_code == 415 and "JSON only" in form.json()["detail"]
    plain = httpx.post(url, content=b'{"run": "ex"}', headers={**explorer.auth, "Content-Type": "text/plain"})
    assert plain.status_code == 415
    assert httpx.post(url, json={"run": "ex"}).status_code == 401
    evil = {"Origin": "http://evil.example.com"}
    pre = httpx.options(url, headers={**evil, "Access-Control-Request-Method": "POST",
                                      "Access-Control-Request-Headers": "authorization,content-type"})
    got = httpx.get(f"{explorer.url}/api/info", headers={**explorer.auth, **evil})
    assert got.status_code == 200
    for r in (pre, got, form):
        assert not [h for h in r.headers if h.lower().startswith("access-control-")], r.headers


def test_only_local_dataset_folders_count(tmp_path):
    manifest = tmp_path / "m" / "manifest.csv"
    folders = allowed_folders(str(tmp_path / "root"), [str(tmp_path / "data"), str(manifest), "s3://bucket/data",
                                                       "relative/data", f"file://{tmp_path}/other"])
    assert folders == [tmp_path / "root", tmp_path / "data", tmp_path / "m", tmp_path / "other"]
    assert allowed_folders("s3://bucket/results", ["gs://b/d"]) == []


def test_no_token_serves_the_api_without_one_and_warns(toy_run, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    err = tmp_path / "stderr.log"
    with open(err, "w") as log:
        proc = subprocess.Popen([str(Path(sys.executable).parent / "mapcap"), "explorer", "--root", toy_run,
                                 "--port", str(port), "--no-token"], stdout=subprocess.PIPE, stderr=log, text=True)
    try:
        printed = proc.stdout.readline()
        assert f"http://127.0.0.1:{port}/ " in printed and "token" not in printed
        for _ in range(200):
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/api/info", timeout=2)
                break
            except httpx.HTTPError:
                time.sleep(0.1)
        assert r.status_code == 200 and r.json()["runs"] == ["ex"]
        evil = httpx.get(f"http://127.0.0.1:{port}/api/info", headers={"Host": "evil.example.com"})
        assert evil.status_code == 403  # the host check stays
        assert "without a token (--no-token)" in err.read_text()
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_a_zero_upload_limit_is_refused_with_the_fix(capsys):
    from mapcap.cli.main import main
    assert main(["explorer", "--max-upload-mb", "0"]) == 2
    assert "--max-upload-mb 0 must be above 0" in capsys.readouterr().err
