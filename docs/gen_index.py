"""docs/index.md is the README with its links made relative to docs/ (the site's home page): one text, two places.
`python docs/gen_index.py` rewrites it; tests/test_docs.py checks that it is current."""
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def index_text() -> str:
    text = (ROOT / "README.md").read_text()
    return text.replace("](docs/", "](").replace("`.ci/run`", "`.ci/run` in the repository")


if __name__ == "__main__":
    (ROOT / "docs" / "index.md").write_text(index_text())
