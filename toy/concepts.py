"""The toy world's textual concepts: descriptors that follow from how `toy.shapes` draws each shape.

`PROPERTIES` is the ground truth (which shapes each descriptor is physically true of); the shipped concept
bank `toy/concepts.json` lists, per class, every descriptor true of it, in Menon & Vondrick's format
({class name: [descriptor, ...]}). Training captions use the same sentences as description-based
classification, so the toy CLIP knows every descriptor word.
"""
from __future__ import annotations

import json
from pathlib import Path

from mapcap.toy.shapes import SHAPES

TOY_CONCEPTS = Path(__file__).resolve().parent / "concepts.json"

# descriptor -> the shapes it is true of, read off toy.shapes.object_mask
PROPERTIES: dict[str, frozenset[str]] = {
    "no corners": frozenset({"circle", "ring"}),  # ellipses
    "curved edges": frozenset({"circle", "ring"}),
    "no straight sides": frozenset({"circle", "ring"}),
    "hollow centre": frozenset({"ring"}),  # inner ellipse of 0.55 r cut out
    "has a hole in the middle": frozenset({"ring"}),
    "four corners": frozenset({"square", "diamond"}),  # the diamond is the square turned by 45°
    "four straight sides": frozenset({"square", "diamond"}),
    "right angles": frozenset({"square", "diamond", "cross"}),
    "flat top and bottom edges": frozenset({"square", "hexagon"}),  # hexagon drawn at 30°: flat top
    "pointed top and bottom": frozenset({"diamond"}),
    "three corners": frozenset({"triangle"}),
    "three straight sides": frozenset({"triangle"}),
    "pointed tips": frozenset({"triangle", "star"}),  # 60° and 36° corners
    "five points": frozenset({"star"}),
    "thin spikes": frozenset({"star"}),  # inner radius 0.42
    "inward corners": frozenset({"star", "cross"}),  # concave outline
    "four arms": frozenset({"cross"}),
    "twelve corners": frozenset({"cross"}),
    "six corners": frozenset({"hexagon"}),
    "six straight sides": frozenset({"hexagon"}),
    "blunt corners": frozenset({"hexagon"}),  # 120°
}
SUBJECTS = ("an object", "a shape", "something")  # class-free subjects of descriptor captions


def toy_concept_bank() -> dict[str, list[str]]:
    """{shape: [every descriptor true of it]} in PROPERTIES order."""
    return {s: [d for d, shapes in PROPERTIES.items() if s in shapes] for s in SHAPES}


def write_toy_concepts(path: Path = TOY_CONCEPTS) -> Path:
    path.write_text(json.dumps(toy_concept_bank(), indent=1) + "\n")
    return path
