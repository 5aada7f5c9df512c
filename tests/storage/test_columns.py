"""Tables from numpy columns (storage/columns.py): what a dict per row gave, without a Python float per cell."""
import numpy as np
import pyarrow as pa
import pytest

from mapcap.storage.columns import as_table, list_column, list_values, table_of


def test_relevancy_table_from_columns_equals_the_rows_it_replaces():
    maps = np.arange(12, dtype=np.float32).reshape(3, 4)
    t = table_of("relevancy", 3, {"run_id": "r", "image_id": ["a", "b", "c"], "grid": 2, "map": list_column(maps),
                                  "start_layer": None, "peak": np.array([3, 3, 3])})
    rows = [{"run_id": "r", "image_id": i, "grid": 2, "map": m.tolist(), "start_layer": None, "peak": 3}
            for i, m in zip("abc", maps)]
    assert t.equals(as_table("relevancy", rows))
    assert [v.tolist() for v in list_values(t["map"], np.array([2, 0]))] == [maps[2].tolist(), maps[0].tolist()]
    sliced = pa.chunked_array([t["map"].combine_chunks().slice(1)])
    assert [v.tolist() for v in list_values(sliced)] == maps[1:].tolist()


def test_a_column_of_the_wrong_length_names_it():
    with pytest.raises(ValueError, match="'image_id' of relevancy has 2 values, not 3"):
        table_of("relevancy", 3, {"image_id": ["a", "b"]})
