"""Checks of a run's command line that need no model, run before torch, open_clip or Prefect load and before
Prefect's temporary server starts: a wrong path or value (a PREFECT_HOME Prefect cannot create too) answers in
well under a second, with the fix."""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from mapcap.cli.flags import flag_values, read_params_file
from mapcap.tasks.names import check_dataset_path, check_run_name


def check_dataset(dataset: str, named: list[str]) -> None:
    """The DATASET of a run: a plugin's named dataset ('toy'), or what tasks/names.check_dataset_path accepts
    (a URL, a folder, a manifest; stat only). On top of it, the command line knows the plugins' dataset names (a
    bare word that is none of them is a typo, not a plugin's) and says how to explain one image."""
    if dataset in named:
        return
    path = Path(dataset).expanduser()
    if path.is_file():
        from mapcap.tasks.data import IMAGE_EXTENSIONS  # (numpy, PIL: only for this rare case)

        if path.suffix.lower() in IMAGE_EXTENSIONS:
            raise ValueError(f"{dataset} is one image, and a run classifies a dataset (a folder of class folders). "
                             f"To explain this image: mapcap relevancy --image {dataset} --text 'a photo of a cat' "
                             f"--text 'a photo of a dog' --out maps.npz, or open it in the explorer (mapcap explorer)")
    if "://" not in dataset and not path.exists():  # a missing path, or a bare word the plugins do not name
        raise ValueError(f"dataset {dataset} does not exist: pass a folder with one sub-folder of images per class, "
                         f"a manifest (.csv or .parquet with columns path,label), or one of {named}")
    check_dataset_path(dataset)  # the rest: a FIFO or device, a file that is not a manifest


def check_prefect_home(home: str | None) -> None:
    """`PREFECT_HOME` (None: unset, Prefect's ~/.prefect) as Prefect can use it. Prefect creates the folder
    itself, one level only (no parents, mode 0700), and on failure only warns; its temporary server then fails
    to open its database, in thousands of lines of tracebacks. A missing parent is refused here, not created: it
    is most often a typo or an unmounted disk, and Prefect does not create it either."""
    if not home:
        return
    path = Path(home).expanduser()
    if path.exists() and not path.is_dir():
        raise ValueError(f"PREFECT_HOME {home} is a file, not a folder: point PREFECT_HOME at a folder, or unset "
                         f"it (Prefect then uses ~/.prefect)")
    if not path.exists() and not path.parent.is_dir():
        raise ValueError(f"PREFECT_HOME {home}: its parent folder {path.parent} does not exist (Prefect creates "
                         f"the home folder only): create it (mkdir -p {path.parent}) or unset PREFECT_HOME "
                         f"(Prefect then uses ~/.prefect)")


def check_run(args: argparse.Namespace, table: dict, fixed: dict | None = None) -> None:
    """Every check of a flow command's arguments that needs no model (a ValueError naming the value and fix)."""
    base = read_params_file(args.params) if getattr(args, "params", None) else {}
    given = {**base, **flag_values(args, table), **(fixed or {})}
    defaults = {s["dest"]: s["default"] for s in table["fields"]}
    check_prefect_home(os.environ.get("PREFECT_HOME"))
    check_dataset(str(given.get("dataset", defaults["dataset"])), table["datasets"])
    if given.get("run_name"):
        check_run_name(given["run_name"])
