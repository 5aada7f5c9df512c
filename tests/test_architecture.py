"""The house's rules, read from the source: imports run one way (no circle, also through imports inside
functions), tasks never reach up into flows/cli/explorer, every imported package is declared, modules stay small."""
import ast
import re
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = {"cli": "mapcap.cli", "explorer": "mapcap.explorer", "flows": "mapcap.flows", "tasks": "mapcap.tasks",
            "storage": "mapcap.storage", "toy": "mapcap.toy"}
MAX_LINES = 300


def _modules() -> dict[str, Path]:
    out = {"mapcap": REPO / "mapcap" / "__init__.py"}
    for top, pkg in PACKAGES.items():
        for p in (REPO / top).rglob("*.py"):
            parts = [x for x in p.relative_to(REPO / top).with_suffix("").parts if x != "__init__"]
            out[".".join([pkg, *parts])] = p
    return out


MODULES = _modules()


def _imports(path: Path) -> list[str]:
    """Every module an import statement names (at any depth: function-level imports count too)."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out += [f"{node.module}.{a.name}" for a in node.names] + [node.module]
    return out


def _graph() -> dict[str, set[str]]:
    graph = {}
    for name, path in MODULES.items():
        graph[name] = {m for m in _imports(path) if m in MODULES and m != name}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(v: str) -> list[str] | None:
        state[v] = 1
        stack.append(v)
        for w in sorted(graph[v]):
            if state.get(w) == 1:
                return stack[stack.index(w):] + [w]
            if w not in state and (found := visit(w)):
                return found
        stack.pop()
        state[v] = 2
        return None

    for v in sorted(graph):
        if v not in state and (found := visit(v)):
            return found
    return None


def test_the_import_graph_has_no_circle():
    assert _cycle(_graph()) is None, " -> ".join(_cycle(_graph()))


def test_a_circle_would_be_found():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_tasks_and_storage_never_import_the_layers_above():
    above = ("mapcap.flows", "mapcap.cli", "mapcap.explorer")
    offenders = [(n, m) for n, deps in _graph().items() if n.startswith(("mapcap.tasks", "mapcap.storage"))
                 for m in deps if m.startswith(above)]
    offenders += [(n, m) for n, deps in _graph().items() if n.startswith("mapcap.storage")
                  for m in deps if m.startswith("mapcap.tasks")]
    assert offenders == []


def _declared() -> set[str]:
    meta = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    reqs = meta["dependencies"] + [r for extra in meta["optional-dependencies"].values() for r in extra]
    return {re.split(r"[<>=!~\[ ;]", r, maxsplit=1)[0].lower().replace("_", "-") for r in reqs}


IMPORT_NAMES = {"PIL": "pillow", "skimage": "scikit-image", "yaml": "pyyaml", "open_clip": "open-clip-torch",
                "prefect_ray": "prefect-ray", "sklearn": "scikit-learn", "s3fs": "s3fs", "moto": "moto"}


def test_every_imported_package_is_declared():
    stdlib = set(sys.stdlib_module_names)
    used = set()
    for path in MODULES.values():
        used |= {m.split(".")[0] for m in _imports(path)}
    third = {m for m in used if m not in stdlib and m != "mapcap"}
    missing = sorted(m for m in third if IMPORT_NAMES.get(m, m).lower().replace("_", "-") not in _declared())
    assert missing == [], f"imported but not in pyproject.toml: {missing}"


def test_modules_stay_small():
    big = {n: len(p.read_text().splitlines()) for n, p in MODULES.items()}
    assert {n: k for n, k in big.items() if k > MAX_LINES} == {}
