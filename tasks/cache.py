"""The one caching idiom for what a process builds once and shares between its tasks and threads: models
(CLIPs, captioners), text classifiers, concept and phrase embeddings, FLOP counts. Pure functions of small
arguments use `functools.lru_cache` as usual; anything keyed by a model goes through `load_once`."""
from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")
_VALUES: dict[tuple, Any] = {}
_LOCKS: dict[tuple, threading.RLock] = {}
_GUARD = threading.Lock()


def load_once(key: tuple, loader: Callable[[], T]) -> T:
    """What `loader()` returns, built on the first call with `key` and shared by every later call of the process.
    Each key has its own lock, so a slow build (a model) blocks only the callers that want that value."""
    with _GUARD:
        if key in _VALUES:
            return _VALUES[key]
        lock = _LOCKS.setdefault(key, threading.RLock())
    with lock:
        if key not in _VALUES:
            _VALUES[key] = loader()
        return _VALUES[key]


def cached(match: Callable[[tuple], bool]) -> list[tuple]:
    """The keys held now that `match` accepts."""
    with _GUARD:
        return [k for k in _VALUES if match(k)]


def forget(match: Callable[[tuple], bool]) -> int:
    """Drop the values whose keys `match` accepts (a test's own model, weights that changed); how many."""
    with _GUARD:
        keys = [k for k in _VALUES if match(k)]
        for k in keys:
            del _VALUES[k]
            _LOCKS.pop(k, None)
        return len(keys)
