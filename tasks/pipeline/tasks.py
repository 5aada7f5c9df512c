"""The Prefect tasks around the driver: one per shard (its stages back to back), one per run-level stage."""
from __future__ import annotations

import socket
import sys

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.states import Cancelled, State

from mapcap.storage.compact import expand_run
from mapcap.tasks.data import Item
from mapcap.tasks.limits import DEFAULT_LIMITS, DecodeLimits
from mapcap.tasks.provenance import SHARD_RETRIES, run_logger
from mapcap.tasks.pipeline.driver import StagePlan, run_run_stage, run_shard
from mapcap.tasks.pipeline.planning import resolve_run
from mapcap.tasks.pipeline.stop import RunStopped


GPU_TAG = "mapcap-gpu"  # a Prefect tag concurrency limit on it gives one shard task per GPU (README)


@task(name="shard", task_run_name="shard-{shard}", cache_policy=NO_CACHE, **SHARD_RETRIES)
def shard_task(plans: list[StagePlan], root: str, run_id: str, shard: int, items: list[Item],
               force: bool | frozenset[str] = False,
               workers: int | None = None, limits: DecodeLimits = DEFAULT_LIMITS) -> dict | State:
    try:
        return run_shard(plans, root, run_id, shard, items, force, workers, run_logger(__name__),
                         limits) | {"node": node()}
    except RunStopped as e:  # the run was stopped (tasks/pipeline/stop.py): this shard ends Cancelled, not Crashed
        return Cancelled(message=str(e))


def merged(before: dict | None, after: dict) -> dict:
    """A shard's result over the run's passes: a stage a later pass found complete keeps the run it had."""
    if before is None:
        return after
    stages = dict(before["stages"])
    stages.update({k: v for k, v in after["stages"].items() if k not in stages or not v["skipped"]})
    return after | {"stages": stages}


def shard_task_on(device: str):
    """The shard task for a run on `device`: tagged `mapcap-gpu` on a GPU when the Prefect API holds a
    concurrency limit on that tag. A tagged task asks the API for a slot each time it starts, and without a limit
    that request only costs: it held a shard ~2 s in 3 of 9 ten-shard runs on 2 cores (none in 7 untagged runs)."""
    return shard_task.with_options(tags=[GPU_TAG]) if device.startswith("cuda") and gpu_limit_set() else shard_task


def gpu_limit_set() -> bool:
    """Whether the Prefect API holds a concurrency limit on the GPU tag (`prefect concurrency-limit create
    mapcap-gpu 1` makes one, as `tag:mapcap-gpu`); asked once per flow run."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound
    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(f"tag:{GPU_TAG}")
        except ObjectNotFound:
            return False
    return True


def node() -> str:
    """Where a shard ran (runs.nodes): the Ray node id in a Ray worker, else the host name."""
    ray = sys.modules.get("ray")
    initialized = getattr(ray, "is_initialized", None)  # absent while another shard's thread is importing ray
    if initialized is not None and initialized():
        return ray.get_runtime_context().get_node_id()
    return socket.gethostname()


@task(name="run-stage", task_run_name="{sp.name}", cache_policy=NO_CACHE, **SHARD_RETRIES)
def run_stage_task(sp: StagePlan, root: str, run_id: str, shard_results: list[dict], run_results: dict[str, dict],
                   force: bool = False, workers: int | None = None, extra: dict | None = None,
                   limits: DecodeLimits = DEFAULT_LIMITS) -> dict:
    return run_run_stage(sp, root, run_id, shard_results, run_results, force, workers, extra, run_logger(__name__),
                         limits)


@task(name="expand-run", cache_policy=NO_CACHE)
def expand_run_task(root: str, run_id: str) -> int:
    """Restore a compacted run's per-shard files before it is resumed (storage/compact.py)."""
    return expand_run(root, run_id)


@task(name="plan-run", cache_policy=NO_CACHE)
def plan_run_task(params):
    """The run plan and every stage's config (tasks/pipeline/planning.py)."""
    return resolve_run(params)
