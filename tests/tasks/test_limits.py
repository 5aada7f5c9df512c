"""Bounded decoding: only regular files are opened, a file-size cap and a pixel budget are checked before any
pixel is decoded, and one file's error (MemoryError included) is that image's failures row, not its shard's end."""
import json
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from mapcap.storage.writer import read_run
from mapcap.tasks.data import Item, load_image
from mapcap.tasks.limits import (DecodeLimits, FileTooLarge, NotARegularFile, TooManyPixels, check_file,
                                 hash_file)
from mapcap.tasks.pipeline import images
from mapcap.tasks.pipeline.driver import run_shard
from tests.hostile import BOMB_SIDE, bomb_png, small_png
from tests.tasks.test_driver import setup  # noqa: F401  (the six-image stage chain)

REPO = Path(__file__).resolve().parents[2]


def test_a_fifo_is_refused_without_being_opened(tmp_path):
    fifo = tmp_path / "y.jpg"
    os.mkfifo(fifo)
    done: list[BaseException] = []

    def load() -> None:
        try:
            load_image(str(fifo))
        except BaseException as e:  # the refusal is what the test checks
            done.append(e)
    t = threading.Thread(target=load, daemon=True)
    t.start()
    t.join(timeout=10)
    assert not t.is_alive(), "reading a FIFO blocked"
    assert isinstance(done[0], NotARegularFile) and "FIFO" in str(done[0])
    with pytest.raises(NotARegularFile, match="folder"):
        check_file(str(tmp_path))


def test_limits_are_checked_before_reading_or_decoding(tmp_path):
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(bomb_png(1000))  # 1 MP: over a 0.5 MP budget
    with pytest.raises(TooManyPixels, match=r"1000x1000 .*--max-pixels"):
        load_image(str(bomb), limits=DecodeLimits(max_pixels=500_000))
    assert load_image(str(bomb), limits=DecodeLimits(max_pixels=1_000_000))[0].size == (1000, 1000)
    big = tmp_path / "big.jpg"
    with open(big, "wb") as f:
        f.truncate(2 * 1024 * 1024)
    with pytest.raises(FileTooLarge, match=r"2,097,152 bytes.*--max-file-mb"):
        load_image(str(big), limits=DecodeLimits(max_file_mb=1))
    with pytest.raises(FileTooLarge):
        hash_file(str(big), DecodeLimits(max_file_mb=1))


def test_one_files_memory_error_is_its_failures_row(setup, tmp_path, monkeypatch):
    items, plans = setup
    real = images.load_image

    def flaky(path, draft=None, limits=None):
        if path == items[2].path:
            raise MemoryError("out of memory decoding it")
        return real(path, draft, limits)
    monkeypatch.setattr(images, "load_image", flaky)
    root = str(tmp_path / "out")
    run_shard(plans[:1], root, "r", 0, items)
    rows = read_run(root, "images", "r").to_pylist()
    assert len(rows) == len(items) and sum(r["width"] is not None for r in rows) == len(items) - 1
    failures = read_run(root, "failures", "r").to_pylist()
    assert [(f["path"], f["error_type"]) for f in failures] == [(items[2].path, "MemoryError")]
    assert read_run(root, "predictions", "r").num_rows > 0


def test_a_bomb_does_not_raise_peak_memory(tmp_path):
    """Decoding a shard holding a 100 MP PNG (300 MB as pixels) beside small images: the peak resident memory
    of the decoding process grows by far less than the bomb would take (measured in a fresh process)."""
    (tmp_path / "a").mkdir()
    for i in range(4):
        small_png(tmp_path / "a" / f"{i}.png", (50 * i, 20, 200))
    (tmp_path / "a" / "bomb.png").write_bytes(bomb_png())
    script = textwrap.dedent("""
        import json, resource, sys
        from mapcap.tasks.data import Item
        from mapcap.tasks.pipeline.context import StageContext
        folder, max_pixels = sys.argv[1], int(sys.argv[2])
        from mapcap.tasks.limits import DecodeLimits
        import os
        items = [Item(os.path.join(folder, n), "a") for n in sorted(os.listdir(folder))]
        ctx = StageContext(folder, "r", 0, items, 2, limits=DecodeLimits(max_pixels=max_pixels))
        ctx.begin("classify")
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        decoded = ctx.decode_items()
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(json.dumps({"grew_mb": (after - before) / 1024, "failed": [f["error_type"] for f in ctx.failures.rows],
                          "decoded": sum(size is not None for _, _, size in decoded)}))
    """)
    out = subprocess.run([sys.executable, "-c", script, str(tmp_path / "a"), "64000000"], capture_output=True,
                         text=True, timeout=300, cwd=REPO, check=True)
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["failed"] == ["TooManyPixels"] and got["decoded"] == 4
    bomb_mb = BOMB_SIDE * BOMB_SIDE * 3 / 2**20
    assert got["grew_mb"] < bomb_mb / 4, got  # the bomb decoded would add ≥ 286 MB
