"""Datasets in, shards out: ImageFolder trees and manifests, robust image decoding, stable image ids."""
from __future__ import annotations

import hashlib
import io
import json
import logging
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from mapcap.storage.manifest import read_manifest
from mapcap.tasks.limits import DEFAULT_LIMITS, DecodeLimits, ImageLoadError, read_file

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
MIN_SIDE = 8  # pixels: smaller images cannot be resized meaningfully and become failures
Image.MAX_IMAGE_PIXELS = 200_000_000  # Pillow's own backstop; DecodeLimits.max_pixels (tasks/limits.py) decides


@dataclass(frozen=True)
class Item:
    path: str  # absolute path of the image file
    label: str  # class name (after the optional class-name mapping)


@dataclass(frozen=True)
class Dataset:
    source: str  # what the user passed (folder or manifest path)
    classes: tuple[str, ...]  # class names, sorted, after mapping
    items: tuple[Item, ...]  # sorted by path (tasks/pipeline/sharding.py cuts shards by a hash of it)
    skipped: tuple[tuple[str, int], ...] = ()  # (why, how many) entries discovery left out on purpose


def load_class_map(path: str | None) -> dict[str, str]:
    """A JSON object {folder or label: class name}, e.g. WordNet ids to readable names."""
    if not path:
        return {}
    try:
        mapping = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"class map {path} is not a readable JSON object: {e}") from e
    if not isinstance(mapping, dict):
        raise ValueError(f"class map {path} must be a JSON object {{label: class name}}, not {type(mapping).__name__}")
    return {str(k): str(v) for k, v in mapping.items()}


SYSTEM_FOLDERS = {"@eaDir", "__MACOSX", "$RECYCLE.BIN"}  # a NAS's thumbnails, a macOS zip's forks, Windows' bin


def _images_under(folder: Path, skipped: Counter) -> list[str]:
    """Absolute paths of the image files under a class folder, sorted as Path objects sort (by path parts), as
    `rglob` finds them: linked files count (as the file they resolve to), linked folders are not entered. Hidden
    entries ('.ipynb_checkpoints', macOS's '._photo.jpg' forks) and SYSTEM_FOLDERS are left out (counted in
    `skipped`): a Synology share holds a thumbnail of every photo under '@eaDir', which would have joined the
    class. Any entry with an image's extension is kept whatever it is (a FIFO, a dangling or looping link): the
    decode refuses it without opening it, as a `failures` row, so no file goes missing unsaid. One `scandir`
    pass whose entries know their type: no `stat` per file (links are resolved), which 10,000-image plannings
    notice."""
    base = str(folder.resolve())
    found: list[tuple[tuple[str, ...], str]] = []

    def walk(d: str, rel: tuple[str, ...]) -> None:
        with os.scandir(d) as entries:
            for e in entries:
                if e.name.startswith(".") or e.name in SYSTEM_FOLDERS:
                    skipped[HIDDEN] += 1
                elif e.is_dir(follow_symlinks=False):
                    walk(e.path, rel + (e.name,))
                elif os.path.splitext(e.name)[1].lower() in IMAGE_EXTENSIONS:
                    parts = rel + (e.name,)
                    found.append((parts, os.path.realpath(e.path) if e.is_symlink() else "/".join((base,) + parts)))
                else:
                    skipped[NOT_IMAGE] += 1

    walk(str(folder), ())
    return [path for _, path in sorted(found)]


HIDDEN, NOT_IMAGE, IN_ROOT, LINKED_TWICE = ("hidden or system", "not an image's extension",
                                            "images in the dataset root (no class)", "a second link to a listed file")


def _class_folders(src: Path, skipped: Counter) -> list[Path]:
    """The class folders of an ImageFolder root; hidden entries and loose images there (they have no class) are
    counted in `skipped` (other files, such as a manifest or a README, are the dataset's own)."""
    folders = []
    for p in sorted(src.iterdir()):
        if p.name.startswith((".", "_")) or p.name in SYSTEM_FOLDERS:
            skipped[HIDDEN] += 1
        elif p.is_dir():
            folders.append(p)
        elif p.suffix.lower() in IMAGE_EXTENSIONS:
            skipped[IN_ROOT] += 1
    return folders


def _log_skipped(src: Path, skipped: Counter) -> None:
    """One line for everything discovery left out on purpose (also counted in the run's `runs` row)."""
    if skipped:
        level = logging.WARNING if skipped[IN_ROOT] or skipped[LINKED_TWICE] else logging.INFO
        log.log(level, "dataset %s: %d entries left out (%s)", src, sum(skipped.values()),
                ", ".join(f"{n} {why}" for why, n in sorted(skipped.items())))


