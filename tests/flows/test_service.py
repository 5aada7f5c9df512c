"""Against the real thing: `prefect server start`, a process work pool, `prefect deploy` from
deployments/prefect.yaml, a worker; flow runs triggered through the REST API as the UI does; a worker killed
with SIGKILL mid-run and the run completed by a new one, with no duplicate and no missing row."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from mapcap.storage.query import connect, run_sql
from mapcap.storage.writer import check_root

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _descendants(pid: int) -> list[int]:
    """Every process below pid (from /proc), so a kill reaches the flow-run processes a worker started."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def _kill(proc: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    for pid in [*_descendants(proc.pid), proc.pid]:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:  # did not stop on SIGTERM
        _kill(proc, signal.SIGKILL)


class Service:
    """A Prefect server, work pool, deployments and a worker, all in a temp PREFECT_HOME."""

    def __init__(self, home: Path):
        port = _free_port()
        self.api = f"http://127.0.0.1:{port}/api"
        self.env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_API_URL": self.api,
                    "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_WORKER_QUERY_SECONDS": "1",
                    "PREFECT_LOGGING_LEVEL": "INFO", "MAPCAP_REPO": str(REPO)}
        self.log = open(home / "service.log", "w")
        self.procs: list[subprocess.Popen] = []
        self.server = self.start("server", "start", "--host", "127.0.0.1", "--port", str(port), "--no-ui")
        deadline = time.time() + 300  # a fresh SQLite database can take a minute to migrate
        while time.time() < deadline:
            try:
                if httpx.get(f"{self.api}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(1)
        else:
            raise RuntimeError(f"prefect server did not come up; see {home / 'service.log'}")
        self.cli("work-pool", "create", "process", "--type", "process")
        self.cli("--no-prompt", "deploy", "--all", "--prefect-file", "deployments/prefect.yaml")
        self.worker = self.start_worker()

    def start(self, *args: str) -> subprocess.Popen:
        proc = subprocess.Popen([str(BIN / "prefect"), *args], env=self.env, cwd=REPO, stdout=self.log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append(proc)
        return proc

    def start_worker(self) -> subprocess.Popen:
        return self.start("worker", "start", "--pool", "process")

    def cli(self, *args: str) -> str:
        run = subprocess.run([str(BIN / "prefect"), *args], env=self.env, cwd=REPO, capture_output=True, text=True,
                             timeout=300)
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
        return run.stdout

    def call(self, method: str, path: str, **kwargs) -> httpx.Response:
        """One REST call; a 503 (SQLite busy under the server's own background services) is retried."""
        for attempt in range(10):
            resp = httpx.request(method, f"{self.api}{path}", timeout=30, **kwargs)
            if resp.status_code != 503:
                return resp
            time.sleep(0.5 * (attempt + 1))
        return resp

    def deployment(self, name: str) -> dict:
        found = self.call("POST", "/deployments/filter", json={"deployments": {"name": {"any_": [name]}}}).json()
        assert len(found) == 1, found
        return found[0]

    def trigger(self, name: str, params: dict) -> str:
        dep = self.deployment(name)
        run = self.call("POST", f"/deployments/{dep['id']}/create_flow_run", json={"parameters": {"params": params}})
        assert run.status_code < 300, run.text
        return run.json()["id"]

    def wait(self, flow_run_id: str, timeout: float = 400) -> str:
        deadline = time.time() + timeout
        while time.time() < deadline:
            state = self.call("GET", f"/flow_runs/{flow_run_id}").json()["state"]["type"]
            if state in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
                return state
            time.sleep(1)
        raise TimeoutError(f"flow run {flow_run_id} did not finish in {timeout}s")

    def close(self) -> None:
        """Clients first, the server last (reverse start order). Stopped after the server, the worker and
        `mapcap serve` kept retrying the API they had lost: `serve` outlived _kill's 30 s SIGTERM grace (41 s of
        teardown), the worker took 8 s; stopped while it is up, each exits in about a second."""
        for proc in reversed(self.procs):
            if proc.poll() is None:
                _kill(proc, signal.SIGTERM)
        self.log.close()


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    svc = Service(tmp_path_factory.mktemp("prefect-service"))
    yield svc
    svc.close()


def test_scheduled_deployment_carries_its_cron(service):
    dep = service.deployment("explain-nightly")
    crons = [s["schedule"].get("cron") for s in dep["schedules"]]
    assert crons == ["0 3 * * *"] and dep["work_pool_name"] == "process"
    assert "params" in dep["parameter_openapi_schema"]["properties"]  # the UI renders the typed form


def test_sigkill_mid_run_then_resume_and_reprocess_from_the_api(service, toy_dir, tmp_path):
    out = tmp_path / "results"
    params = {"dataset": str(toy_dir), "out": str(out), "run_name": "svc", "device": "cpu", "shard_size": 4,
              "stages": ["classify", "relevancy"]}
    service.trigger("explain-nightly", params)
    deadline = time.time() + 300
    while not list(out.glob("relevancy/run=svc/*.parquet")) and time.time() < deadline:
        time.sleep(0.2)
    _kill(service.worker)  # SIGKILL the worker and the flow run it started, mid-run
    done = len(list(out.glob("relevancy/run=svc/*.parquet")))
    assert 0 < done < 12, done  # killed part-way: some shards written, not all
    service.worker = service.start_worker()
    again = service.trigger("explain-nightly", params)
    assert service.wait(again) == "COMPLETED"
    con = connect(str(out))
    counts = run_sql(con, """SELECT count(*) AS n, count(DISTINCT image_id) AS ids FROM predictions
                             WHERE run_id = 'svc' AND template = 'ensemble'""").to_pylist()[0]
    assert counts == {"n": 48, "ids": 48}  # no duplicate, no missing row
    maps = run_sql(con, "SELECT count(*) AS n FROM relevancy WHERE run_id = 'svc'").column("n")[0].as_py()
    assert maps == 48 * 2  # pred and label maps of chefer (the gradient baseline is opt-in)
    ok, bad = check_root(str(out))
    assert not bad and ok > 0 and not list(out.rglob(".*.tmp"))  # no half file visible, no temp file left
    skipped = run_sql(con, "SELECT n_shards_skipped FROM runs WHERE run_id = 'svc'").column(0)[0].as_py()
    assert skipped >= done  # what the killed run finished was reused

    rp = service.trigger("reprocess", {"run_name": "svc", "out": str(out), "classes": ["ring"]})
    assert service.wait(rp) == "COMPLETED"
    counts = run_sql(connect(str(out)), """SELECT count(*) AS n, count(DISTINCT image_id) AS ids FROM predictions
                                          WHERE run_id = 'svc' AND template = 'ensemble'""").to_pylist()[0]
    assert counts == {"n": 48, "ids": 48}


def test_explorer_reprocess_button_starts_the_deployment(service, toy_dir, tmp_path):
    out = tmp_path / "results"
    base = service.trigger("explain-nightly", {"dataset": str(toy_dir), "out": str(out), "run_name": "ui",
                                                "device": "cpu", "stages": ["classify"]})
    assert service.wait(base) == "COMPLETED"
    port = _free_port()
    proc = subprocess.Popen([str(BIN / "mapcap"), "explorer", "--root", str(out), "--port", str(port)],
                            env=service.env, cwd=REPO, stdout=subprocess.PIPE, stderr=service.log, text=True,
                            start_new_session=True)
    service.procs.append(proc)
    printed = proc.stdout.readline()  # "MapCap explorer on http://127.0.0.1:PORT/?token=… (results root …)"
    url, _, token = printed.split()[3].partition("/?token=")
    assert url == f"http://127.0.0.1:{port}" and len(token) >= 32, printed
    auth = {"Authorization": f"Bearer {token}"}
    for _ in range(300):
        try:
            info = httpx.get(f"{url}/api/info", headers=auth, timeout=2).json()
            break
        except httpx.HTTPError:
            time.sleep(0.2)
    assert info["prefect_api"] and info["runs"] == ["ui"]
    assert httpx.post(f"{url}/api/reprocess", json={"run": "ui"}, timeout=60).status_code == 401
    started = httpx.post(f"{url}/api/reprocess", json={"run": "ui", "classes": ["star"]}, headers=auth,
                         timeout=60).json()
    assert started["url"].endswith(f"/runs/flow-run/{started['id']}")
    deadline, state = time.time() + 300, None
    while time.time() < deadline and state not in ("Completed", "Failed", "Crashed"):
        state = httpx.get(f"{url}/api/flow-runs/{started['id']}", headers=auth, timeout=30).json()["state"]
        time.sleep(1)
    assert state == "Completed"
    params = service.call("GET", f"/flow_runs/{started['id']}").json()["parameters"]["params"]
    assert params["run_name"] == "ui" and params["classes"] == ["star"]
    service.log.flush()
    runs = str(run_sql(connect(str(out)), "SELECT * FROM runs").to_pylist())
    assert token not in Path(service.log.name).read_text() + runs  # not in the logs, not in the Parquet


def test_mapcap_serve_serves_both_deployments_from_one_process(service, toy_dir, tmp_path):
    """Last in this module: `mapcap serve` takes over the two deployments (same names), with its own cron."""
    proc = subprocess.Popen([str(BIN / "mapcap"), "serve", "--dataset", str(toy_dir), "--out", str(tmp_path),
                             "--cron", "30 4 * * *"], env=service.env, cwd=REPO, stdout=service.log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    service.procs.append(proc)
    deadline, crons = time.time() + 180, []
    while time.time() < deadline:
        crons = [s["schedule"].get("cron") for s in service.deployment("explain-nightly")["schedules"]]
        if crons == ["30 4 * * *"]:
            break
        time.sleep(1)
    assert crons == ["30 4 * * *"] and proc.poll() is None
    served = service.deployment("explain-nightly")
    assert served["parameters"]["params"]["dataset"] == str(toy_dir)
    assert service.deployment("reprocess")["entrypoint"].endswith("reprocess")
