"""One namespace: the package installs as `mapcap` only, nothing named tasks/flows/storage/toy in site-packages."""
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CLASHING = ("tasks", "flows", "storage", "toy", "cli", "explorer")


def test_the_wheel_holds_only_the_mapcap_package(tmp_path):
    src = tmp_path / "src"  # a copy: building writes build/ and *.egg-info beside the sources
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(".git", ".venv", "build", "*.egg-info", "mapcap-results",
                                                             "__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(src)],
                   check=True, capture_output=True, timeout=600)
    (wheel,) = tmp_path.glob("mapcap-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"mapcap"}
    for sub in CLASHING:
        assert f"mapcap/{sub}/__init__.py" in names
    assert "mapcap/toy/weights/toy_clip.pt" in names and "mapcap/toy/concepts.json" in names
    assert "mapcap/tasks/pipeline/driver.py" in names
    top_level = next(n for n in names if n.endswith("top_level.txt"))
    assert zipfile.ZipFile(wheel).read(top_level).decode().split() == ["mapcap"]


def test_only_mapcap_is_importable_from_the_installed_package(tmp_path):
    code = ("import importlib.util as u, mapcap.tasks.pipeline.driver, mapcap.flows.explain; "
            f"print([n for n in {CLASHING!r} if u.find_spec(n) is not None])")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_tasks_never_import_the_toy_world():
    offenders = [str(p.relative_to(REPO)) for p in (REPO / "tasks").rglob("*.py")
                 if "mapcap.toy" in p.read_text() or "from toy" in p.read_text()]
    assert offenders == []
