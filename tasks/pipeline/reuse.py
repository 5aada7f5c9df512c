"""Reuse by content: a shard stage computes only the images that no earlier run in the root already did with
the same stage config (hash chained through upstream stages, without the shard's inputs); the rows of the others
are copied from that run's files into this run's (copied, not referenced: a run's tables stay self-contained,
so deleting or compacting an old run never changes a newer one, and readers need no indirection).

An image's key is (content id, label): the label decides the label target's map and the correctness columns.
Images whose bytes cannot be read, or whose content appears twice in the shard, are always computed.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
from pathlib import Path
from typing import Any

import pyarrow as pa

from mapcap.storage.reuse_index import Key, Stat, copy_rows, find_reusable, known_files, merged, reuse_meta, rows_without
from mapcap.storage.schemas import schema_for
from mapcap.tasks.data import file_id
from mapcap.tasks.limits import ImageLoadError, hash_file
from mapcap.tasks.provenance import config_hash, to_jsonable
from mapcap.tasks.pipeline.base import Rows, Stage, get_stage, upstream
from mapcap.tasks.pipeline.context import StageContext



@functools.lru_cache(maxsize=64)
def _file_fingerprint(path: str, size: int, mtime: float) -> str:
    """SHA-256 of a checkpoint, once per process and file version (a few seconds for a GB)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            h.update(chunk)
    return h.hexdigest()[:16]


def weights_of(cfg: Any) -> list[str]:
    """Fingerprints of the local files a config names (a checkpoint as ModelSpec.pretrained, a captioner's
    `path`), so retrained weights at the same path are not mistaken for the old ones."""
    out = []
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        for f in dataclasses.fields(cfg):
            v = getattr(cfg, f.name)
            if isinstance(v, str) and f.name in ("pretrained", "path") and v and Path(v).is_file():
                st = Path(v).stat()
                out.append(_file_fingerprint(v, st.st_size, st.st_mtime))
            elif dataclasses.is_dataclass(v):
                out += weights_of(v)
    return out


def content_hashes(plans: list) -> dict[str, str]:
    """{stage: hash of its name, version, config, weights and upstream stages' hashes}: the shard's inputs left
    out, so that it names the work for any image, in any run."""
    out: dict[str, str] = {}
    for sp in plans:
        stage = get_stage(sp.name)
        out[sp.name] = config_hash("by-content", stage.name, stage.version, to_jsonable(sp.config),
                                   weights_of(sp.config), {d: out[d] for d in upstream(sp.name)})
    return out


