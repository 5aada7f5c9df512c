"""Pack this project's dependencies that a GPU machine lacks into one tarball, for a machine with no package index.

    python bench/device_deps.py --have have.txt --out .whl/site.tar.xz [--python 3.12]

`have.txt` lists the distributions the machine already has (one name per line; pip list's names or the device
README's list). The closure of `mapcap`'s requirements (from this environment's installed metadata, markers
evaluated for the target Python on x86-64 Linux) minus those is downloaded as wheels for that Python, installed
into a folder and packed with xz (~40 MB for Prefect, open_clip, DuckDB and pydantic with their needs). There:

    mkdir -p /tmp/site && tar -C /tmp/site -xJf site.tar.xz && export PYTHONPATH=/tmp/site
    python3 -m pip install --no-deps --no-build-isolation --target /tmp/site .   # mapcap itself
"""
from __future__ import annotations

import argparse
import importlib.metadata as md
import subprocess
import sys
import tempfile
from pathlib import Path

from packaging.requirements import Requirement

PLATFORMS = ["manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux_2_24_x86_64", "manylinux_2_27_x86_64",
             "manylinux_2_28_x86_64", "manylinux_2_31_x86_64", "manylinux_2_34_x86_64", "manylinux1_x86_64",
             "manylinux_2_5_x86_64"]
NEVER = {"torch", "torchvision", "triton"}  # the GPU machine's own builds stay


def norm(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def closure(root: str, python: str) -> dict[str, str]:
    """{name: installed version} of `root` and everything it requires here, for `python` on x86-64 Linux.
    Markers are evaluated with every extra a requirement names (extras of needed packages count: SQLAlchemy's
    asyncio needs greenlet for Prefect's server)."""
    env = {"python_version": python, "python_full_version": f"{python}.0", "sys_platform": "linux",
           "platform_system": "Linux", "platform_machine": "x86_64", "implementation_name": "cpython",
           "platform_python_implementation": "CPython", "os_name": "posix", "extra": ""}
    seen: dict[str, str] = {}
    done: set[tuple[str, frozenset]] = set()
    todo = [(root, frozenset())]
    while todo:
        name, extras = todo.pop()
        if (norm(name), extras) in done:
            continue
        done.add((norm(name), extras))
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            print(f"not installed here, skipped: {name}", file=sys.stderr)
            continue
        key = norm(name)
        seen[key] = dist.version
        for line in dist.requires or []:
            req = Requirement(line)
            wanted = [""] + sorted(extras)
            if req.marker and not any(req.marker.evaluate(env | {"extra": e}) for e in wanted):
                continue
            todo.append((req.name, frozenset(req.extras)))
    return seen


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--have", required=True, help="file: distributions the target machine has, one per line")
    ap.add_argument("--out", required=True, help="the tarball to write (.tar.xz)")
    ap.add_argument("--python", default="3.12", help="the target's Python (major.minor)")
    args = ap.parse_args()
    have = {norm(n) for n in Path(args.have).read_text().split()}
    need = {n: v for n, v in closure("mapcap", args.python).items()
            if n not in have and n != "mapcap" and n not in NEVER and not n.startswith(("nvidia-", "cuda-"))}
    print(f"{len(need)} distributions to carry: {' '.join(sorted(need))}")
    plat = [a for p in PLATFORMS for a in ("--platform", p)]
    tag = ["--only-binary=:all:", "--python-version", args.python, "--implementation", "cp", *plat]
    with tempfile.TemporaryDirectory() as tmp:
        wheels, site = Path(tmp) / "wheels", Path(tmp) / "site"
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", *tag, "-d", str(wheels),
                        *(f"{n}=={v}" for n, v in sorted(need.items()))], check=True)
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-compile", *tag,
                        "--target", str(site), *map(str, sorted(wheels.glob("*.whl")))], check=True)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["tar", "-C", str(site), "-cJf", args.out, "."], check=True)
    print(f"{args.out}: {Path(args.out).stat().st_size / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
