"""Which Parquet files of a table readers see, and the parts they hold, with compacted files in the picture.

A compacted file (`compact-<id>.parquet`, storage/compact.py) lists in its metadata the per-shard files it
replaces, each as a part (name, row offset, rows); their original metadata (configs, hashes, reuse keys) sits in a
sidecar `compact-<id>.meta.json.gz` written before it, so readers' footers stay small. Readers skip a file that a
compacted file beside it replaces, so while compaction (or its inverse) runs they never see a row twice nor miss
one.
"""
from __future__ import annotations

import functools
import gzip
import json
import threading
from dataclasses import dataclass

import fsspec
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mapcap.storage.schemas import META_PARTS, schema_for

COMPACT_PREFIX = "compact-"
_FOOTERS: dict[tuple[str, int], dict[bytes, bytes]] = {}  # (path, size) -> metadata; finished files never change
_LOCK = threading.Lock()


@dataclass(frozen=True)
class Part:
    """Rows of one original per-shard file: a whole file, or a slice of a compacted one."""

    table: str
    run_id: str
    name: str  # the original file name without .parquet (shard-00003, shard-00003-relevancy, ...)
    path: str  # the file holding the rows
    offset: int
    rows: int | None  # None: the whole file
    meta: dict[bytes, bytes]  # the original file's MapCap metadata


def list_files(fs: fsspec.AbstractFileSystem, base: str, table: str, run: str = "*") -> dict[str, int]:
    """{path: size} of every Parquet file of a table's run folder(s); `run='*'` for all runs."""
    found = fs.glob(f"{base}/{table}/run={run}/*.parquet", detail=True)
    return {p: int(info.get("size") or 0) for p, info in sorted(found.items())}


def footer(fs: fsspec.AbstractFileSystem, path: str, size: int) -> dict[bytes, bytes]:
    """A file's key-value metadata, read once per process (a rewritten file has another size or is re-listed)."""
    key = (path, size)
    with _LOCK:
        if key in _FOOTERS:
            return _FOOTERS[key]
    with fs.open(path, "rb") as f:
        meta = pq.read_schema(f).metadata or {}
    with _LOCK:
        if len(_FOOTERS) > 200_000:
            _FOOTERS.clear()
        _FOOTERS[key] = meta
    return meta


def split(path: str) -> tuple[str, str, str]:
    """(folder, run id, file name without .parquet) of a table file path."""
    folder, fname = path.rsplit("/", 1)
    return folder, folder.rsplit("/run=", 1)[1], fname[:-len(".parquet")]


def is_compacted(path: str) -> bool:
    return split(path)[2].startswith(COMPACT_PREFIX)


def compact_doc(fs: fsspec.AbstractFileSystem, path: str, size: int) -> dict:
    """{"parts": [{name, offset, rows}]} of a compacted file."""
    return json.loads(footer(fs, path, size).get(META_PARTS, b'{"parts": []}'))


def sidecar(path: str) -> str:
    """The file holding a compacted file's original per-part metadata."""
    return path[:-len(".parquet")] + ".meta.json.gz"


@functools.lru_cache(maxsize=256)
def part_metas(fs: fsspec.AbstractFileSystem, path: str, size: int) -> dict[str, dict[bytes, bytes]]:
    """{part name: its original file's metadata} of a compacted file."""
    with fs.open(sidecar(path), "rb") as f:
        doc = json.loads(gzip.decompress(f.read()))
    return {name: {k.encode(): v.encode() for k, v in meta.items()} for name, meta in doc.items()}


def visible(fs: fsspec.AbstractFileSystem, files: dict[str, int]) -> list[str]:
    """The files readers should read: every file but those a compacted file in the same folder replaces."""
    hidden: set[str] = set()
    for path, size in files.items():
        if is_compacted(path):
            folder = split(path)[0]
            doc = compact_doc(fs, path, size)
            hidden |= {f"{folder}/{p['name']}.parquet" for p in doc["parts"]}
    return [p for p in files if p not in hidden]


def parts(fs: fsspec.AbstractFileSystem, table: str, files: dict[str, int]) -> list[Part]:
    """The original per-shard parts behind the visible files."""
    out = []
    for path in visible(fs, files):
        _, run_id, name = split(path)
        if not is_compacted(path):
            out.append(Part(table, run_id, name, path, 0, None, footer(fs, path, files[path])))
            continue
        metas = part_metas(fs, path, files[path])
        for p in compact_doc(fs, path, files[path])["parts"]:
            out.append(Part(table, run_id, p["name"], path, p["offset"], p["rows"], metas[p["name"]]))
    return out


def read_part(fs: fsspec.AbstractFileSystem, part: Part, image_ids: set[str] | None = None) -> pa.Table:
    """A part's rows in the table's current schema (columns added later read as nulls), optionally only those of
    some images."""
    with fs.open(part.path, "rb") as f:
        data = pq.read_table(f)
    if part.rows is not None:
        data = data.slice(part.offset, part.rows)
    data = conform(data, part.table)
    if image_ids is not None:
        data = data.filter(pc.is_in(data["image_id"], pa.array(sorted(image_ids), pa.string())))
    return data


def conform(data: pa.Table, table: str, columns: list[str] | None = None) -> pa.Table:
    """An Arrow table in the table's current schema (or only its `columns`): files written before a column was
    added read it as nulls."""
    schema = schema_for(table)
    if columns is not None:
        schema = pa.schema([schema.field(c) for c in columns])
    for field in schema:
        if field.name not in data.column_names:
            data = data.append_column(field, pa.nulls(data.num_rows, field.type))
    return data.select(schema.names).cast(schema)
