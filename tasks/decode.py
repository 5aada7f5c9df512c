"""JPEGs straight to model pixels as tensor ops: batched nvjpeg on CUDA, libjpeg-turbo on CPU.

PIL decodes about 200 500×375 JPEGs per second per core, so classification on a GPU starves on the CPU that
decodes and resizes for it. `torchvision.io.decode_jpeg(device="cuda")` decodes a whole batch on the GPU; the
resize (bicubic, antialiased, shorter side to the model's input), centre crop and normalisation follow on the
same device. Pixels are rounded to 8 bits after the resize as PIL's are, so the result matches the PIL
preprocess within resampling differences (tests/tasks/test_decode.py bounds them on CPU-decoded fixtures).
Files that are not JPEG, or that the decoder refuses (CMYK, progressive on some nvjpeg builds, truncated), come
back as misses for the caller's PIL path, which turns unreadable files into `failures` rows.
"""
from __future__ import annotations

import functools
import io
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from PIL import Image
from torchvision import transforms as T
from torchvision.io import ImageReadMode, decode_jpeg

from mapcap.tasks.data import MIN_SIDE, ORIENTATION, image_id_of
from mapcap.tasks.limits import DEFAULT_LIMITS, DecodeLimits, ImageLoadError, read_file

log = logging.getLogger(__name__)
JPEG_MAGIC = b"\xff\xd8\xff"
TRAILER = 64 << 10  # bytes some cameras append after a JPEG's end-of-image marker (maker notes, padding)
DECODE_BATCH = 256  # files per batched decode: bounds the full-size images (and their float copies) held


@dataclass(frozen=True)
class Geometry:
    """What an open_clip preprocess does, as numbers: shorter side → `resize`, centre crop `crop`, normalise."""
    resize: int
    crop: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


def geometry(preprocess: Callable) -> Geometry | None:
    """The Geometry of a torchvision Compose(Resize(int, bicubic), CenterCrop, ..., Normalize); None for any
    other preprocess (the caller keeps the PIL path)."""
    steps = getattr(preprocess, "transforms", None) or []
    resize = [t for t in steps if isinstance(t, T.Resize)]
    crop = [t for t in steps if isinstance(t, T.CenterCrop)]
    norm = [t for t in steps if isinstance(t, T.Normalize)]
    if len(resize) != 1 or len(crop) != 1 or len(norm) != 1:
        return None
    size, (ch, cw) = resize[0].size, crop[0].size
    size = size[0] if isinstance(size, (list, tuple)) and len(size) == 1 else size
    if not isinstance(size, int) or ch != cw or resize[0].interpolation != T.InterpolationMode.BICUBIC:
        return None
    return Geometry(size, ch, tuple(norm[0].mean), tuple(norm[0].std))


def resize_plan(H: int, W: int, geo: Geometry) -> tuple[int, int, int, int]:
    """(h, w, top, left): an H × W image's size after the resize (shorter side to geo.resize, torchvision's rule
    for the longer one) and where the centre crop starts in it."""
    short, long = min(H, W), max(H, W)
    new_long = int(geo.resize * long / short)
    h, w = (geo.resize, new_long) if H <= W else (new_long, geo.resize)
    return h, w, int(round((h - geo.crop) / 2.0)), int(round((w - geo.crop) / 2.0))


def resize_crop(x: torch.Tensor, geo: Geometry) -> torch.Tensor:
    """(C, H, W) or (N, C, H, W) float → (C, S, S) or (N, C, S, S): the resize (bicubic, antialiased), then the
    centre crop, as the preprocess's geometry does it (`resize_plan`)."""
    if x.dim() == 3:
        return resize_crop(x.unsqueeze(0), geo)[0]
    h, w, top, left = resize_plan(*x.shape[-2:], geo)
    x = F.interpolate(x, size=(h, w), mode="bicubic", antialias=True, align_corners=False)  # (N, C, h, w)
    return x[..., top:top + geo.crop, left:left + geo.crop]


