"""The docs: the README stays short and links only to pages that exist, the generated pages are current, and the
site builds with `mkdocs build --strict` (no network)."""
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "docs"))
from gen_index import index_text  # noqa: E402


def test_the_readme_is_short_and_its_links_resolve():
    text = (REPO / "README.md").read_text()
    assert len(text.split()) <= 1500
    targets = re.findall(r"\]\(([^)#\s]+)", text)
    local = [t for t in targets if not t.startswith(("http://", "https://"))]
    assert "docs/usage.md" in local and "docs/cli.md" in local
    assert [t for t in local if not (REPO / t).exists()] == []


def test_the_site_home_is_the_readme():
    assert (REPO / "docs" / "index.md").read_text() == index_text(), "run python docs/gen_index.py"


def test_the_cli_reference_is_generated_from_the_code():
    from mapcap.cli.reference import reference

    assert (REPO / "docs" / "cli.md").read_text() == reference(), "run python -m mapcap.cli.reference > docs/cli.md"


def test_the_site_builds_strictly(tmp_path):
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path / "site")],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "site" / "cli" / "index.html").exists() and (tmp_path / "site" / "index.html").exists()
