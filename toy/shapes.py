"""Drawing one toy scene: shapes on a textured background, with exact masks and a reference caption.

Everything is a pure function of a numpy Generator, so a seed fixes the whole dataset.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from mapcap.tasks.articles import with_article

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "ring", "cross", "diamond", "hexagon")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 40),
    "blue": (35, 60, 225),
    "yellow": (240, 220, 20),
    "purple": (150, 40, 190),
    "orange": (250, 130, 10),
}
SIZE_WORDS = ((0.30, "small"), (0.40, ""), (1.0, "large"))  # (max fraction of the image side, word)


@dataclass(frozen=True)
class ToyObject:
    shape: str  # one of SHAPES
    colour: str  # one of COLOURS
    cx: float  # centre, in pixels
    cy: float
    size: float  # bounding-box side, in pixels
    angle: float  # rotation in degrees (only for shapes whose name survives it)


def _polygon(n: int, cx: float, cy: float, r: float, angle: float, inner: float | None = None) -> list[tuple[float, float]]:
    """Regular polygon (or star when `inner` is the inner radius ratio)."""
    pts = []
    steps = 2 * n if inner else n
    for k in range(steps):
        rr = r * (inner if inner and k % 2 else 1.0)
        a = math.radians(angle) + 2 * math.pi * k / steps - math.pi / 2
        pts.append((cx + rr * math.cos(a), cy + rr * math.sin(a)))
    return pts


def object_mask(obj: ToyObject, side: int) -> np.ndarray:
    """Boolean (side, side) mask of one object."""
    m = Image.new("L", (side, side), 0)
    d = ImageDraw.Draw(m)
    cx, cy, r = obj.cx, obj.cy, obj.size / 2
    box = (cx - r, cy - r, cx + r, cy + r)
    if obj.shape == "circle":
        d.ellipse(box, fill=255)
    elif obj.shape == "ring":
        d.ellipse(box, fill=255)
        ri = r * 0.55
        d.ellipse((cx - ri, cy - ri, cx + ri, cy + ri), fill=0)
    elif obj.shape == "square":
        s = r * 0.9
        d.rectangle((cx - s, cy - s, cx + s, cy + s), fill=255)
    elif obj.shape == "diamond":
        d.polygon(_polygon(4, cx, cy, r, 0.0), fill=255)
    elif obj.shape == "triangle":
        d.polygon(_polygon(3, cx, cy + r * 0.15, r * 1.05, obj.angle % 30 - 15), fill=255)
    elif obj.shape == "star":
        d.polygon(_polygon(5, cx, cy + r * 0.05, r, obj.angle % 72, inner=0.42), fill=255)
    elif obj.shape == "hexagon":
        d.polygon(_polygon(6, cx, cy, r, 30.0), fill=255)
    elif obj.shape == "cross":
        w = r * 0.36
        d.rectangle((cx - r, cy - w, cx + r, cy + w), fill=255)
        d.rectangle((cx - w, cy - r, cx + w, cy + r), fill=255)
    else:
        raise ValueError(f"unknown toy shape {obj.shape!r}; choose one of {SHAPES}")
    return np.asarray(m) > 127


def background(rng: np.random.Generator, side: int) -> np.ndarray:
    """Low-saturation textured background (noise, gradient, stripes or blotches), float (side, side, 3)."""
    base = rng.uniform(70, 190)
    tint = rng.uniform(-12, 12, size=3)
    yy, xx = np.mgrid[0:side, 0:side] / side
    kind = rng.integers(4)
    if kind == 0:  # plain noise
        tex = np.zeros((side, side))
    elif kind == 1:  # linear gradient
        a = rng.uniform(0, 2 * math.pi)
        tex = 40 * ((xx * math.cos(a) + yy * math.sin(a)) - 0.5)
    elif kind == 2:  # stripes
        f, a = rng.uniform(4, 12), rng.uniform(0, math.pi)
        tex = 18 * np.sin(2 * math.pi * f * (xx * math.cos(a) + yy * math.sin(a)))
    else:  # blotches: upsampled coarse noise
        coarse = rng.normal(0, 22, size=(6, 6))
        tex = np.asarray(Image.fromarray(coarse.astype(np.float32)).resize((side, side), Image.BILINEAR))
    img = base + tex[..., None] + tint + rng.normal(0, rng.uniform(3, 14), size=(side, side, 3))
    return img


def position_words(cx: float, cy: float, side: int) -> str:
    """'in the top left', 'at the bottom', 'in the center' ... from the object's centre (3×3 grid)."""
    col = min(int(3 * cx / side), 2)
    row = min(int(3 * cy / side), 2)
    v = ("top", "", "bottom")[row]
    h = ("left", "", "right")[col]
    if v and h:
        return f"in the {v} {h}"
    if v:
        return f"at the {v}"
    if h:
        return f"on the {h}"
    return "in the center"


def size_word(obj: ToyObject, side: int) -> str:
    frac = obj.size / side
    return next(w for limit, w in SIZE_WORDS if frac <= limit)


def random_object(rng: np.random.Generator, side: int, shape: str | None = None, colour: str | None = None,
                  size_range: tuple[float, float] = (0.24, 0.48),
                  region: tuple[float, float, float, float] = (0.0, 0.0, 1.0, 1.0)) -> ToyObject:
    """A random object fully inside `region` (x0, y0, x1, y1 as fractions of the side)."""
    shape = shape or SHAPES[rng.integers(len(SHAPES))]
    colour = colour or list(COLOURS)[rng.integers(len(COLOURS))]
    size = rng.uniform(*size_range) * side
    x0, y0, x1, y1 = (v * side for v in region)
    r = size / 2 + 1
    cx = rng.uniform(x0 + r, max(x0 + r, x1 - r))
    cy = rng.uniform(y0 + r, max(y0 + r, y1 - r))
    return ToyObject(shape, colour, cx, cy, size, float(rng.uniform(0, 360)))


def render(rng: np.random.Generator, objects: list[ToyObject], side: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """Paint objects (later ones on top) over a fresh background: uint8 image and each object's visible mask."""
    img = background(rng, side)
    masks = [object_mask(o, side) for o in objects]
    for o, m in zip(objects, masks):
        rgb = np.asarray(COLOURS[o.colour], dtype=np.float64) + rng.normal(0, 10, size=3)
        shade = 1.0 + 0.12 * (np.mgrid[0:side, 0:side][0] - o.cy) / max(o.size, 1)  # a little shading
        img[m] = np.clip(rgb[None, :] * shade[m][:, None], 0, 255) + rng.normal(0, 5, size=(int(m.sum()), 3))
    visible = []
    for i, m in enumerate(masks):  # what later objects cover is not visible
        v = m.copy()
        for later in masks[i + 1:]:
            v &= ~later
        visible.append(v)
    return np.clip(img, 0, 255).astype(np.uint8), visible


def describe(obj: ToyObject, side: int, with_position: bool = True, with_size: bool = False) -> str:
    """The reference caption of one object: "an orange circle in the top left", "a small red star"."""
    words = []
    if with_size and size_word(obj, side):
        words.append(size_word(obj, side))
    words += [obj.colour, obj.shape]
    text = with_article(" ".join(words))
    if with_position:
        text += " " + position_words(obj.cx, obj.cy, side)
    return text
