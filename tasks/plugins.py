"""Presets and named datasets that plugins register: how the toy world (or a user's own bundle) plugs in.

A plugin is a function registered under the `mapcap.plugins` entry-point group (pyproject.toml); it calls
`register_preset` / `register_dataset`. `model=<preset>` then resolves to the preset's open_clip config and
checkpoint, and the preset supplies defaults the user did not set: the descriptor bank, the retrieval
captioner's phrase bank, the ClipCap directory, chefer's start layer. Nothing in `mapcap.tasks` names a plugin.
"""
from __future__ import annotations

import importlib
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata

log = logging.getLogger(__name__)
GROUP = "mapcap.plugins"
ENV = "MAPCAP_PLUGINS"  # also imported as plugins: comma-separated module names


@dataclass(frozen=True)
class ModelPreset:
    model: str  # open_clip config name the preset's name stands for
    checkpoint: str  # local checkpoint file (`pretrained=<preset>` resolves to it)
    descriptors: str | None = None  # concept bank JSON {class: [descriptor]} (descriptions, concepts stage)
    phrases: str | None = None  # retrieval captioner's phrase bank JSON {class: [phrase]}
    captioner_path: str | None = None  # default ClipCap directory for the clipcap captioner
    start_layer: int | None = None  # chefer's default first block for this model (None: last block)
    classes: tuple[str, ...] | None = None  # all a narrow model (the toy CLIP) tells apart: runs on others are warned


PRESETS: dict[str, ModelPreset] = {}
DATASETS: dict[str, Callable[[], str]] = {}  # name -> builder returning the dataset's local path
_LOADED = False
_LOCK = threading.RLock()  # a plugin may look up a registry while it registers


def register_preset(name: str, preset: ModelPreset) -> None:
    PRESETS[name] = preset


def register_dataset(name: str, build: Callable[[], str]) -> None:
    DATASETS[name] = build


def load_plugins() -> None:
    """Run every installed `mapcap.plugins` entry point once per process, then import the modules named in the
    MAPCAP_PLUGINS environment variable (comma-separated; a module registers what it defines on import, and its
    `register()` runs if it has one): a stage, method or captioner of one file, without packaging it."""
    global _LOADED
    with _LOCK:
        if _LOADED:
            return
        _LOADED = True
        for ep in metadata.entry_points(group=GROUP):
            try:
                ep.load()()
            except Exception as e:
                raise RuntimeError(f"MapCap plugin {ep.name!r} ({ep.value}) failed to load: {e}") from e
        for name in filter(None, (m.strip() for m in os.environ.get(ENV, "").split(","))):
            try:
                module = importlib.import_module(name)
            except Exception as e:
                raise RuntimeError(f"MapCap plugin module {name!r} (from {ENV}) failed to import: {e}; it must be "
                                   f"importable (on PYTHONPATH)") from e
            if callable(getattr(module, "register", None)):
                module.register()


def preset(name: str) -> ModelPreset | None:
    """The preset registered as `name` (a shorthand for model / pretrained), or None."""
    load_plugins()
    return PRESETS.get(name)


def preset_for_model(model_name: str) -> ModelPreset | None:
    """The preset whose open_clip config is `model_name` (its defaults apply), or None."""
    load_plugins()
    return next((p for p in PRESETS.values() if p.model == model_name), None)


def named_dataset(name: str) -> str | None:
    """The local path of a registered dataset name (built on first use), or None if `name` is not one."""
    load_plugins()
    build = DATASETS.get(name)
    return build() if build else None
