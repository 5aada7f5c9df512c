"""Run names are run ids as typed, or refused at once; the checks that need no model are light to import."""
import os
import subprocess
import sys

import pytest
from pydantic import ValidationError

from mapcap.tasks.names import MAX_RUN_NAME, check_dataset_path, check_run_name
from mapcap.tasks.pipeline.params import ExplainParams
from mapcap.tasks.pipeline.plan import make_run_id


@pytest.mark.parametrize("name", ["a", "run-1", "my_run.v2", "2026-12-07", "_x", "A" * MAX_RUN_NAME])
def test_a_safe_name_is_the_run_id_as_typed(name):
    assert check_run_name(name) == name == make_run_id(name, "0123456789ab")
    assert ExplainParams(run_name=name).run_name == name


@pytest.mark.parametrize("name, why", [("a'b", "\"'\""), ("a b", "' '"), ("a/b", "'/'"), ("..", "starts with"),
                                       (".hidden", "starts with"), ("-x", "starts with"), ("ü", "'ü'"),
                                       ("x" * (MAX_RUN_NAME + 1), "101 characters")])
def test_an_unsafe_name_is_refused_naming_the_rule(name, why):
    with pytest.raises(ValueError, match=r"letters, digits, '-', '_' and '\.'.*at most 100") as e:
        check_run_name(name)
    assert why in str(e.value)
    with pytest.raises(ValidationError, match="run name"):
        ExplainParams(run_name=name)
    with pytest.raises(ValueError):
        make_run_id(name, "0123456789ab")


def test_two_names_never_become_one_run():
    """"a'b" and "a b" both became run id 'a-b' (the second run replaced the first's rows)."""
    ids = set()
    for name in ("a'b", "a b", "a-b"):
        try:
            ids.add(make_run_id(name, "0123456789ab"))
        except ValueError:
            pass
    assert ids == {"a-b"}
    assert make_run_id(None, "0123456789ab").endswith("-012345")


def test_dataset_paths(tmp_path):
    (tmp_path / "cat").mkdir()
    (tmp_path / "m.csv").write_text("path,label\n")
    (tmp_path / "notes.txt").write_text("x")
    os.mkfifo(tmp_path / "pipe.csv")
    assert check_dataset_path(str(tmp_path)) == str(tmp_path)
    assert check_dataset_path(str(tmp_path / "m.csv")).endswith("m.csv")
    assert check_dataset_path("toy") == "toy" and check_dataset_path("s3://b/data") == "s3://b/data"
    with pytest.raises(ValueError, match="No such file"):
        check_dataset_path(str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="not a manifest"):
        check_dataset_path(str(tmp_path / "notes.txt"))
    with pytest.raises(ValueError, match="not a folder or a regular file"):
        check_dataset_path(str(tmp_path / "pipe.csv"))


def test_the_checks_import_nothing_heavy():
    code = ("import sys; import mapcap.tasks.names, mapcap.tasks.limits; "
            "heavy = [m for m in ('torch', 'prefect', 'open_clip', 'PIL', 'numpy') if m in sys.modules]; "
            "print(heavy); sys.exit(1 if heavy else 0)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
