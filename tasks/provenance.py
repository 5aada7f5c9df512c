"""What every output is stamped with: code version, library versions and a hash of the resolved config."""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import platform
import subprocess
import types
import typing
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
    if dataclasses.is_dataclass(obj):  # a field marked omit_default is left out while it has its default
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)
                if not (f.metadata.get("omit_default") and getattr(obj, f.name) == f.default)}
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    return obj


def config_json(cfg) -> str:
    """A resolved config as JSON (what every output stores: data, not a repr)."""
    return json.dumps(to_jsonable(cfg), sort_keys=True, default=str)


def from_jsonable(tp, data):
    """Rebuild a value of type `tp` (a frozen dataclass, tuple[...], X | None, ...) from `to_jsonable` output."""
    if data is None:
        return None
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in args if a is not type(None)]
        for a in options:  # the first type the data fits
            try:
                return from_jsonable(a, data)
            except (TypeError, ValueError, KeyError):
                continue
        raise ValueError(f"{data!r} fits none of {options}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(data, dict):
            raise TypeError(f"{tp.__name__} needs an object, got {data!r}")
        hints = typing.get_type_hints(tp)
        known = {f.name for f in dataclasses.fields(tp)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"{tp.__name__} has no field(s) {sorted(unknown)}")
        return tp(**{k: from_jsonable(hints[k], v) for k, v in data.items()})
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(from_jsonable(args[0], v) for v in data)
        return tuple(from_jsonable(a, v) for a, v in zip(args, data))
    if origin is list:
        return [from_jsonable(args[0], v) for v in data]
    if origin is dict:
        return {k: from_jsonable(args[1], v) for k, v in data.items()}
    if origin is typing.Literal:
        if data not in args:
            raise ValueError(f"{data!r} is not one of {args}")
        return data
    if tp in (int, float, str, bool):
        if tp is float and isinstance(data, int) and not isinstance(data, bool):
            return float(data)
        if not isinstance(data, tp) or (tp is int and isinstance(data, bool)):
            raise TypeError(f"{data!r} is not a {tp.__name__}")
        return data
    return data  # typing.Any and friends


def config_from_json(cls, text: str | bytes):
    """The config object `config_json` wrote: `config_from_json(RelevancyConfig, meta['mapcap.config'])`."""
    return from_jsonable(cls, json.loads(text))


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
