"""Dataset manifests: CSV or Parquet files with at least `path` and `label` columns."""
from __future__ import annotations

import functools
import io
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from PIL import Image


def read_manifest(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a manifest (.csv or .parquet); `path` and `label` columns are required."""
    path = Path(path)
    try:
        if path.suffix.lower() == ".csv":
            table = pacsv.read_csv(path)
        elif path.suffix.lower() in (".parquet", ".pq"):
            table = pq.read_table(path)
        else:
            raise ValueError(f"manifest {path} must end in .csv or .parquet")
    except (pa.ArrowInvalid, OSError) as e:
        raise ValueError(f"could not read manifest {path}: {e}") from e
    missing = {"path", "label"} - set(table.column_names)
    if missing:
        raise ValueError(f"manifest {path} lacks column(s) {sorted(missing)}; it has {table.column_names}: name the "
                         f"image file column 'path' (absolute, or relative to the manifest) and the class column "
                         f"'label'")
    return table.select([c for c in table.column_names if c in ("path", "label", "split")]).to_pylist()


def write_manifest(path: str | Path, rows: list[dict[str, Any]]) -> None:
    """Write a manifest atomically (temp file + rename)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(pa.Table.from_pylist(rows), tmp, compression="zstd")
    tmp.replace(path)


def png_to_mask(data: bytes) -> np.ndarray:
    """A mask stored in a manifest as PNG bytes → (H, W) bool (pixels above mid-grey are the object)."""
    img = Image.open(io.BytesIO(data))
    return np.asarray(img if img.mode == "L" else img.convert("L")) > 127


def read_toy_manifest(path: str | Path) -> pa.Table:
    """The full toy manifest (masks, captions...) for semantic tests and evaluations."""
    return pq.read_table(path)


def annotations(dataset: str, columns: tuple[str, ...] | None = None) -> list[dict[str, Any]]:
    """Rows of the dataset's Parquet manifest (a folder's manifest.parquet, or the file itself), each with
    `path` made absolute; [] when the dataset has none. Masks and captions live there for the toy world.
    `columns`: read only these (and `path`) where the manifest has them."""
    if not dataset:
        return []
    src = Path(dataset)
    manifest = src / "manifest.parquet" if src.is_dir() else src
    if manifest.suffix != ".parquet" or not manifest.is_file():
        return []
    if columns is not None:
        names = set(pq.read_schema(manifest).names)
        columns = ("path",) + tuple(c for c in columns if c in names and c != "path")
    rows = pq.read_table(manifest, columns=list(columns) if columns else None).to_pylist()
    base = str(manifest.parent)
    folders: dict[str, str] = {}  # each folder resolved once; a file in full only when it is a link
    for r in rows:
        p = os.path.join(base, str(r["path"]))  # an absolute path stays as it is, as with Path's `/`
        folder, name = os.path.split(p)
        if folder not in folders:
            folders[folder] = str(Path(folder).resolve())
        r["path"] = str(Path(p).resolve()) if os.path.islink(p) else os.path.join(folders[folder], name)
    return rows


class Masks(Mapping):
    """{absolute image path: {"mask", "second_label", "second_mask"}}: masks decoded on first access (a stage that
    scores a sample of a large dataset decodes only the sample's), then kept."""

    def __init__(self, rows: list[dict[str, Any]]):
        self._raw = {r["path"]: r for r in rows if r.get("mask")}
        self._done: dict[str, dict] = {}  # two threads may decode the same mask once each: harmless

    def __getitem__(self, path: str) -> dict:
        if path not in self._done:
            r = self._raw[path]
            self._done[path] = {"mask": png_to_mask(r["mask"]), "second_label": r.get("second_label"),
                                "second_mask": png_to_mask(r["second_mask"]) if r.get("second_mask") else None}
        return self._done[path]

    def __contains__(self, path: object) -> bool:
        return path in self._raw

    def __iter__(self) -> Iterator[str]:
        return iter(self._raw)

    def __len__(self) -> int:
        return len(self._raw)


@functools.lru_cache(maxsize=4)
def dataset_masks(dataset: str) -> Masks:
    """The object masks of a dataset whose Parquet manifest has them (toy world), else an empty mapping."""
    return Masks(annotations(dataset, ("mask", "second_label", "second_mask")))
