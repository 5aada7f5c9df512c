"""The flow tests' shared runs: a toy run with mistakes to browse and the explorer serving it on loopback; the
thread-runner reference of the Ray and S3 tests."""
from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass

import httpx
import pytest

from mapcap.flows.explain import ExplainParams, explain

TOKEN = "test-token-0123456789"
PROXY_HOST = "explorer.test"  # served through --allow-host, as behind a proxy
UPLOAD_MB = 1.0  # small, so that the oversize tests send little


@dataclass(frozen=True)
class Explorer:
    url: str
    token: str
    proxy_host: str = PROXY_HOST
    upload_mb: float = UPLOAD_MB

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


@pytest.fixture(scope="session")
def toy_run(prefect_harness, tmp_path_factory) -> str:
    """A run with mistakes to browse: 9 in 10 toy images carry a distractor shape."""
    from mapcap.toy.dataset import SHAPES, write_toy_dataset
    data = tmp_path_factory.mktemp("explorer-data") / "data"
    write_toy_dataset(data, n_per_class=3, seed=4321, distractor_rate={s: 0.9 for s in SHAPES})
    out = str(tmp_path_factory.mktemp("explorer-results"))
    explain(ExplainParams(dataset=str(data), out=out, shard_size=12, run_name="ex", device="cpu",
                          stages=["classify", "relevancy", "regions", "concepts", "captions", "summarize"]))
    return out


@pytest.fixture(scope="session")
def thread_run(prefect_harness, toy_dir, tmp_path_factory) -> str:
    """The results root of classify, relevancy (chefer) and regions over the toy split on the thread runner and a
    local folder, run 'r': the reference the Ray and S3 tests compare with (one run, not one per test)."""
    out = str(tmp_path_factory.mktemp("thread-run"))
    explain(ExplainParams(dataset=str(toy_dir), out=out, run_name="r", shard_size=16, device="cpu",
                          stages=["classify", "relevancy", "regions"], relevancy={"methods": ["chefer"]}))
    return out


@pytest.fixture(scope="session")
def explorer(toy_run):
    """`make_app` under uvicorn on a free loopback port, in a thread, as `mapcap explorer` serves it."""
    import uvicorn

    from mapcap.explorer.app import make_app
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = make_app(toy_run, TOKEN, allow_hosts=(PROXY_HOST,), max_upload_mb=UPLOAD_MB)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            httpx.get(base, timeout=1)
            break
        except httpx.HTTPError:
            time.sleep(0.1)
    yield Explorer(base, TOKEN)
    server.should_exit = True
    thread.join(timeout=10)
