"""A real S3 root: an S3 API server on loopback (moto in server mode) and `--out s3://bucket/...` through
fsspec/s3fs: writes, resume after SIGKILL, DuckDB queries (DuckDB reads through fsspec) and compaction."""
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from mapcap.flows.explain import ExplainParams, explain
from mapcap.storage.compact import compact_run
from mapcap.storage.query import connect, named_query, run_sql
from mapcap.storage.writer import check_root, filesystem

ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
COUNTS = """SELECT count(*) AS n, count(DISTINCT image_id) AS ids FROM predictions
            WHERE run_id = ? AND template = 'ensemble'"""


def _stop(proc: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=20)


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """moto's S3 server on a free loopback port, this process's AWS settings pointed at it; stopped after."""
    import s3fs

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = open(tmp_path_factory.mktemp("moto") / "moto.log", "wb")
    proc = subprocess.Popen([os.path.join(os.path.dirname(sys.executable), "moto_server"), "-H", "127.0.0.1",
                             "-p", str(port)], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    env = ENV | {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        deadline = time.time() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.time() > deadline or proc.poll() is not None:
                    raise RuntimeError(f"moto_server did not start on port {port} (exit {proc.poll()})")
                time.sleep(0.2)
        s3fs.S3FileSystem.clear_instance_cache()
        s3fs.S3FileSystem().mkdir("mapcap-test")
        yield env
    finally:
        _stop(proc)
        log.close()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        s3fs.S3FileSystem.clear_instance_cache()


def test_a_run_on_s3_queries_and_compacts(prefect_harness, s3, toy_dir, thread_run):
    root = "s3://mapcap-test/runs"
    params = dict(dataset=str(toy_dir), shard_size=16, device="cpu", stages=["classify", "relevancy", "regions"],
                  relevancy={"methods": ["chefer"]})
    result = explain(ExplainParams(out=root, run_name="s3", **params))
    assert result["n_images"] == 48 and result["shards_done"] == 3
    on_s3, local = connect(root), connect(thread_run)  # the same run on a local folder
    assert run_sql(on_s3, COUNTS, ["s3"]).to_pylist() == [{"n": 48, "ids": 48}]
    classes = named_query(on_s3, "per_class_accuracy", "s3").to_pylist()
    assert classes == named_query(local, "per_class_accuracy", "r").to_pylist()
    maps = "SELECT image_id, target, map FROM relevancy ORDER BY ALL"
    before = run_sql(on_s3, maps).to_pylist()
    assert len(before) == 96
    done = compact_run(root, "s3")
    assert done["predictions"] == (3, 1)
    fs, base = filesystem(root)
    assert [p.rsplit("/", 1)[1][:8] for p in fs.ls(f"{base}/predictions/run=s3")] == ["compact-", "compact-"]
    again = connect(root)
    assert named_query(again, "per_class_accuracy", "s3").to_pylist() == classes
    assert run_sql(again, maps).to_pylist() == before
    ok, bad = check_root(root)
    assert ok > 0 and not bad


def test_sigkill_mid_run_on_s3_then_resume(prefect_harness, s3, toy_dir, tmp_path):
    from prefect.settings import PREFECT_API_URL

    root = "s3://mapcap-test/killed"
    fs, base = filesystem(root)
    env = os.environ | s3 | {"PREFECT_API_URL": PREFECT_API_URL.value()}
    cmd = [os.path.join(os.path.dirname(sys.executable), "mapcap"), "run", str(toy_dir), "--out", root,
           "--run-name", "k", "--shard-size", "4", "--device", "cpu", "--stages", "classify", "relevancy"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None:
            fs.invalidate_cache()
            if len(fs.glob(f"{base}/relevancy/run=k/*.parquet")) >= 2:
                break
            time.sleep(0.2)
    finally:
        _stop(proc, signal.SIGKILL)
    fs.invalidate_cache()
    done = len(fs.glob(f"{base}/relevancy/run=k/*.parquet"))
    n_shards = 12
    assert 0 < done < n_shards, done  # killed part-way
    result = explain(ExplainParams(dataset=str(toy_dir), out=root, run_name="k", shard_size=4, device="cpu",
                                   stages=["classify", "relevancy"]))
    assert result["shards_skipped"] >= done and result["shards_done"] == n_shards
    con = connect(root)
    assert run_sql(con, COUNTS, ["k"]).to_pylist() == [{"n": 48, "ids": 48}]  # no duplicate, nothing missing
    assert run_sql(con, "SELECT count(*) FROM relevancy").column(0)[0].as_py() == 96
    fs.invalidate_cache()
    assert not fs.glob(f"{base}/**/.*.tmp") and not check_root(root)[1]
