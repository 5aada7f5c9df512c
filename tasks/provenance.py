"""What every output is stamped with: code version, library versions and a hash of the resolved config."""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import platform
import subprocess
from importlib import metadata
from pathlib import Path

from prefect.tasks import exponential_backoff

REPO = Path(__file__).resolve().parents[1]


@functools.cache
def code_version() -> str:
    """The package version, plus the git commit (and '-dirty') when run from a checkout."""
    try:
        version = metadata.version("mapcap")
    except metadata.PackageNotFoundError:
        version = "0+unknown"
    try:
        sha = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short=10", "HEAD"], capture_output=True,
                             text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
        return f"{version}+g{sha}{'.dirty' if dirty else ''}"
    except (OSError, subprocess.SubprocessError):
        return version


@functools.cache
def library_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("torch", "open_clip_torch", "transformers", "prefect", "pyarrow", "duckdb", "numpy", "pillow",
                "scikit-image"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "absent"
    return out


def to_jsonable(obj):
    if dataclasses.is_dataclass(obj):
        return {k: to_jsonable(v) for k, v in dataclasses.asdict(obj).items()}
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    return obj


def config_hash(*parts) -> str:
    """A short stable hash of JSON-able parts (dataclasses included)."""
    blob = json.dumps(to_jsonable(parts), sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def run_logger(name: str):
    """Prefect's run logger inside a flow or task run (logs reach the UI), the module logger outside (`.fn()`)."""
    import logging

    from prefect import get_run_logger
    from prefect.exceptions import MissingContextError

    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger(name)


def chained_hash(root: str, run_id: str, shard: int, upstream: str, stage: str, version: int, cfg) -> str:
    """A downstream stage's config hash: its own config plus the hash of the upstream file it reads, so
    redoing an upstream shard redoes what depends on it. Raises if the upstream file is missing."""
    from mapcap.storage.schemas import META_CONFIG_HASH
    from mapcap.storage.writer import read_file_metadata, shard_name

    meta = read_file_metadata(root, upstream, run_id, shard_name(shard))
    if meta is None:
        raise FileNotFoundError(f"shard {shard} of run {run_id} has no {upstream} table yet; run the stage that "
                                f"writes it first (stages run in the order classify, relevancy, regions, captions)")
    return config_hash(stage, version, cfg, meta.get(META_CONFIG_HASH, b"").decode())


# Retries of every per-shard task: transient errors (a flaky filesystem, a GPU hiccup) get two more tries after
# 2 s and 4 s, with jitter so that shards failing together do not retry together.
SHARD_RETRIES = {"retries": 2, "retry_delay_seconds": exponential_backoff(backoff_factor=2),
                 "retry_jitter_factor": 0.5}
