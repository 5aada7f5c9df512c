"""Toy scenes, their captions and the dataset writer (ImageFolder tree + Parquet manifest)."""
from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from mapcap.storage.manifest import png_to_mask  # noqa: F401  (re-exported: masks are a manifest format)
from mapcap.tasks.articles import with_article
from mapcap.toy.shapes import COLOURS, SHAPES, ToyObject, describe, position_words, random_object, render, size_word

SIDE = 128  # pixel side of written toy images (the toy CLIP sees them resized to 64)
KINDS = ("single", "distractor", "pair")


@dataclass(frozen=True)
class Scene:
    kind: str  # 'single' | 'distractor' (target + a smaller other shape) | 'pair' (two shapes, similar size)
    objects: tuple[ToyObject, ...]  # objects[0] is the target; its shape is the label
    image: np.ndarray  # (SIDE, SIDE, 3) uint8
    masks: tuple[np.ndarray, ...]  # visible mask of each object, (SIDE, SIDE) bool
    caption: str  # reference caption naming every object

    @property
    def label(self) -> str:
        return self.objects[0].shape


def _other_shape(rng: np.random.Generator, shape: str) -> str:
    others = [s for s in SHAPES if s != shape]
    return others[rng.integers(len(others))]


def make_scene(rng: np.random.Generator, kind: str = "single", shape: str | None = None,
               distractor: str | None = None, side: int = SIDE) -> Scene:
    """One scene of the given kind; `shape` fixes the target's class, `distractor` the second object's."""
    if kind == "single":
        objs = [random_object(rng, side, shape)]
        caption = describe(objs[0], side)
    elif kind in ("distractor", "pair"):
        halves = [(0.0, 0.0, 0.5, 1.0), (0.5, 0.0, 1.0, 1.0)] if rng.random() < 0.5 else \
                 [(0.0, 0.0, 1.0, 0.5), (0.0, 0.5, 1.0, 1.0)]
        order = rng.permutation(2)
        shape = shape or SHAPES[rng.integers(len(SHAPES))]
        second = distractor or _other_shape(rng, shape)
        if kind == "pair":
            size_a = size_b = (0.26, 0.42)
        else:
            size_a, size_b = (0.32, 0.46), (0.16, 0.24)
        a = random_object(rng, side, shape, size_range=size_a, region=halves[order[0]])
        b = random_object(rng, side, second, size_range=size_b, region=halves[order[1]])
        objs = [a, b]
        if kind == "pair":
            caption = f"{describe(a, side, with_position=False)} and {describe(b, side, with_position=False)}"
        else:
            caption = f"{describe(a, side)} and {describe(b, side, with_position=False, with_size=True)}"
    else:
        raise ValueError(f"unknown scene kind {kind!r}; choose one of {KINDS}")
    image, masks = render(rng, objs, side)
    return Scene(kind, tuple(objs), image, tuple(masks), caption)


def mask_to_png(mask: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(mask.astype(np.uint8) * 255).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def write_toy_dataset(root: str | Path, n_per_class: int = 16, seed: int = 1234, split: str = "test",
                      kind: str = "single", distractor_rate: dict[str, float] | None = None) -> Path:
    """Write `n_per_class` scenes per shape as `root/<shape>/<split>-<i>.png` plus `root/manifest.parquet`.

    `distractor_rate` maps a class to the share of its images that carry a distractor shape (used to build
    a class that the trend analysis must find harder). Returns the manifest path.
    """
    from mapcap.storage.manifest import write_manifest  # only storage/ touches Parquet

    root = Path(root)
    rng = np.random.default_rng(seed)
    rows = []
    for shape in SHAPES:
        (root / shape).mkdir(parents=True, exist_ok=True)
        for i in range(n_per_class):
            k = kind
            if kind == "single" and distractor_rate and rng.random() < distractor_rate.get(shape, 0.0):
                k = "distractor"
            scene = make_scene(rng, k, shape)
            rel = f"{shape}/{split}-{i:04d}.png"
            Image.fromarray(scene.image).save(root / rel)
            second = scene.objects[1] if len(scene.objects) > 1 else None
            rows.append({
                "path": rel, "label": shape, "split": split, "kind": scene.kind, "caption": scene.caption,
                "colour": scene.objects[0].colour, "position": position_words(scene.objects[0].cx, scene.objects[0].cy, SIDE),
                "size_px": float(scene.objects[0].size), "mask": mask_to_png(scene.masks[0]),
                "second_label": second.shape if second else None,
                "second_mask": mask_to_png(scene.masks[1]) if second else None,
            })
    manifest = root / "manifest.parquet"
    write_manifest(manifest, rows)
    return manifest


__all__ = ["COLOURS", "SHAPES", "Scene", "make_scene", "write_toy_dataset", "mask_to_png", "png_to_mask",
           "size_word"]


def caption_bank() -> dict[str, list[str]]:
    """A concept bank in the words the toy CLIP was trained on: every colour of every shape."""
    return {shape: [with_article(f"{colour} {shape}") for colour in COLOURS] for shape in SHAPES}
