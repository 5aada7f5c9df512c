"""Varied training captions for toy scenes, and which captions are true of which images.

The toy CLIP must answer common prompt templates ("a photo of a {}.", the OpenAI 80), so training captions
mix reference captions with templated class names. A caption is a positive for every image in the batch it
truthfully describes (not only its own), which removes the false negatives that repeated short captions cause.
"""
from __future__ import annotations

import numpy as np
from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

from mapcap.tasks.articles import fix_articles, with_article
from mapcap.tasks.concept_bank import descriptor_sentence
from mapcap.toy.concepts import PROPERTIES, SUBJECTS
from mapcap.toy.shapes import COLOURS, SHAPES, ToyObject, position_words, size_word

POSITIONS = tuple(position_words(c * 40 + 20, r * 40 + 20, 120) for r in range(3) for c in range(3))
SIZES = ("small", "", "large")
EXTRA_TEMPLATES = ("{}", "a {}", "the {}", "a photo of a {}.", "This is a photo of {}", "This is a {} image.",
                   "a picture of a {}", "an image of a {}", "a drawing of a {}", "a {} shape", "a photo of the {}")
TEMPLATES: tuple = tuple(OPENAI_IMAGENET_TEMPLATES) + tuple((lambda c, t=t: t.format(c)) for t in EXTRA_TEMPLATES)
ABSENT = -9  # attribute code of a missing object / constraint
ANY = -1  # wildcard in a caption constraint (as a shape bitmask: every bit set)
# A constraint's shape field is a bitmask of the shapes it allows (descriptors are true of several shapes);
# its other fields are codes compared for equality.


def attributes(obj: ToyObject, side: int) -> list[int]:
    """(shape, colour, position, size) codes of one object."""
    return [SHAPES.index(obj.shape), list(COLOURS).index(obj.colour),
            POSITIONS.index(position_words(obj.cx, obj.cy, side)), SIZES.index(size_word(obj, side))]


def bit(shapes) -> int:
    """The shape bitmask of a shape index or an iterable of shape names."""
    if isinstance(shapes, (int, np.integer)):
        return 1 << int(shapes)
    return sum(1 << SHAPES.index(s) for s in shapes)


def _descriptor_caption(rng: np.random.Generator, a: list[int]) -> tuple[str, list[int]]:
    """A caption saying one true descriptor of the object: with its class name (the sentence of
    description-based classification), with a class-free subject, or bare (the visual-concept prompt)."""
    shape, colour = SHAPES[a[0]], list(COLOURS)[a[1]]
    true = [d for d, shapes in PROPERTIES.items() if shape in shapes]
    d = true[rng.integers(len(true))]
    r = rng.random()
    if r < 0.4:
        with_colour = rng.random() < 0.25
        name = with_article(f"{colour} {shape}") if with_colour else \
            (shape if rng.random() < 0.5 else with_article(shape))
        return f"{name}, {descriptor_sentence(d)}", [bit(a[0]), a[1] if with_colour else ANY, ANY, ANY]
    allowed = bit(PROPERTIES[d])
    if r < 0.8:
        subject = SUBJECTS[rng.integers(len(SUBJECTS))]
        with_colour = rng.random() < 0.2
        if with_colour:
            subject = with_article(f"{colour} shape")
        return f"{subject}, {descriptor_sentence(d)}", [allowed, a[1] if with_colour else ANY, ANY, ANY]
    return d, [allowed, ANY, ANY, ANY]


def _one(rng: np.random.Generator, a: list[int], descriptors: float = 0.0) -> tuple[str, list[int]]:
    if descriptors and rng.random() < descriptors:
        return _descriptor_caption(rng, a)
    a = [a[0], a[1], a[2], a[3]]
    shape, colour = SHAPES[a[0]], list(COLOURS)[a[1]]
    a[0] = bit(a[0])
    r = rng.random()
    if r < 0.30:  # the reference style, sometimes with the size
        size = SIZES[a[3]] if rng.random() < 0.4 else ""
        text = with_article(" ".join(w for w in (size, colour, shape, POSITIONS[a[2]]) if w))
        return text, [a[0], a[1], a[2], a[3] if size else ANY]
    if r < 0.45:
        return with_article(f"{colour} {shape}"), [a[0], a[1], ANY, ANY]
    if r < 0.85:
        with_colour = rng.random() < 0.25
        name = f"{colour} {shape}" if with_colour else shape
        text = fix_articles(TEMPLATES[rng.integers(len(TEMPLATES))](name))  # "a photo of an orange star."
        return text, [a[0], a[1] if with_colour else ANY, ANY, ANY]
    return (shape if rng.random() < 0.5 else with_article(shape)), [a[0], ANY, ANY, ANY]


def sample_caption(rng: np.random.Generator, objs: np.ndarray, descriptors: float = 0.0) -> tuple[str, np.ndarray]:
    """A caption for an image with object codes `objs` (2, 4) and its constraints (2, 4); `descriptors` is the
    share of single-object captions that say a descriptor instead of naming the object."""
    cons = np.full((2, 4), ABSENT)
    n = int((objs[:, 0] != ABSENT).sum())
    if n == 2 and rng.random() < 0.6:  # name both objects
        order = rng.permutation(2)
        parts = []
        for k, i in enumerate(order):
            a = objs[i]
            if rng.random() < 0.6:
                parts.append(with_article(f"{list(COLOURS)[a[1]]} {SHAPES[a[0]]}"))
                cons[k] = [bit(a[0]), a[1], ANY, ANY]
            else:
                parts.append(with_article(SHAPES[a[0]]))
                cons[k] = [bit(a[0]), ANY, ANY, ANY]
        return f"{parts[0]} and {parts[1]}", cons
    i = 0 if n == 1 or rng.random() < 0.7 else 1  # usually the target
    text, c = _one(rng, list(objs[i]), descriptors)
    cons[0] = c
    return text, cons


def truth_matrix(cons: np.ndarray, objs: np.ndarray) -> np.ndarray:
    """(T, I) bool: caption t (constraints (T, 2, 4)) is true of image i (objects (I, 2, 4))."""
    c = cons[:, None, :, None, :]  # (T, 1, 2, 1, 4)
    o = objs[None, :, None, :, :]  # (1, I, 1, 2, 4)
    field_ok = (c == ANY) | (c == o)  # (T, I, 2, 2, 4)
    present = o[..., 0] != ABSENT  # (1, I, 1, 2)
    shape_ok = present & ((c[..., 0] >> np.where(present, o[..., 0], 0)) & 1).astype(bool)  # bitmask test
    field_ok[..., 0] = shape_ok
    obj_ok = field_ok.all(-1).any(-1)  # (T, I, 2): constraint k met by some object
    absent = cons[:, None, :, 0] == ABSENT  # (T, 1, 2)
    return (obj_ok | absent).all(-1)
