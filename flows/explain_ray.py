"""The explain flow on Ray (through prefect-ray): shard tasks become Ray tasks on a local or remote cluster.

    MAPCAP_RAY_ADDRESS=ray://head:10001 mapcap run DATASET --ray --out s3://bucket/mapcap

Without an address a local Ray starts in-process. Each GPU stage asks Ray for `gpus_per_shard` GPUs per shard
task (ExplainParams), so Ray places one shard per GPU; models load once per Ray worker process. Results go to
any fsspec root (use a shared one, such as s3://, when workers are on several machines).
"""
from __future__ import annotations

import os

from prefect import Flow

from mapcap.flows.explain import explain


def explain_on_ray(address: str | None = None, num_cpus: int | None = None) -> Flow:
    """The explain flow with a RayTaskRunner: `address` of a cluster (ray://host:10001 or 'auto'), or a local Ray."""
    try:
        from prefect_ray import RayTaskRunner
    except ImportError as e:
        raise ImportError("Ray scale-out needs prefect-ray: pip install -e '.[ray]'") from e
    address = address or os.environ.get("MAPCAP_RAY_ADDRESS") or None
    init = None if address else {"num_cpus": num_cpus or os.cpu_count(), "include_dashboard": False}
    return explain.with_options(name="explain-ray", task_runner=RayTaskRunner(address=address, init_kwargs=init))


explain_ray = explain_on_ray()  # deployment entrypoint: flows/explain_ray.py:explain_ray (reads MAPCAP_RAY_ADDRESS)
