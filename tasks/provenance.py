"""What every output is stamped with: code version, library versions and a hash of the resolved config."""
from __future__ import annotations

import functools
import hashlib
import json
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

from pydantic import ConfigDict, Field, TypeAdapter, ValidationError
from pydantic.dataclasses import dataclass as pydantic_dataclass

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


_ANY = TypeAdapter(Any)


def omit_default(default: Any) -> Any:
    """A config field left out of stored configs (hence hashes) while it has its default: a field added later
    keeps the configs, and the finished work, of earlier versions matching."""
    return Field(default=default, exclude_if=lambda v: v == default)


def frozen_config(cls: type) -> type:
    """A frozen, validated (pydantic) dataclass: a stage's config (or a part of one), stored as JSON and read back
    by pydantic."""
    return pydantic_dataclass(frozen=True, config=ConfigDict(extra="forbid", arbitrary_types_allowed=True))(cls)


def to_jsonable(obj: Any) -> Any:
    """JSON data of a config (dataclasses, pydantic models, tuples, ...), as pydantic serialises it."""
    return _ANY.dump_python(obj, mode="json", fallback=str)


def config_json(cfg: Any) -> str:
    """A resolved config as JSON (what every output stores: data, not a repr)."""
    return json.dumps(to_jsonable(cfg), sort_keys=True, default=str)


def from_jsonable(tp: Any, data: Any) -> Any:
    """A value of type `tp` (a config, tuple[...], X | None, ...) from `to_jsonable` output, validated."""
    return TypeAdapter(tp).validate_python(data)


def config_from_json(cls: type, text: str | bytes) -> Any:
    """The config object `config_json` wrote: `config_from_json(RelevancyConfig, meta['mapcap.config'])`."""
    try:
        return TypeAdapter(cls).validate_json(text)
    except ValidationError as e:
        raise ValueError(f"a stored {cls.__name__} does not fit this version's fields ({e.error_count()} "
                         f"error(s)): {e}") from e


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


TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (OSError, TimeoutError, ConnectionError)  # + CUDA OOM below


def is_transient(exc: BaseException | None) -> bool:
    """Can a retry help? I/O, network and CUDA out-of-memory errors can pass; a ValueError will fail again."""
    import torch

    return isinstance(exc, TRANSIENT_ERRORS + (torch.cuda.OutOfMemoryError,))


def retry_transient(task, task_run, state) -> bool:
    """Prefect retry condition: retry only errors that can pass (see `is_transient`)."""
    try:
        state.result()
    except BaseException as e:  # the task's exception, re-raised by Prefect from the failed state
        return is_transient(e)
    return False


# Retries of every per-shard task: transient errors (a flaky filesystem, a GPU hiccup) get two more tries after
# 2 s and 4 s, with jitter so that shards failing together do not retry together; bad input is not retried.
SHARD_RETRIES = {"retries": 2, "retry_delay_seconds": exponential_backoff(backoff_factor=2),
                 "retry_jitter_factor": 0.5, "retry_condition_fn": retry_transient}
