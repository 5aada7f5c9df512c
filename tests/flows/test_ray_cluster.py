"""A real multi-node Ray: a head and a second node started as separate processes (`ray start --head`,
`ray start --address=...`), `mapcap run --ray ADDRESS` spreading shards over both, the same results as the thread
runner. Each node advertises one GPU (a Ray resource: the machine has none, the model runs on the CPU) and each
shard asks for one (`--gpus-per-shard 1`), so Ray runs one shard per node at a time and must use both."""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import numpy as np
import pytest

from mapcap.storage.query import connect, run_sql

BIN = os.path.dirname(sys.executable)
PRED = "SELECT image_id, template, pred, pred_prob FROM predictions ORDER BY image_id, template"
MAPS = "SELECT image_id, target, map FROM relevancy ORDER BY image_id, target"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM the node's process group (`ray start --block` and everything it started), SIGKILL if it lingers."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # its children (gcs_server, raylet, workers) share the group
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """{address, env} of a two-node Ray on this machine; every process it started is stopped after."""
    tmp = tmp_path_factory.mktemp("ray-cluster")
    sessions = tempfile.mkdtemp(prefix="mcray-", dir="/tmp")  # short: Ray's socket paths must fit in 107 bytes
    port = _free_port()
    # a HOME of its own and no inherited RAY_* settings (a local Ray started earlier in this process sets some):
    # no token file or auth mode of another Ray on this machine applies to this cluster. No drain on SIGTERM: a
    # node's handler otherwise waits up to 30 s (RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S, Ray >= 2.60) for its GCS,
    # stopped by the same signal, and the head outlived _stop's grace: 30 s of teardown, then a SIGKILL
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")} | {
        "HOME": str(tmp / "home"), "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled",
        "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0"}
    (tmp / "home").mkdir()
    common = ["--block", "--node-ip-address=127.0.0.1", "--num-cpus=1", "--num-gpus=1", "--disable-usage-stats"]
    procs = []
    try:
        procs.append(subprocess.Popen(
            [f"{BIN}/ray", "start", "--head", f"--port={port}", "--include-dashboard=false",
             f"--temp-dir={sessions}", *common], env=env, stdout=open(tmp / "head.log", "wb"),
            stderr=subprocess.STDOUT, start_new_session=True))
        address = f"127.0.0.1:{port}"
        _wait_nodes(address, env, 1, procs)
        procs.append(subprocess.Popen([f"{BIN}/ray", "start", f"--address={address}", *common], env=env,
                                      stdout=open(tmp / "node.log", "wb"), stderr=subprocess.STDOUT,
                                      start_new_session=True))
        _wait_nodes(address, env, 2, procs)
        yield {"address": address, "env": env}
    finally:
        for proc in reversed(procs):
            _stop(proc)
        shutil.rmtree(sessions, ignore_errors=True)


def _wait_nodes(address: str, env: dict, n: int, procs: list[subprocess.Popen], timeout: float = 120) -> None:
    probe = ("import ray; ray.init(address=%r, logging_level='ERROR'); "
             "print(sum(x['Alive'] for x in ray.nodes()))" % address)
    deadline = time.time() + timeout
    while time.time() < deadline:
        if any(p.poll() is not None for p in procs):
            raise RuntimeError(f"a Ray node exited ({[p.poll() for p in procs]}); see its log")
        out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=60)
        if out.returncode == 0 and out.stdout.strip().splitlines()[-1:] == [str(n)]:
            return
        time.sleep(1)
    raise RuntimeError(f"the Ray cluster at {address} did not reach {n} nodes in {timeout} s")


def test_mapcap_run_on_a_two_node_ray_equals_the_thread_runner(prefect_harness, cluster, toy_dir, thread_run,
                                                               tmp_path):
    from prefect.settings import PREFECT_API_URL

    ray_out = str(tmp_path / "ray")
    common = ["--shard-size", "16", "--device", "cpu", "--stages", "classify", "relevancy"]
    env = cluster["env"] | {"PREFECT_API_URL": PREFECT_API_URL.value()}
    proc = subprocess.run([f"{BIN}/mapcap", "run", str(toy_dir), "--ray", cluster["address"], "--out", ray_out,
                           "--run-name", "r", "--gpus-per-shard", "1", *common], env=env, capture_output=True,
                          text=True, timeout=480)
    assert proc.returncode == 0, proc.stderr[-3000:]
    on_ray, on_threads = connect(ray_out), connect(thread_run)
    run = run_sql(on_ray, "SELECT n_shards, nodes, params_json FROM runs").to_pylist()[0]
    assert run["n_shards"] == 3 and len(run["nodes"]) == 2  # both nodes ran shards
    assert json.loads(run["params_json"])["gpus_per_shard"] == 1
    a, b = run_sql(on_ray, PRED).to_pylist(), run_sql(on_threads, PRED).to_pylist()
    assert [(r["image_id"], r["template"], r["pred"]) for r in a] == [(r["image_id"], r["template"], r["pred"])
                                                                      for r in b]
    assert np.allclose([r["pred_prob"] for r in a], [r["pred_prob"] for r in b], atol=1e-4)
    ma, mb = run_sql(on_ray, MAPS).to_pylist(), run_sql(on_threads, MAPS).to_pylist()
    assert len(ma) == len(mb) == 48 * 2
    assert np.allclose([r["map"] for r in ma], [r["map"] for r in mb], rtol=1e-3, atol=1e-5)
