"""The toy world as a MapCap plugin: `model=toy` / `dataset=toy` and the toy banks, registered like a user's own.

Registered through the `mapcap.plugins` entry point in pyproject.toml; `mapcap.tasks` never imports this package.
"""
from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path

import open_clip

from mapcap.tasks.plugins import ModelPreset, register_dataset, register_preset
from mapcap.toy import TOY_CHECKPOINT, TOY_CLIPCAP, TOY_DIR, TOY_MODEL_NAME
from mapcap.toy.concepts import TOY_CONCEPTS
from mapcap.toy.shapes import SHAPES

TOY = "toy"
TOY_DATA_VERSION = "v2"  # bump when the generator's output changes


def toy_data_dir() -> Path:
    """Where the embedded toy dataset lives (MAPCAP_TOY_DATA overrides)."""
    default = Path.home() / ".cache" / "mapcap" / f"toy-data-{TOY_DATA_VERSION}"
    return Path(os.environ.get("MAPCAP_TOY_DATA", default)).expanduser()


def ensure_toy_dataset(path: Path | None = None, n_per_class: int = 16, seed: int = 1234) -> Path:
    """Build the toy test split if absent (written to a temp folder, then renamed: never half-built)."""
    from mapcap.toy.dataset import write_toy_dataset

    path = path or toy_data_dir()
    if (path / "manifest.parquet").exists():
        return path
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}")
    write_toy_dataset(tmp, n_per_class=n_per_class, seed=seed, split="test")
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        tmp.rename(path)
    except OSError:  # another process built it first
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def phrase_bank_file() -> Path:
    """The retrieval captioner's toy phrase bank ("a red square", ...) as a JSON file in the toy data cache."""
    from mapcap.toy.dataset import caption_bank

    path = toy_data_dir().parent / "toy-phrases.json"
    text = json.dumps(caption_bank(), sort_keys=True)
    if not path.exists() or path.read_text() != text:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}")
        tmp.write_text(text)
        tmp.replace(path)
    return path


def register() -> None:
    open_clip.add_model_config(TOY_DIR / "model_configs")
    register_preset(TOY, ModelPreset(model=TOY_MODEL_NAME, checkpoint=str(TOY_CHECKPOINT),
                                     descriptors=str(TOY_CONCEPTS), phrases=str(phrase_bank_file()),
                                     captioner_path=str(TOY_CLIPCAP),
                                     start_layer=0,  # measured on the toy world: all blocks localise best
                                     classes=SHAPES))
    register_dataset(TOY, lambda: str(ensure_toy_dataset()))