def read_dataset(source: str, class_map: str | None = None) -> Dataset:
    """An ImageFolder directory (one folder per class) or a manifest (.csv/.parquet with path,label)."""
    src = Path(source).expanduser()
    mapping = load_class_map(class_map)
    skipped: Counter = Counter()
    if src.is_dir():
        folders = _class_folders(src, skipped)
        if not folders:
            raise ValueError(f"dataset folder {src} has no class sub-folders; ImageFolder layout is "
                             f"{src}/<class>/<image>.jpg (or pass a manifest .csv/.parquet with path,label)")
        items, seen = [], set()
        for folder in folders:
            files = _images_under(folder, skipped)
            if not files:
                raise ValueError(f"class folder {folder} holds no images ({', '.join(sorted(IMAGE_EXTENSIONS))}); "
                                 f"add images or remove the folder")
            label = mapping.get(folder.name, folder.name)
            for f in files:  # one file, one row: links resolve to the file they name
                if f in seen:
                    skipped[LINKED_TWICE] += 1
                else:
                    seen.add(f)
                    items.append(Item(f, label))
    elif src.is_file():
        rows = read_manifest(src)
        if not rows:
            raise ValueError(f"manifest {src} has no rows")
        items = []
        for i, row in enumerate(rows):
            if not row.get("path") or row.get("label") in (None, ""):
                raise ValueError(f"manifest {src} row {i} has an empty path or label: {row}")
            p = Path(str(row["path"])).expanduser()
            p = p if p.is_absolute() else src.parent / p
            label = str(row["label"])
            items.append(Item(os.path.realpath(p), mapping.get(label, label)))  # a looping link: its failure row
    else:
        raise ValueError(f"dataset {source!r} is neither a folder nor a manifest file; pass an ImageFolder "
                         f"directory, a .csv/.parquet manifest with path,label columns, or 'toy'")
    items.sort(key=lambda it: it.path)
    _log_skipped(src, skipped)
    return Dataset(str(source), tuple(sorted({it.label for it in items})), tuple(items),
                   tuple(sorted(skipped.items())))


def image_id_of(data: bytes) -> str:
    """Stable content id: the first 16 hex digits of the SHA-256 of the file's bytes."""
    return hashlib.sha256(data).hexdigest()[:16]


def file_id(content_id: str, path: str) -> str:
    """An image's id in every table: one per file (byte-identical files are rows of their own, counted, not
    merged), stable while the file keeps its path and bytes. The content id stays in `images.content_id`."""
    return hashlib.sha256(f"{content_id}\0{path}".encode()).hexdigest()[:16]


ORIENTATION = 0x0112  # the EXIF tag


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode (L, P, RGBA, LA, CMYK, I;16 ...) as RGB, turned the way its EXIF orientation says;
    transparency is composited on white. An RGB image that needs no turn comes back as it is: exif_transpose
    and convert("RGB") each copied it (two copies, 25 ms of a 12-megapixel photo's 64 ms load)."""
    if img.getexif().get(ORIENTATION, 1) not in (None, 1):
        img = ImageOps.exif_transpose(img)
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if img.mode == "I" or img.mode.startswith("I;16"):  # 16-bit grey, either byte order: the top 8 bits
        grey = np.clip(np.asarray(img).astype(np.int64) // 256, 0, 255).astype(np.uint8)
        return Image.fromarray(grey, "L").convert("RGB")
    return img if img.mode == "RGB" else img.convert("RGB")


FULL_SIZE = "mapcap.full_size"  # Image.info key: (W, H) of the file's image, on images decoded at a reduced scale


def full_size(image: Image.Image) -> tuple[int, int]:
    """(W, H) of the image as the file holds it (after its EXIF turn), also for one decoded with `draft`."""
    return image.info.get(FULL_SIZE, image.size)


def load_image(path: str, draft: int | None = None,
               limits: DecodeLimits = DEFAULT_LIMITS) -> tuple[Image.Image, str]:
    """Decode one image as RGB with its content id; any problem raises ImageLoadError naming the file. Only a
    regular file within `limits` is read (tasks/limits.py). `draft`: see decode_image."""
    return decode_image(read_file(str(path), limits), str(path), draft, limits)


def decode_image(data: bytes, name: str, draft: int | None = None,
                 limits: DecodeLimits = DEFAULT_LIMITS) -> tuple[Image.Image, str]:
    """Image bytes (a file's, an upload's) → RGB image and content id; ImageLoadError naming `name`.
    `draft`: a JPEG is decoded at a reduced scale (libjpeg's 1/2, 1/4 or 1/8, as PIL's draft picks it) that keeps
    both sides ≥ draft pixels (a 12-megapixel photo ~5-10× faster), for model-resolution pixels and pictures to
    look at; the image is then smaller than the file's, and `full_size` gives the file's. The header's size is
    checked against `limits.max_pixels` before any pixel is decoded."""
    image_id = image_id_of(data)
    try:
        limits.check_size(len(data), name)
        im = Image.open(io.BytesIO(data))  # bytes in memory: no file to close (closing would free the pixels)
        full = im.size
        limits.check_pixels(*full, name)
        if draft:
            im.draft("RGB", (draft, draft))  # a no-op for formats other than JPEG
        im.load()
        rgb = to_rgb(im)
        if rgb.size != im.size:  # turned a quarter by its EXIF orientation
            full = full[::-1]
        if rgb.size != full:
            rgb.info[FULL_SIZE] = full
    except ImageLoadError as e:  # over a limit: the message names it and the parameter that raises it
        e.image_id = image_id
        raise
    except (OSError, ValueError, SyntaxError, MemoryError, Image.DecompressionBombError) as e:
        err = ImageLoadError(f"cannot decode {name}: {_decode_reason(data, e)}")
        err.image_id = image_id
        raise err from e
    if min(rgb.size) < MIN_SIDE:
        err = ImageLoadError(f"{name} is {rgb.size[0]}x{rgb.size[1]} px, smaller than {MIN_SIDE} px on a side")
        err.image_id = image_id
        raise err
    return rgb, image_id


def _decode_reason(data: bytes, e: Exception) -> str:
    """Why PIL refused `data`, in words that are the same on every run (PIL's own message for an unknown format
    names the in-memory buffer's address) and say what to do."""
    if not data:
        return "the file is empty (0 bytes); remove it or replace it with the image"
    if isinstance(e, Image.UnidentifiedImageError):
        return (f"not an image format PIL reads ({len(data)} bytes starting {data[:8]!r}); remove the file or "
                "convert it to JPEG or PNG")
    return f"{type(e).__name__}: {e}"
