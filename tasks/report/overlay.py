"""Heatmap overlays: an image, its relevancy map upsampled and coloured, blended with alpha."""
from __future__ import annotations

import numpy as np
from matplotlib import colormaps
from PIL import Image, ImageDraw


def upsample(grid_map: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(g, g) map -> (H, W) float32 by bilinear interpolation; `size` is PIL's (W, H)."""
    img = Image.fromarray(np.asarray(grid_map, dtype=np.float32), mode="F")
    return np.asarray(img.resize(size, Image.BILINEAR), dtype=np.float32)


def normalise(m: np.ndarray) -> np.ndarray:
    lo, hi = float(m.min()), float(m.max())
    return (m - lo) / (hi - lo) if hi > lo else np.zeros_like(m)


def overlay(image: Image.Image, grid_map: np.ndarray, alpha: float = 0.5, cmap: str = "jet") -> Image.Image:
    """The image with the (min-max normalised) map on top in a colour map."""
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32) / 255
    heat = colormaps[cmap](normalise(upsample(grid_map, image.size)))[..., :3]  # (H, W, 3)
    return Image.fromarray(np.uint8(255 * ((1 - alpha) * rgb + alpha * heat)))


def overlay_row(image: Image.Image, maps: list[np.ndarray | None], titles: list[str], tile: int = 224,
                boxes: list[list[tuple[int, int, int, int]]] | None = None,
                size: tuple[int, int] | None = None) -> Image.Image:
    """One overlay per map side by side, each titled (a None map shows the plain image); optional region boxes
    in the pixels of the image as the file holds it, `size` (W, H) (default image.size: a thumbnail's boxes need
    it). The image is scaled to the tile first and the maps drawn at tile size: blending at full size cost 4 s
    per row for a 12-megapixel photo (the report draws a dozen rows, the explorer one per request)."""
    pad = 18
    full_w, full_h = size or image.size
    sx, sy = tile / full_w, tile / full_h
    small = image.convert("RGB").resize((tile, tile), Image.BILINEAR)
    canvas = Image.new("RGB", (tile * len(maps), tile + pad), "white")
    draw = ImageDraw.Draw(canvas)
    for i, (m, title) in enumerate(zip(maps, titles)):
        ov = small.copy() if m is None else overlay(small, m)
        if boxes and boxes[i]:
            d = ImageDraw.Draw(ov)
            for x0, y0, x1, y1 in boxes[i]:
                d.rectangle((x0 * sx, y0 * sy, x1 * sx, y1 * sy), outline=(255, 255, 255), width=max(1, tile // 100))
        canvas.paste(ov, (i * tile, pad))
        draw.text((i * tile + 4, 3), title[: tile // 7], fill=(0, 0, 0))
    return canvas