def _stat(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None  # not a local file: hashed (and if unreadable, the stage records the failure)
    return st.st_size, st.st_mtime_ns


def _content_id(path: str, stat: tuple[int, int] | None, known: Stat | None, ctx: StageContext) -> str | None:
    """The file's content id: the one an earlier run recorded when size and mtime (ns) are unchanged (as rsync's
    quick check: a nightly run does not read every old file again), else the SHA-256 of its bytes (read in
    chunks; only a regular file within the run's limits is opened)."""
    if stat is not None and known is not None and (known[0], known[1]) == stat:
        return known[2]
    try:
        return hash_file(path, ctx.pictures.limits)
    except ImageLoadError:
        return None  # unreadable or refused: computed, and the stage records the failure


def shard_keys(ctx: StageContext) -> dict[str, Key]:
    """{path: (content id, label)} of the shard's items that can be reused (readable, content unique)."""
    if ctx.shared.content_ids is None:  # hashed once per shard
        paths = [it.path for it in ctx.items]
        stats = {p: _stat(p) for p in paths}
        known = known_files(ctx.root)
        ids = ctx.map(lambda p: _content_id(p, stats[p], known.get(p), ctx), paths)
        ctx.shared.content_ids = dict(zip(paths, ids))
        ctx.shared.files = {p: (*stats[p], i) for p, i in zip(paths, ids) if i and stats[p]}
    ids = ctx.shared.content_ids
    count: dict[str, int] = {}
    for it in ctx.items:
        if ids.get(it.path):
            count[ids[it.path]] = count.get(ids[it.path], 0) + 1
    return {it.path: (ids[it.path], it.label) for it in ctx.items if ids.get(it.path) and count[ids[it.path]] == 1}


def reused_rows(stage: Stage, ctx: StageContext, files: list[tuple[str, str]], reuse_hash: str,
                keys: dict[str, Key]) -> tuple[dict[str, pa.Table], set[str]]:
    """({table: rows copied for this run and shard, as Arrow}, the image ids they cover) from earlier runs'
    parts."""
    primary = files[1][0]  # the stage's first table; files[0] is its failures file
    new_ids = {k[0]: file_id(k[0], p) for p, k in keys.items()}  # content id -> the image id of its file here
    paths = {file_id(k[0], p): p for p, k in keys.items()}
    contents = {file_id(k[0], p): k[0] for p, k in keys.items()}
    out: dict[str, list[pa.Table]] = {t: [] for t, _ in files}
    covered: set[str] = set()
    for part, hit in find_reusable(ctx.root, primary, reuse_hash, set(keys.values())):
        ids = {old: new_ids[k[0]] for k, old in hit.items()}
        names = [(t, part.name + n[len(files[1][1]):]) for t, n in files]  # the same files of that part
        copied = [copy_rows(ctx.root, t, part.run_id, n, ids, {"run_id": ctx.run_id, "shard": ctx.shard}, paths,
                            contents) for t, n in names]
        if any(c is None for c in copied):  # a file of that part is missing: not reusable
            continue
        for (t, _), c in zip(files, copied):
            out[t].append(c)
        covered |= set(ids.values())
    return {t: pa.concat_tables(parts) if parts else schema_for(t).empty_table() for t, parts in out.items()}, covered


def compute(stage: Stage, cfg: Any, ctx: StageContext, files: list[tuple[str, str]], reuse_hash: str | None,
            force: bool) -> tuple[dict[str, Rows], dict[str, int], dict[bytes, bytes]]:
    """The stage's rows (reused ones included, failures under 'failures'), rows reused per table, and the
    file metadata that lets later runs reuse these rows. Without a reuse hash (per-run stages): plain compute."""
    if reuse_hash is None:
        return stage.compute(cfg, ctx), {}, {}
    keys = shard_keys(ctx)
    meta = reuse_meta(reuse_hash, [(c, label, file_id(c, p)) for p, (c, label) in keys.items()],
                      ctx.shared.files if "images" in stage.writes else None)
    if force:
        return stage.compute(cfg, ctx), {}, meta
    reused, covered = reused_rows(stage, ctx, files, reuse_hash, keys)
    if not covered:
        return stage.compute(cfg, ctx), {}, meta
    items, outputs = ctx.items, dict(ctx.outputs)
    try:  # the stage sees only the images left to compute
        ctx.items = [it for it in items if it.path not in keys or file_id(keys[it.path][0], it.path) not in covered]
        if ctx.items:
            for t in stage.reads:
                full = outputs[t] if t in outputs else outputs.setdefault(t, ctx.arrow(t))
                ctx.outputs[t] = rows_without(full, covered)
        out = stage.compute(cfg, ctx) if ctx.items else {}
    finally:
        ctx.items, ctx.outputs = items, outputs
    order = {file_id(keys[it.path][0], it.path): i for i, it in enumerate(items) if it.path in keys}
    rows = {t: merged(t, reused[t], out.get(t, []), order) for t in reused} | {
        k: v for k, v in out.items() if k not in reused}
    ctx.log.info("shard %s %s: %d image(s) reused from earlier runs, %d computed", ctx.shard, stage.name,
                 len(covered), len(items) - len(covered))
    return rows, {t: part.num_rows for t, part in reused.items()}, meta
