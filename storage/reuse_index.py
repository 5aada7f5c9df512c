"""Finding a stage's earlier rows for images by content: every file a shard stage writes carries its config hash
without the shard's inputs and the (content id, label, image id) keys it covers; rows of covered images are
copied from the first earlier part (any run in the root, compacted or not) whose hash matches, under the image
ids of this run's files."""
from __future__ import annotations

import functools
import json

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mapcap.storage.layout import Part, list_files, parts, read_part
from mapcap.storage.schemas import META_REUSE, schema_for
from mapcap.storage.writer import filesystem

Key = tuple[str, str]  # (content id, label)


Stat = tuple[int, int, str]  # (size, mtime in ns, content id) of an image file


def reuse_meta(reuse_hash: str, keys: list[tuple[str, str, str]],
               files: dict[str, Stat] | None = None) -> dict[bytes, bytes]:
    """The file metadata that makes a file's rows reusable by later runs: `keys` (content id, label, the image id
    its rows carry); `files`: {path: (size, mtime_ns, content id)} of the shard's images, so a later run need not
    read an unchanged file again to know its id."""
    doc = {"hash": reuse_hash, "keys": sorted(keys)} | ({"files": files} if files else {})
    return {META_REUSE: json.dumps(doc).encode()}


def known_files(root: str, table: str = "images") -> dict[str, Stat]:
    """{path: (size, mtime_ns, content id)} recorded by earlier runs' `table` files in the root (the newest run's
    record of a path wins)."""
    fs, base = filesystem(root)
    out: dict[str, Stat] = {}
    for part in parts(fs, table, list_files(fs, base, table)):
        out.update(_files_of(part.meta.get(META_REUSE) or b""))
    return out


@functools.lru_cache(maxsize=4096)
def _files_of(doc: bytes) -> dict[str, Stat]:
    """A part's recorded files, parsed once per process (every shard of a run asks for all of them)."""
    if b'"files"' not in doc:
        return {}
    return {p: (int(v[0]), int(v[1]), str(v[2])) for p, v in json.loads(doc)["files"].items()}


def find_reusable(root: str, table: str, reuse_hash: str,
                  wanted: set[Key]) -> list[tuple[Part, dict[Key, str]]]:
    """[(earlier part of `table`, {wanted key it covers: the image id of its rows there})] with the same reuse
    hash; each key once."""
    fs, base = filesystem(root)
    left, found = set(wanted), []
    for part in parts(fs, table, list_files(fs, base, table)):
        doc = part.meta.get(META_REUSE)
        if not left:
            break
        if not doc or _hash_of(doc) != reuse_hash:
            continue
        ids = _keys_of(doc)
        hit = left & ids.keys()
        if hit:
            found.append((part, {k: ids[k] for k in hit}))
            left -= hit
    return found


@functools.lru_cache(maxsize=2048)
def _reuse_doc(doc: bytes) -> tuple[str, dict[Key, str]]:
    """(reuse hash, {key: image id of its rows}) of a part's reuse metadata, parsed once per process: each stage
    of each shard looks through every earlier part with its hash, and the new images of a grown dataset are in
    none of them. Parts written before files had ids of their own keep (image id = content id, label)."""
    d = json.loads(doc)
    return d["hash"], {(k[0], k[1]): k[2] if len(k) > 2 else k[0] for k in d["keys"]}


def _hash_of(doc: bytes) -> str:
    return _reuse_doc(doc)[0]


def _keys_of(doc: bytes) -> dict[Key, str]:
    return _reuse_doc(doc)[1]


def copy_rows(root: str, table: str, run_id: str, name: str, image_ids: dict[str, str], values: dict,
              paths: dict[str, str], contents: dict[str, str] | None = None) -> pa.Table | None:
    """The rows of these images ({image id there: image id here}) in the earlier part `name` of `run_id`'s table,
    under their ids here, with `values` (run id, shard) set and `path` and `content_id` (where the table has
    them) set from `paths` and `contents` by image id here; None when the part is gone."""
    fs, base = filesystem(root)
    found = [p for p in parts(fs, table, list_files(fs, base, table, run_id)) if p.name == name]
    if not found:
        return None
    data = read_part(fs, found[0], set(image_ids))
    if data.num_rows:
        renamed = pa.array([image_ids[i] for i in data["image_id"].to_pylist()], pa.string())
        data = data.set_column(data.column_names.index("image_id"), "image_id", renamed)
    for col, value in values.items():
        if col in data.column_names:
            i = data.column_names.index(col)
            data = data.set_column(i, col, pa.array([value] * data.num_rows, data.schema.field(col).type))
    for col, by_id in (("path", paths), ("content_id", contents or {})):
        if col in data.column_names and by_id:  # rows copied from before `content_id` existed get theirs too
            new = pa.array([by_id[i] for i in data["image_id"].to_pylist()], pa.string())
            data = data.set_column(data.column_names.index(col), col, new)
    return data


def merged(table: str, reused: pa.Table, computed: list[dict] | pa.Table, order: dict[str, int]) -> pa.Table:
    """Reused rows (Arrow, as copied) and newly computed rows (dicts or Arrow) as one table, rows in the shard's image
    order (`order`: image id → position; reused rows first among equals). Staying in Arrow matters: a grown
    dataset's shard is ~99 % reused rows, and turning 70,000 of them into dicts and back was most of a stage."""
    schema = schema_for(table)
    new = computed.select(schema.names).cast(schema) if isinstance(computed, pa.Table) else \
        pa.Table.from_pylist(computed, schema=schema) if computed else schema.empty_table()
    data = pa.concat_tables([reused.select(new.schema.names).cast(new.schema), new])
    if "image_id" not in data.column_names or not data.num_rows:
        return data
    keys = np.array([order.get(i, -1) for i in data["image_id"].to_pylist()])
    return data.take(pa.array(np.argsort(keys, kind="stable")))


def rows_without(data: pa.Table | list[dict], image_ids: set[str]) -> list[dict]:
    """The rows (as dicts) of images not in `image_ids`: what a stage still computes reads only these."""
    if isinstance(data, list):
        return [r for r in data if r.get("image_id") not in image_ids]
    if image_ids and "image_id" in data.column_names:
        data = data.filter(pc.invert(pc.is_in(data["image_id"], pa.array(sorted(image_ids), pa.string()))))
    return data.to_pylist()
