"""Compaction: a finished run's per-shard files of each table rewritten into a few large files, and back.

Compacting writes each large file (with the sidecar of the original files' metadata first) before it deletes the
files it replaces; readers skip replaced files as soon as the large one exists (storage/layout.py), so they see
neither a gap nor a duplicate at any moment. `expand_run` restores the original files exactly (rows and
metadata), so resuming or reprocessing a compacted run works as before; the explain flow calls it first.
"""
from __future__ import annotations

import gzip
import json
import logging
import uuid

import pyarrow as pa
import pyarrow.parquet as pq

from mapcap.storage.layout import Part, is_compacted, list_files, parts, read_part, sidecar
from mapcap.storage.schemas import META_PARTS, TABLES
from mapcap.storage.writer import atomic_write, filesystem, read_run, write_raw

log = logging.getLogger(__name__)

COMPACT_BYTES = 256 << 20  # source bytes per large file: a few large files per table, each quick to scan
SKIP = ("runs",)  # one file per run already


def _groups(ps: list[Part], sizes: dict[str, int], target: int) -> list[list[Part]]:
    groups: list[list[Part]] = [[]]
    total = 0
    for p in ps:
        if groups[-1] and total + sizes[p.path] > target:
            groups.append([])
            total = 0
        groups[-1].append(p)
        total += sizes[p.path]
    return [g for g in groups if g]


def _write_compacted(fs, folder: str, table: str, group: list[Part]) -> str:
    """One large file of the group's parts (sidecar first, then the file: it hides the parts when it appears)."""
    datas = [read_part(fs, p) for p in group]
    offsets, doc, metas = 0, [], {}
    for p, d in zip(group, datas):
        doc.append({"name": p.name, "offset": offsets, "rows": d.num_rows})
        metas[p.name] = {k.decode(): v.decode() for k, v in p.meta.items()}
        offsets += d.num_rows
    data = pa.concat_tables(datas)
    data = data.replace_schema_metadata({b"mapcap.table": table.encode(),
                                         META_PARTS: json.dumps({"parts": doc}).encode()})
    final = f"{folder}/compact-{uuid.uuid4().hex[:12]}.parquet"
    blob = gzip.compress(json.dumps(metas).encode())
    atomic_write(fs, sidecar(final), lambda f: f.write(blob))
    atomic_write(fs, final, lambda f: pq.write_table(data, f, compression="zstd"))
    return final


def compact_run(root: str, run_id: str, target_bytes: int = COMPACT_BYTES) -> dict[str, tuple[int, int]]:
    """{table: (files before, files after)} for every table the run has more than one per-shard file of."""
    runs = read_run(root, "runs", run_id).to_pylist()
    status = runs[0]["status"] if runs else None
    if status != "finished":
        raise ValueError(f"run {run_id!r} under {root} is {status or 'not there'}: only a finished run can be "
                         f"compacted (finish it by rerunning with --run-name {run_id}; `mapcap runs` lists the runs)")
    fs, base = filesystem(root)
    out = {}
    for table in TABLES:
        files = list_files(fs, base, table, run_id)
        plain = {p: s for p, s in files.items() if not is_compacted(p)}
        if table in SKIP or len(plain) < 2:
            continue
        ps = parts(fs, table, plain)
        written = [_write_compacted(fs, f"{base}/{table}/run={run_id}", table, g)
                   for g in _groups(ps, plain, target_bytes)]
        for path in plain:  # every large file is in place: the originals can go
            fs.rm(path)
        out[table] = (len(plain), len(written))
        log.info("run %s %s: %d files compacted into %d", run_id, table, len(plain), len(written))
    return out


def expand_run(root: str, run_id: str) -> int:
    """Write back the original files of every compacted file of the run, then remove it; returns how many."""
    fs, base = filesystem(root)
    n = 0
    for table in TABLES:
        for path, size in list_files(fs, base, table, run_id).items():
            if not is_compacted(path):
                continue
            restored = parts(fs, table, {path: size})
            for p in restored:
                data = read_part(fs, p).replace_schema_metadata(p.meta)
                write_raw(root, f"{table}/run={run_id}/{p.name}.parquet", data)
            fs.rm(path)
            fs.rm(sidecar(path))
            n += 1
            log.info("run %s %s: %s expanded into %d files", run_id, table, path, len(restored))
    return n