def to_pixels(rgb: torch.Tensor, geo: Geometry) -> torch.Tensor:
    """(3, H, W) or (N, 3, H, W) uint8 → (3, S, S) or (N, 3, S, S) float normalised, as the PIL preprocess
    computes it."""
    return normalise(resize_crop(rgb.float(), geo), geo)


@functools.lru_cache(maxsize=32)
def _mean_std(geo: Geometry, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """geo's mean and std as (3, 1, 1) on the device, made once (each copy to a GPU waits for it)."""
    return (torch.tensor(geo.mean, device=device).view(3, 1, 1), torch.tensor(geo.std, device=device).view(3, 1, 1))


def normalise(x: torch.Tensor, geo: Geometry) -> torch.Tensor:
    """Resized float RGB in 0..255 → normalised model pixels, rounded to 8 bits first as PIL resizes RGB."""
    mean, std = _mean_std(geo, str(x.device))
    return (x.round().clamp(0, 255) / 255 - mean) / std


Keep = Callable[[list[str], list[str], list[torch.Tensor]], None]  # (paths, content ids, (3, H, W) uint8 images)


@dataclass
class Frames:
    images: dict[str, torch.Tensor]  # path -> (3, H, W) uint8 on the device, as decoded
    ids: dict[str, str]  # path -> content id (of the file's bytes)
    misses: list[str]  # paths left to the PIL path (not JPEG, refused by the decoder, unreadable, too small)


@dataclass
class Decoded:
    pixels: dict[str, torch.Tensor]  # path -> (3, S, S) on the device
    sizes: dict[str, tuple[int, int]]  # path -> (W, H) of the decoded image
    ids: dict[str, str]  # path -> content id (of the file's bytes)
    misses: list[str]  # paths left to the PIL path (not JPEG, refused by the decoder, unreadable)


# EXIF orientation -> the tensor op PIL's exif_transpose applies (flip / rotate / transpose of (..., H, W))
ORIENT: dict[int, Callable[[torch.Tensor], torch.Tensor]] = {
    2: lambda x: x.flip(-1),  # FLIP_LEFT_RIGHT
    3: lambda x: x.flip(-1, -2),  # ROTATE_180
    4: lambda x: x.flip(-2),  # FLIP_TOP_BOTTOM
    5: lambda x: x.transpose(-1, -2),  # TRANSPOSE
    6: lambda x: torch.rot90(x, -1, (-2, -1)),  # ROTATE_270 (a quarter turn clockwise)
    7: lambda x: x.transpose(-1, -2).flip(-1, -2),  # TRANSVERSE
    8: lambda x: torch.rot90(x, 1, (-2, -1)),  # ROTATE_90
}


def orientation(raw: bytes) -> int | None:
    """The EXIF orientation (1-8) of JPEG bytes; 1 without EXIF; None when PIL cannot read the header (then the
    PIL path decodes the file and reports it)."""
    if b"Exif\x00\x00" not in raw[:65536]:  # no EXIF segment: skip the header parse (most files)
        return 1
    try:
        with Image.open(io.BytesIO(raw)) as im:
            return int(im.getexif().get(ORIENTATION, 1) or 1)
    except (OSError, ValueError, SyntaxError):
        return None


def complete(raw: bytes) -> bool:
    """Whether JPEG bytes end with their end-of-image marker (a trailer of up to TRAILER bytes after it allowed).
    A truncated file lacks it; it goes to the PIL path, which fails it as on CPU, so that what becomes a failure
    row is decided here and not by whether a GPU's decoder fills the missing rows or refuses them. (0xFF D9
    appears in a JPEG only as that marker: scan data stuffs a 0x00 after every 0xFF.)"""
    eoi = raw.rfind(b"\xff\xd9")
    return eoi >= 0 and len(raw) - eoi - 2 <= TRAILER


def within_budget(raw: bytes, limits: DecodeLimits) -> bool:
    """Whether a JPEG's header declares no more pixels than the budget (read before the device decodes it)."""
    try:
        with Image.open(io.BytesIO(raw)) as im:
            w, h = im.size
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return False
    return w * h <= limits.max_pixels


def _load(path: str, limits: DecodeLimits = DEFAULT_LIMITS) -> tuple[bytes, str, int] | None:
    """(bytes, content id, EXIF orientation) of a whole JPEG file; None for an unreadable or refused file (not a
    regular file, over a limit), another format, a truncated JPEG or an unreadable header (the PIL path's, which
    reports it)."""
    try:
        raw = read_file(path, limits)
    except (ImageLoadError, MemoryError):
        return None  # the PIL path tries it again and records why it failed (the image's failures row)
    if not raw.startswith(JPEG_MAGIC) or not complete(raw) or (turn := orientation(raw)) is None \
            or not within_budget(raw, limits):
        return None
    return raw, image_id_of(raw), turn


def decode_files(paths: list[str], device: str, workers: int = 8, limits: DecodeLimits = DEFAULT_LIMITS) -> Frames:
    """Every JPEG of `paths` decoded on `device` in one batched call, as (3, H, W) uint8 RGB (EXIF orientation
    applied as the PIL path does; nvjpeg ignores it, so it is applied here as tensor ops). Files are read and
    hashed in `workers` threads (both release the GIL)."""
    with ThreadPoolExecutor(max(1, min(workers, len(paths)))) as ex:
        return _decode_loaded(paths, list(ex.map(lambda p: _load(p, limits), paths)), device)


def _decode_loaded(paths: list[str], loaded: list[tuple[bytes, str, int] | None], device: str) -> Frames:
    """decode_files once the files are read (`_load` per path)."""
    out = Frames({}, {}, [])
    datas, names, turns = [], [], []
    for p, got in zip(paths, loaded):
        if got is None:
            out.misses.append(p)
            continue
        raw, out.ids[p], turn = got
        datas.append(torch.frombuffer(bytearray(raw), dtype=torch.uint8))
        names.append(p)
        turns.append(turn)
    if not names:
        return out
    for p, img, turn in zip(names, _decode_halving(datas, device), turns):
        if img is None or min(img.shape[1:]) < MIN_SIDE:
            out.misses.append(p)
            out.ids.pop(p, None)
        else:
            out.images[p] = ORIENT[turn](img) if turn in ORIENT else img
    return out


def _decode_halving(datas: list[torch.Tensor], device: str) -> list[torch.Tensor | None]:
    """decode_jpeg over a batch; where the decoder refuses the batch (one file it cannot take fails them all),
    each half is decoded again, down to the files it refuses (None): ~2·log2(n) calls per such file, where one
    call per file made a batch of 256 with one CMYK or odd JPEG decode 256 times one by one."""
    try:
        return list(decode_jpeg(datas, mode=ImageReadMode.RGB, device=device))
    except RuntimeError as e:
        if len(datas) == 1:
            log.info("JPEG decoder refused a file (%s): the PIL path takes it", e)
            return [None]
    half = len(datas) // 2
    return _decode_halving(datas[:half], device) + _decode_halving(datas[half:], device)


def decode_jpegs(paths: list[str], geo: Geometry, device: str, workers: int = 8,
                 limits: DecodeLimits = DEFAULT_LIMITS, keep: Keep | None = None) -> Decoded:
    """Every JPEG of `paths` decoded and preprocessed on `device`, DECODE_BATCH files per batched decode (the
    full-size images of a whole shard would not fit: 4,096 12-megapixel photos are 147 GB as RGB bytes). The next
    batch's files are read and hashed in the threads while this one decodes. Images of one size are resized as one
    batch (one kernel launch instead of one per image: the per-image launches, not the arithmetic, cost the time
    on a GPU). `keep(paths, content ids, images)` sees each such group of full-size images before they are let go
    (the shard keeps reduced frames of them: roi_crops.py)."""
    out = Decoded({}, {}, {}, [])
    chunks = [paths[c:c + DECODE_BATCH] for c in range(0, len(paths), DECODE_BATCH)]
    with ThreadPoolExecutor(max(1, min(workers, len(paths)))) as ex:
        ahead = [ex.submit(_load, p, limits) for p in chunks[0]] if chunks else []
        for k, chunk in enumerate(chunks):
            loaded = [f.result() for f in ahead]
            ahead = [ex.submit(_load, p, limits) for p in chunks[k + 1]] if k + 1 < len(chunks) else []
            frames = _decode_loaded(chunk, loaded, device)
            out.ids |= frames.ids
            out.misses += frames.misses
            by_size: dict[tuple[int, int], list[tuple[str, torch.Tensor]]] = {}
            for p, img in frames.images.items():
                out.sizes[p] = (int(img.shape[2]), int(img.shape[1]))
                by_size.setdefault(out.sizes[p], []).append((p, img))
            for group in by_size.values():
                if keep is not None:
                    keep([p for p, _ in group], [frames.ids[p] for p, _ in group], [img for _, img in group])
                pixels = to_pixels(torch.stack([img for _, img in group]), geo)  # (n, 3, S, S)
                out.pixels.update((p, px) for (p, _), px in zip(group, pixels))
    return out


@functools.lru_cache(maxsize=256)  # a shard's crops come in a few hundred sides; ≤ 1.2 MB each for ≤ 1,400 px
def resize_weights(n: int, m: int, device: str) -> torch.Tensor:
    """(m, n): the antialiased bicubic resize of a length-n axis to length m as a matrix (torch's filter, PIL's
    too), read off by resizing the identity. A crop's resize is then two matrix products, whatever its size."""
    eye = torch.eye(n, device=device).view(n, 1, 1, n)  # n basis rows
    out = F.interpolate(eye, size=(1, m), mode="bicubic", antialias=True, align_corners=False)  # (n, 1, 1, m)
    return out.view(n, m).T.contiguous()


def crop_weights(side_h: int, side_w: int, geo: Geometry, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(S, side_h), (S, side_w): the rows and columns of a side_h × side_w canvas's resize (`resize_plan`) that
    its centre crop keeps."""
    h, w, top, left = resize_plan(side_h, side_w, geo)
    return (resize_weights(side_h, h, device)[top:top + geo.crop],
            resize_weights(side_w, w, device)[left:left + geo.crop])


def resized_crops(rgb: torch.Tensor, boxes: list[tuple[int, int, int, int]], geo: Geometry) -> list[torch.Tensor]:
    """(3, H, W) uint8 → K × (3, S, S) float in 0..255, not yet normalised (`normalise` then takes a whole batch
    of them in one go): each box (x0, y0, x1, y1, may reach outside) cut out, outside the image filled with the
    image's mean colour floored to integers (as `crop_region` fills it), resized and centre-cropped.

    Each crop's resize is Wy · crop · Wxᵀ (`crop_weights`): two matrix products instead of a canvas, a resize
    kernel and a dozen small ops per crop (on a GPU, the launches of those cost more than the arithmetic). The
    fill f needs no canvas either: the weights of each output pixel sum to one, so the canvas's resize is
    Wy_in · (crop_in − f) · Wx_inᵀ + f over the rows and columns inside the image alone (the image minus f made
    once per image: three kernels per crop that leaves the image)."""
    _, H, W = rgb.shape
    x = rgb.float()  # (3, H, W)
    fill = shifted = None  # (3, 1, 1) the fill colour; (3, H, W) the image minus it
    out = []
    for x0, y0, x1, y1 in boxes:
        wy, wx = crop_weights(y1 - y0, x1 - x0, geo, str(rgb.device))  # (S, bh), (S, bw)
        ya, yb, xa, xb = max(y0, 0), min(y1, H), max(x0, 0), min(x1, W)
        wy, wx = wy[:, ya - y0:yb - y0], wx[:, xa - x0:xb - x0]  # the weights of the rows/columns inside
        if (ya, yb, xa, xb) == (y0, y1, x0, x1):
            out.append(wy @ x[:, ya:yb, xa:xb] @ wx.T)  # (3, S, S)
            continue
        if fill is None:
            fill = (rgb.sum((1, 2), dtype=torch.int64) // (H * W)).float().view(3, 1, 1)  # exact floor of the mean
            shifted = x - fill
        out.append(wy @ shifted[:, ya:yb, xa:xb] @ wx.T + fill)  # (3, S, S)
    return out
