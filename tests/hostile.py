"""A hostile dataset folder, built at test time: what a messy NAS or a hostile user puts beside good images.

`EXPECTED` says, per entry, what a run must make of it: an `images` row that decodes (None), an `images` row with
a `failures` row of that error type, or a counted skip ("skip").
"""
from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

from PIL import Image

BOMB_SIDE = 10_000  # 100 MP of RGB (300 MB decoded) in a ~1.3 MB PNG: over the 64 MP budget
ODD = "odd name ü 'q\" ;$(x) #1.png"

# path relative to the dataset root -> None (decodes), an error type (a failures row), or "skip" (counted)
EXPECTED: dict[str, str | None] = {
    "cat/a.png": None, "cat/b.png": None, f"cat/{ODD}": None, "cat/dup-of-a.png": None, "dog/c.png": None,
    "dog/d.png": None, "dog/e.png": None, "dog/dup-of-a.png": None, "dog/outside.png": None,
    "cat/bomb.png": "TooManyPixels", "cat/big.jpg": "FileTooLarge", "cat/fifo.jpg": "NotARegularFile",
    "dog/link-to-fifo.jpg": "skip", "dog/loop.jpg": "OSError", "cat/empty.jpg": "UnidentifiedImageError",
    "cat/doc.jpg": "UnidentifiedImageError", "dog/archive.jpg": "UnidentifiedImageError",
    "loose.png": "skip", "cat/.hidden.png": "skip", "cat/notes.txt": "skip",
}


def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def bomb_png(side: int = BOMB_SIDE) -> bytes:
    """A valid all-black RGB PNG of side × side pixels: tiny on disk, side² × 3 bytes once decoded."""
    row = b"\0" * (1 + 3 * side)  # filter byte + pixels
    c = zlib.compressobj(9)
    body = b"".join(c.compress(row * 100) for _ in range(side // 100)) + c.compress(row * (side % 100)) + c.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", body) + chunk(b"IEND", b"")


def small_png(path: Path, colour: tuple[int, int, int]) -> None:
    Image.new("RGB", (32, 32), colour).save(path)


def hostile_folder(root: Path, cap_bytes: int = 256 * 1024 * 1024) -> Path:
    """The folder of EXPECTED under `root` (a class folder per animal), and an image outside it that a link
    points to. `cap_bytes`: the file-size cap the sparse big.jpg must pass."""
    data = root / "hostile"
    for d in ("cat", "dog"):
        (data / d).mkdir(parents=True)
    for i, name in enumerate(["cat/a.png", "cat/b.png", f"cat/{ODD}", "dog/c.png", "dog/d.png", "dog/e.png",
                              "loose.png", "cat/.hidden.png"]):
        small_png(data / name, (40 * i, 255 - 30 * i, 90))
    for dup in ("cat/dup-of-a.png", "dog/dup-of-a.png"):  # byte-identical to cat/a.png
        (data / dup).write_bytes((data / "cat/a.png").read_bytes())
    small_png(root / "outside.png", (1, 2, 3))
    os.symlink(root / "outside.png", data / "dog/outside.png")
    (data / "cat/bomb.png").write_bytes(bomb_png())
    with open(data / "cat/big.jpg", "wb") as f:  # sparse: no disk used, over the cap
        f.write(b"\xff\xd8\xff\xe0")
        f.truncate(cap_bytes + 1)
    os.mkfifo(data / "cat/fifo.jpg")
    os.symlink(data / "cat/fifo.jpg", data / "dog/link-to-fifo.jpg")
    os.symlink(data / "dog/loop.jpg", data / "dog/loop.jpg")  # a link to itself
    (data / "cat/empty.jpg").write_bytes(b"")
    (data / "cat/doc.jpg").write_bytes(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj << >> endobj\ntrailer\n%%EOF\n")
    (data / "dog/archive.jpg").write_bytes(b"PK\x03\x04" + b"\0" * 60)
    (data / "cat/notes.txt").write_text("not an image")
    return data
