"""What the user names, checked before anything heavy starts (standard library only: the CLI calls these before
Prefect's server starts, so a bad name answers at once): a run name, a dataset path.

A run id is the name the user typed, or the name is refused: rewriting it ("a'b" and "a b" both becoming "a-b")
made two runs share one folder, the second silently replacing the first's rows, and made the typed name unknown
to `mapcap classes`.
"""
from __future__ import annotations

import os
import re
import stat
from pathlib import Path

MAX_RUN_NAME = 100  # characters: a folder name in every table, well under file systems' 255 bytes
RUN_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*")
RUN_NAME_RULE = (f"letters, digits, '-', '_' and '.', not starting with '.' or '-', at most {MAX_RUN_NAME} "
                 f"characters")
MANIFEST_SUFFIXES = (".csv", ".parquet", ".pq")


def check_run_name(name: str) -> str:
    """The run name as given when it is safe as a run id (a folder name in every table); else ValueError naming
    the allowed characters and length. Never rewritten."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"run name {name!r} is empty; use {RUN_NAME_RULE}")
    if len(name) > MAX_RUN_NAME:
        raise ValueError(f"run name {name[:40]!r}... is {len(name)} characters; use {RUN_NAME_RULE}")
    if not RUN_NAME.fullmatch(name):
        bad = sorted({c for c in name if not re.fullmatch(r"[A-Za-z0-9._-]", c)})
        why = f"it holds {''.join(bad)!r}" if bad else "it starts with '.' or '-'"
        raise ValueError(f"run name {name!r} cannot be a run id ({why}); use {RUN_NAME_RULE}")
    return name


def check_dataset_path(dataset: str) -> str:
    """The dataset as given when it can be one: a URL, an ImageFolder directory, a .csv/.parquet manifest file, or
    a bare name (a plugin's dataset such as 'toy', resolved later); else ValueError saying what was found and
    what is expected. Nothing is read beyond `stat` (a FIFO is never opened)."""
    if not dataset or "\0" in dataset:
        raise ValueError(f"dataset {dataset!r} is empty or not a path; pass an ImageFolder directory, a "
                         f".csv/.parquet manifest with path,label columns, or 'toy'")
    if "://" in dataset:
        return dataset
    path = Path(dataset).expanduser()
    try:
        st = os.stat(path)
    except OSError as e:
        if os.sep not in dataset and not dataset.startswith(("~", ".")):
            return dataset  # perhaps a registered dataset name; planning says if it is none
        raise ValueError(f"dataset {dataset!r}: {e.strerror or e}; pass an ImageFolder directory, a .csv/.parquet "
                         f"manifest with path,label columns, or 'toy'") from e
    if stat.S_ISDIR(st.st_mode):
        return dataset
    if not stat.S_ISREG(st.st_mode):
        raise ValueError(f"dataset {dataset!r} is not a folder or a regular file; pass an ImageFolder directory or a "
                         f".csv/.parquet manifest")
    if path.suffix.lower() not in MANIFEST_SUFFIXES:
        raise ValueError(f"dataset {dataset!r} is a file but not a manifest (.csv or .parquet with path,label "
                         f"columns); pass the folder of the images instead")
    return dataset
