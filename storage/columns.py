"""Tables built from columns (numpy arrays straight from tensors) instead of one dict per row.

A relevancy row holds a map of 196 floats: `.tolist()` and a dict per row, then Arrow's conversion back from
Python floats, cost more than computing the map on a GPU. Stages hand these tables to the driver as they are.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mapcap.storage.layout import conform
from mapcap.storage.schemas import schema_for


def list_column(values: np.ndarray) -> pa.ListArray:
    """(N, K) array → a list column of N rows of K values each (no copy of the values)."""
    n, k = values.shape
    return pa.ListArray.from_arrays(pa.array(np.arange(0, n * k + 1, k, dtype=np.int32)),
                                    pa.array(np.ascontiguousarray(values).ravel()))


def table_of(table: str, n: int, columns: dict[str, Any]) -> pa.Table:
    """A table in `table`'s schema from columns: arrays or lists of n values, or one scalar repeated n times;
    columns not given are null."""
    schema = schema_for(table)
    arrays = {}
    for name, col in columns.items():
        field = schema.field(name)
        if isinstance(col, pa.Array | pa.ChunkedArray):
            arrays[name] = col.cast(field.type)
        elif isinstance(col, np.ndarray | Sequence) and not isinstance(col, str):
            arrays[name] = pa.array(col, field.type)
        else:
            arrays[name] = pa.array(np.full(n, None) if col is None else [col] * n, field.type)
        if len(arrays[name]) != n:
            raise ValueError(f"column {name!r} of {table} has {len(arrays[name])} values, not {n}")
    return conform(pa.table(arrays) if arrays else pa.table({"_": pa.nulls(n)}), table)


def as_table(table: str, rows: list[dict] | pa.Table) -> pa.Table:
    """Rows as Arrow in the table's schema (a table passes through)."""
    return conform(rows, table) if isinstance(rows, pa.Table) else pa.Table.from_pylist(rows, schema=schema_for(table))


def list_values(col: pa.ChunkedArray | pa.Array, rows: np.ndarray | None = None) -> list[np.ndarray]:
    """The values of a list column, one numpy array per row (of `rows` only when given), without Python floats."""
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    if rows is not None:
        arr = arr.take(pa.array(rows))
    offsets = arr.offsets.to_numpy()
    offsets = offsets - offsets[0]  # a slice's offsets count from its first value
    values = pc.list_flatten(arr).to_numpy(zero_copy_only=False)
    return [values[a:b] for a, b in zip(offsets[:-1], offsets[1:])]
