"""Shared fixtures: a temp PREFECT_HOME, one Prefect test harness per session, a small toy dataset."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

_HOME = tempfile.mkdtemp(prefix="mapcap-prefect-home-")
os.environ["PREFECT_HOME"] = _HOME  # before prefect is imported anywhere
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")  # no network here
os.environ["MAPCAP_TOY_DATA"] = str(Path(_HOME) / "toy-data")

import mapcap  # noqa: E402,F401  (before any test module imports torch: it sets the OpenMP wait policy)
import pytest  # noqa: E402


@pytest.fixture(scope="session")
def prefect_harness():
    """One real (temporary, SQLite) Prefect API for every flow test of the session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=300):
        yield


@pytest.fixture(scope="session")
def toy_dir(tmp_path_factory) -> Path:
    """A small toy test split: 8 classes × 6 images, ImageFolder + manifest."""
    from mapcap.toy.dataset import write_toy_dataset

    root = tmp_path_factory.mktemp("toy") / "data"
    write_toy_dataset(root, n_per_class=6, seed=4321, split="test")
    return root


@pytest.fixture(scope="session")
def toy_model():
    from mapcap.tasks.models import load_model, resolve_spec

    return load_model(resolve_spec("toy", "toy", "cpu", "fp32"))
