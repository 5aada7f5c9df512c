"""Ctrl-C during a run: the shards stop at their next batch, the run is recorded as stopped, a rerun resumes."""
from __future__ import annotations

import os
import signal
import threading

from mapcap.flows.explain import ExplainParams, explain
from mapcap.storage.query import connect, named_query, run_sql


def test_an_interrupt_stops_the_running_shards_and_a_rerun_resumes(prefect_harness, toy_dir, tmp_path, monkeypatch,
                                                                   capsys):
    from mapcap.cli.main import main
    from mapcap.tasks.stages.classify import Classify
    original = Classify.compute
    steps, ended_by = [], []

    def slow_shard_1(self, cfg, ctx):
        """Shard 1 interrupts the process (as Ctrl-C does), then works in batches for a long time."""
        if ctx.shard != 1:
            return original(self, cfg, ctx)
        threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGINT)).start()
        try:
            for i in range(3000):  # 30 s of batches unless stopped
                ctx.progress(i, 3000)
                steps.append(i)
                threading.Event().wait(0.01)
        except BaseException as e:
            ended_by.append(type(e).__name__)
            raise
        return original(self, cfg, ctx)

    monkeypatch.setattr(Classify, "compute", slow_shard_1)
    rc = main(["run", str(toy_dir), "--out", str(tmp_path), "--shard-size", "16", "--run-name", "stop", "--device",
               "cpu", "--stages", "classify", "relevancy"])
    assert rc == 130 and "mapcap run: stopped" in capsys.readouterr().err
    assert ended_by == ["RunStopped"] and len(steps) < 3000  # it stopped between batches, not at its end
    con = connect(str(tmp_path))
    assert run_sql(con, "SELECT status FROM runs").column("status").to_pylist() == ["stopped"]
    kept = sorted(p.name for p in (tmp_path / "predictions" / "run=stop").glob("*.parquet"))
    assert "shard-00001.parquet" not in kept  # the stopped shard wrote nothing of its stage
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]  # and no half file

    monkeypatch.setattr(Classify, "compute", original)
    again = explain(ExplainParams(dataset=str(toy_dir), out=str(tmp_path), shard_size=16, run_name="stop",
                                  device="cpu", stages=["classify", "relevancy"]))
    assert again["shards_done"] == 3
    con = connect(str(tmp_path))
    assert named_query(con, "row_counts", "stop").to_pylist()[0] == {"images": 48, "predicted": 48, "failed": 0}
    assert run_sql(con, "SELECT status FROM runs").column("status").to_pylist() == ["finished"]


def test_sigterm_ends_the_command_and_the_prefect_server_it_started(toy_dir, tmp_path):
    """`kill` of a `mapcap run`: exit 143 once the running shards stop, the run recorded as stopped, and no
    temporary Prefect server left running (the default SIGTERM action killed the command outright and orphaned it)."""
    import subprocess
    import sys
    import time
    from pathlib import Path

    from tests.flows.test_service import _descendants

    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"} | {"PREFECT_HOME": str(tmp_path / "home"),
                                                                              "PREFECT_LOGGING_LEVEL": "INFO"}
    (tmp_path / "home").mkdir()
    log = tmp_path / "run.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([str(Path(sys.executable).parent / "mapcap"), "run", str(toy_dir), "--out",
                                 str(tmp_path / "res"), "--run-name", "term", "--shard-size", "2", "--device", "cpu"],
                                env=env, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.time() + 300
        while "shard 0 classify" not in log.read_text() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.1)
        children = _descendants(proc.pid)
        assert proc.poll() is None, "the run ended before it could be terminated"
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=300)
    assert rc == 143, log.read_text()[-3000:]
    assert children  # the temporary server, at least ...
    time.sleep(2)
    assert [c for c in children if Path(f"/proc/{c}").exists()] == []  # ... is gone with the command
    con = connect(str(tmp_path / "res"))
    assert run_sql(con, "SELECT status FROM runs").column("status").to_pylist() == ["stopped"]
