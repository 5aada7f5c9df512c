"""The one registry idiom of MapCap's extension points: stages, relevancy methods and captioners.

Each kind of extension has a `Registry`. A built-in registers itself when its module is imported, and every
built-in module is listed, by explicit import, in its package's catalogue module (`mapcap.tasks.stages`,
`mapcap.tasks.relevancy.builtin`, `mapcap.tasks.captioners.builtin`). Other packages register theirs from a
function under the `mapcap.plugins` entry point (or a module named in `MAPCAP_PLUGINS`; tasks/plugins.py).
A lookup imports the catalogue and loads the plugins first, so a registry module never imports its built-ins:
the import graph has no circle.
"""
from __future__ import annotations

import importlib
import threading
from collections.abc import Iterator
from typing import Generic, TypeVar

from mapcap.tasks.plugins import load_plugins

T = TypeVar("T")


class Registry(Generic[T]):
    """Named entries of one kind, in registration order (built-ins first, in their catalogue's order)."""

    def __init__(self, kind: str, catalogue: str):
        self.kind = kind  # what an entry is, for errors: "stage", "relevancy method", "captioner"
        self.catalogue = catalogue  # module whose import registers the built-ins
        self._entries: dict[str, T] = {}
        self._loaded = False
        self._lock = threading.RLock()

    def register(self, name: str, entry: T) -> T:
        """Add `entry` as `name`; a second, different entry under one name is an error (two plugins clash)."""
        if not name or not name.replace("_", "").isalnum():
            raise ValueError(f"{self.kind} name {name!r} must be letters, digits and '_'")
        old = self._entries.get(name)
        if old is not None and old is not entry and _where(old) != _where(entry):  # (a module imported twice: same)
            raise ValueError(f"{self.kind} {name!r} is registered twice ({_where(old)} and {_where(entry)})")
        self._entries[name] = entry
        return entry

    def load(self) -> None:
        """Import the built-ins' catalogue and the plugins, once per process."""
        with self._lock:
            if self._loaded:
                return
            self._loaded = True
            importlib.import_module(self.catalogue)
            load_plugins()

    def get(self, name: str) -> T:
        self.load()
        if name not in self._entries:
            raise ValueError(f"unknown {self.kind} {name!r}; the registered {self.kind}s are {sorted(self._entries)}")
        return self._entries[name]

    def names(self) -> list[str]:
        self.load()
        return list(self._entries)

    def items(self) -> Iterator[tuple[str, T]]:
        self.load()
        return iter(list(self._entries.items()))

    def remove(self, name: str) -> None:
        """Take an entry out (a test's own stage, once the test is done)."""
        self._entries.pop(name, None)

    def __contains__(self, name: object) -> bool:
        self.load()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    __getitem__ = get


def _where(entry: object) -> str:
    entry = getattr(entry, "fn", entry)  # a relevancy method's entry holds its function
    return f"{getattr(entry, '__module__', '?')}.{getattr(entry, '__qualname__', type(entry).__name__)}"
