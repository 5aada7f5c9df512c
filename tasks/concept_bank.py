"""Concept banks of textual descriptors, and the sentences that join a descriptor to a class name.

A concept bank is a JSON {class name: [descriptor, ...]}: the format of the descriptor files published with
Menon & Vondrick 2023 ("Visual Classification via Description from Large Language Models"), e.g.
`descriptors_imagenet.json`. The toy world ships `toy/concepts.json`.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from mapcap.tasks.templates import prompt_name

DESCRIPTION_TEMPLATE = "descriptors"  # the template name of description-based rows in `predictions`


def descriptor_sentence(descriptor: str) -> str:
    """Menon & Vondrick's rule (`make_descriptor_sentence`) for joining a descriptor to a class name.

    Kept exactly, quirks included: it tests the first letter, so any descriptor starting with 'a' gets "which is".
    """
    if descriptor.startswith("a") or descriptor.startswith("an"):
        return f"which is {descriptor}"
    if descriptor.startswith(("has", "often", "typically", "may", "can")):
        return f"which {descriptor}"
    if descriptor.startswith("used"):
        return f"which is {descriptor}"
    return f"which has {descriptor}"


def class_prompt(class_name: str, descriptor: str) -> str:
    """'{class}, which (is/has) {descriptor}': their prompt for description-based classification."""
    return f"{prompt_name(class_name)}, {descriptor_sentence(descriptor)}"


def concept_prompt(descriptor: str, subject: str) -> str:
    """The class-free prompt of a visual concept, e.g. 'an object, which has four corners'."""
    return f"{subject}, {descriptor_sentence(descriptor)}" if subject else descriptor


def load_descriptors(path: str | Path, classes: list[str] | None = None) -> dict[str, list[str]]:
    """Read and check a concept bank; with `classes`, every class must have at least one descriptor."""
    try:
        bank = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"concept bank {path} is not a readable JSON file: {e}") from e
    if not isinstance(bank, dict) or not all(isinstance(v, list) for v in bank.values()):
        raise ValueError(f"concept bank {path} must be a JSON object {{class name: [descriptor, ...]}}")
    out = {}
    for cls, descs in bank.items():
        clean = [str(d).strip() for d in descs if str(d).strip()]
        out[str(cls)] = list(dict.fromkeys(clean))  # drop duplicates, keep order
    if classes is not None:
        missing = [c for c in classes if not out.get(c)]
        if missing:
            raise ValueError(f"concept bank {path} has no descriptors for classes {missing[:5]}"
                             f"{' ...' if len(missing) > 5 else ''}; add them, or use a bank that covers the "
                             f"dataset's classes (keys must be the dataset's class names)")
    return out


def vocabulary(bank: dict[str, list[str]]) -> list[str]:
    """Every distinct descriptor of the bank, in first-seen order (the concept vocabulary)."""
    return list(dict.fromkeys(d for descs in bank.values() for d in descs))


@dataclass(frozen=True)
class ConceptBank:
    """A resolved concept bank for a run's classes (hashable: it is part of stage configs)."""

    classes: tuple[str, ...]  # the run's classes, in index order
    descriptors: tuple[tuple[str, ...], ...]  # per class, its descriptors
    source: str  # the JSON it came from

    @property
    def vocabulary(self) -> tuple[str, ...]:
        """Every distinct descriptor, in first-seen order: the concept units of mutual knowledge."""
        return tuple(vocabulary(dict(zip(self.classes, self.descriptors))))

    def of(self, class_name: str) -> tuple[str, ...]:
        return self.descriptors[self.classes.index(class_name)]


def resolve_bank(path: str | None, model_name: str, classes: tuple[str, ...]) -> ConceptBank | None:
    """The run's concept bank: the given JSON, the model preset's bank (the toy model's), else None."""
    if not path:
        from mapcap.tasks.plugins import preset_for_model
        p = preset_for_model(model_name)
        if p is None or not p.descriptors:
            return None
        path = p.descriptors
    bank = load_descriptors(path, list(classes))
    return ConceptBank(tuple(classes), tuple(tuple(bank[c]) for c in classes), str(path))
