"""Checks of a run's command line that need no model, run before torch, open_clip or Prefect load and before
Prefect's temporary server starts: a wrong path or value answers in well under a second, with the fix."""
from __future__ import annotations

import argparse
from pathlib import Path

from mapcap.cli.flags import flag_values, read_params_file
from mapcap.tasks.names import check_run_name

MANIFESTS = (".csv", ".parquet")


def check_dataset(dataset: str, named: list[str]) -> None:
    """The DATASET of a run: a plugin's named dataset ('toy'), a remote URL, a folder or a manifest."""
    if dataset in named or "://" in dataset:
        return
    path = Path(dataset).expanduser()
    if not path.exists():
        raise ValueError(f"dataset {dataset} does not exist: pass a folder with one sub-folder of images per class, "
                         f"a manifest (.csv or .parquet with columns path,label), or one of {named}")
    if path.is_dir() or path.suffix.lower() in MANIFESTS:
        return
    from mapcap.tasks.data import IMAGE_EXTENSIONS  # (numpy, PIL: only for this rare case)

    if path.suffix.lower() in IMAGE_EXTENSIONS:
        raise ValueError(f"{dataset} is one image, and a run classifies a dataset (a folder of class folders). To "
                         f"explain this image: mapcap relevancy --image {dataset} --text 'a photo of a cat' --text "
                         f"'a photo of a dog' --out maps.npz, or open it in the explorer (mapcap explorer)")
    raise ValueError(f"dataset {dataset} is a file but not a manifest: pass a folder of class folders, or a "
                     f"manifest ending in {' or '.join(MANIFESTS)}")


def check_run(args: argparse.Namespace, table: dict, fixed: dict | None = None) -> None:
    """Every check of a flow command's arguments that needs no model (a ValueError naming the value and fix)."""
    base = read_params_file(args.params) if getattr(args, "params", None) else {}
    given = {**base, **flag_values(args, table), **(fixed or {})}
    defaults = {s["dest"]: s["default"] for s in table["fields"]}
    check_dataset(str(given.get("dataset", defaults["dataset"])), table["datasets"])
    if given.get("run_name"):
        check_run_name(given["run_name"])
