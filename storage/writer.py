"""The shard writer: one Parquet file per (table, run, shard), written atomically, on any fsspec root.

Layout: `<root>/<table>/run=<run_id>/<name>.parquet`. A file is written to a hidden temp name in the same
folder and renamed, so a killed run never leaves a half file where readers look.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import uuid
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mapcap.storage.layout import conform, list_files, visible
from mapcap.storage.schemas import (META_CONFIG, META_CONFIG_HASH, META_SCHEMA_VERSION, META_TABLE, META_VERSIONS,
                             SCHEMA_VERSION, schema_for)

log = logging.getLogger(__name__)


class CorruptShardError(RuntimeError):
    """A Parquet file that exists but cannot be read."""


def filesystem(root: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """(fsspec filesystem, path inside it) for a local path or any fsspec URL (s3://, memory://...)."""
    fs, path = fsspec.core.url_to_fs(str(root))
    return fs, path.rstrip("/")


def shard_name(shard: int) -> str:
    return f"shard-{shard:05d}"


def table_path(root: str, table: str, run_id: str, name: str) -> str:
    _, base = filesystem(root)
    return f"{base}/{table}/run={run_id}/{name}.parquet"


def write_table(root: str, table: str, run_id: str, name: str, rows: list[dict[str, Any]] | pa.Table,
                config: dict | None = None, config_hash: str = "", versions: dict | None = None,
                extra_meta: dict[bytes, bytes] | None = None) -> str:
    """Write rows (dicts or an Arrow table) as one Parquet file, atomically; returns its path."""
    schema = schema_for(table)
    data = rows if isinstance(rows, pa.Table) else pa.Table.from_pylist(rows, schema=schema)
    data = data.select(schema.names).cast(schema)
    meta = {META_SCHEMA_VERSION: SCHEMA_VERSION.encode(), META_TABLE: table.encode(),
            META_CONFIG: json.dumps(config or {}, sort_keys=True, default=str).encode(),
            META_CONFIG_HASH: config_hash.encode(), META_VERSIONS: json.dumps(versions or {}, sort_keys=True).encode()}
    meta |= extra_meta or {}
    data = data.replace_schema_metadata(meta)
    fs, _ = filesystem(root)
    return atomic_write(fs, table_path(root, table, run_id, name), lambda f: pq.write_table(data, f, compression="zstd"))


def write_raw(root: str, relpath: str, data: pa.Table) -> str:
    """Write an Arrow table as it is (schema metadata included) to `relpath` under the root, atomically."""
    fs, base = filesystem(root)
    return atomic_write(fs, f"{base}/{relpath}", lambda f: pq.write_table(data, f, compression="zstd"))


HOST_ID = hashlib.sha1(socket.gethostname().encode()).hexdigest()[:8]  # in temp names: whose writer made it
STALE_AFTER_S = 6 * 3600  # a temp file of another machine's writer this old is left from a killed write


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True


def _stale(fs: fsspec.AbstractFileSystem, path: str) -> bool:
    """A temp file no live writer owns: this machine's writer process is gone, or (another machine's, or a name
    from before owners were recorded) it is older than STALE_AFTER_S."""
    parts = path.rsplit("/", 1)[-1].split(".")  # ['', name..., host, pid, uuid, 'tmp']
    if len(parts) >= 6 and parts[-4] == HOST_ID and parts[-3].isdigit():
        return not _pid_alive(int(parts[-3]))
    try:
        modified = fs.modified(path)
    except (NotImplementedError, FileNotFoundError, OSError):  # no age to read (or gone): keep it, never guess
        return False
    modified = modified if modified.tzinfo else modified.replace(tzinfo=timezone.utc)
    return (datetime.now(timezone.utc) - modified).total_seconds() > STALE_AFTER_S


def atomic_write(fs: fsspec.AbstractFileSystem, final: str, write: Callable[[Any], None]) -> str:
    """Write through `write(file)` to a temp name of this writer's own in the same folder, then rename: no half
    files. Temp names carry the writer's machine and process, so the cleanup of temp files left by killed writers
    never removes a live writer's (two writers of one name, threads or processes)."""
    folder, name = final.rsplit("/", 1)
    fs.makedirs(folder, exist_ok=True)
    tmp = f"{folder}/.{name}.{HOST_ID}.{os.getpid()}.{uuid.uuid4().hex}.tmp"
    try:
        with fs.open(tmp, "wb") as f:
            write(f)
        fs.mv(tmp, final)
    except BaseException:
        if fs.exists(tmp):
            fs.rm(tmp)
        raise
    for left in fs.glob(f"{folder}/.{name}.*.tmp"):  # left by a writer killed mid-write (SIGKILL, power loss)
        if _stale(fs, left):
            try:
                fs.rm(left)
            except FileNotFoundError:  # another writer's cleanup was first
                pass
    return final


def write_file(root: str, relpath: str, data: bytes) -> str:
    """Write a non-table file (the HTML report) under the root, atomically; returns its path."""
    fs, base = filesystem(root)
    return atomic_write(fs, f"{base}/{relpath}", lambda f: f.write(data))


def read_file_metadata(root: str, table: str, run_id: str, name: str) -> dict[bytes, bytes] | None:
    """The MapCap metadata of one file, or None when the file does not exist."""
    fs, _ = filesystem(root)
    path = table_path(root, table, run_id, name)
    if not fs.exists(path):
        return None
    try:
        with fs.open(path, "rb") as f:
            return pq.read_schema(f).metadata or {}
    except Exception as e:
        raise CorruptShardError(f"{path} is not a readable Parquet file ({e}); delete it or rerun with force=True") from e


def is_complete(root: str, tables: list[str], run_id: str, name: str, config_hash: str) -> bool:
    """True when every table's file for this shard exists and was written with `config_hash`."""
    return files_complete(root, run_id, [(t, name) for t in tables], config_hash)


def files_complete(root: str, run_id: str, files: list[tuple[str, str]], config_hash: str) -> bool:
    """True when every (table, file name) exists and was written with `config_hash`.

    A corrupt file counts as incomplete (the work is redone and the file replaced), and says so in the log.
    """
    for table, name in files:
        try:
            meta = read_file_metadata(root, table, run_id, name)
        except CorruptShardError as e:
            log.warning("%s: redoing the shard", e)
            return False
        if meta is None or meta.get(META_CONFIG_HASH, b"").decode() != config_hash:
            return False
    return True


def file_exists(root: str, relpath: str) -> bool:
    """Does a non-table file (the HTML report) exist under the root?"""
    fs, base = filesystem(root)
    return fs.exists(f"{base}/{relpath}")


def read_table(root: str, table: str, run_id: str, name: str) -> pa.Table:
    fs, _ = filesystem(root)
    path = table_path(root, table, run_id, name)
    with fs.open(path, "rb") as f:
        return pq.read_table(f)


def check_root(root: str) -> tuple[int, list[tuple[str, str]]]:
    """Open the footer of every Parquet file under root: (number readable, [(path, error)] corrupt)."""
    fs, base = filesystem(root)
    ok, bad = 0, []
    for path in sorted(fs.glob(f"{base}/*/run=*/*.parquet")):
        try:
            with fs.open(path, "rb") as f:
                pq.read_metadata(f)
            ok += 1
        except Exception as e:  # any unreadable footer is reported, with its path
            bad.append((path, f"{type(e).__name__}: {e}"))
    return ok, bad


def count_rows(root: str, table: str, run_id: str, name: str) -> int:
    fs, _ = filesystem(root)
    with fs.open(table_path(root, table, run_id, name), "rb") as f:
        return pq.read_metadata(f).num_rows


def read_run(root: str, table: str, run_id: str, columns: list[str] | None = None) -> pa.Table:
    """Every file of one run's table that readers see (storage/layout.py), concatenated in the current schema
    (empty table with the schema if none); `columns`: only these of the table's columns are read."""
    fs, base = filesystem(root)
    files = list_files(fs, base, table, run_id)
    schema = schema_for(table)
    if columns is not None:
        unknown = [c for c in columns if c not in schema.names]
        if unknown:
            raise ValueError(f"table {table!r} has no column(s) {unknown}; its columns are {schema.names}")
        schema = pa.schema([schema.field(c) for c in columns])
    out = []
    for path in visible(fs, files):
        with fs.open(path, "rb") as f:
            pf = pq.ParquetFile(f)
            have = [c for c in schema.names if c in pf.schema_arrow.names] if columns is not None else None
            data = pf.read(columns=have) if have != [] else pa.table({"_": pa.nulls(pf.metadata.num_rows)})
            out.append(conform(data, table, columns))
    return pa.concat_tables(out) if out else schema.empty_table()


def rows_where(data: pa.Table, where: dict[str, Any] | None = None,
               columns: tuple[str, ...] | None = None) -> list[dict]:
    """The rows whose columns equal `where`'s values (None: the column is null), as dicts, with only `columns`
    when given; filtering and selecting in Arrow first, since turning rows into dicts is the slow part of reading
    a large run's table in Python."""
    for col, value in (where or {}).items():
        if col in data.column_names:
            data = data.filter(pc.is_null(data[col]) if value is None else pc.equal(data[col], value))
    if columns is not None:
        data = data.select([c for c in columns if c in data.column_names])
    return data.to_pylist()
