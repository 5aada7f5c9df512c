"""What planning found about a run, which every stage's `plan` may use: the run plan (dataset, model, classes,
templates, shards), the concept bank (or why there is none) and the relevancy map variants."""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Any

from mapcap.tasks.concept_bank import ConceptBank, resolve_bank
from mapcap.tasks.models import ModelSpec, load_model
from mapcap.tasks.pipeline.plan import RunPlan
from mapcap.tasks.relevancy.methods import DEFAULTS, check_supported, resolve_start, supported
from mapcap.tasks.relevancy.towers import Tower, tower_of, vit_blocks

Variant = tuple[str, int | None]  # (relevancy method, its first block or None)


@dataclass(frozen=True)
class Facts:
    plan: RunPlan
    bank: ConceptBank | None  # descriptors covering the classes, or None ...
    bank_reason: str  # ... and why
    variants: tuple[Variant, ...]  # the maps the relevancy stage computes, the primary first
    notes: list[str] = field(default_factory=list)  # warnings a stage's plan adds (kept in the run's record)

    @property
    def primary(self) -> Variant:
        """The map regions, captions, concepts and summaries use."""
        return self.variants[0]

    @functools.cached_property
    def all_variants(self) -> tuple[Variant, ...]:
        """Every map the tower supports, as evaluate compares them."""
        return all_variants(self.plan.model)


def facts_for(params: Any, plan: RunPlan) -> Facts:
    bank, reason = concept_bank(params, plan)
    return Facts(plan, bank, reason, map_variants(params, plan.model))


def model_tower(spec: ModelSpec) -> tuple[Tower, int | None]:
    """The model's image-tower kind and map grid, and its blocks for ViTs (None for convolutional towers)."""
    visual = load_model(spec).model.visual
    tower = tower_of(visual)
    return tower, (len(vit_blocks(visual)) if tower.kind in ("vit", "timm_vit") else None)


def map_variants(p: Any, spec: ModelSpec) -> tuple[Variant, ...]:
    """(method, start layer) per map to compute, the primary first. Left empty, the methods are the best the
    model's tower supports (DEFAULTS); unknown methods, methods the tower cannot do and bad layers fail here.
    Only chefer takes the user's start layers; the others start where they register."""
    tower, depth = model_tower(spec)
    names = list(p.relevancy.methods or DEFAULTS[tower.kind])
    for m in names:
        check_supported(m, tower.kind, spec.name)
    out: list[Variant] = []
    for m in dict.fromkeys(names):
        wanted = (p.relevancy.start_layers if m == "chefer" else None) or [None]
        out += [(m, resolve_start(m, spec.name, s, depth)) for s in dict.fromkeys(wanted)]
    return tuple(dict.fromkeys(out))


def all_variants(spec: ModelSpec) -> tuple[Variant, ...]:
    """Every method the tower supports, as evaluate compares them: chefer over all blocks and the last one, the
    others at their defaults; the baselines (gradient, random) last."""
    tower, depth = model_tower(spec)
    names = [m for m in supported(tower.kind) if m not in ("gradient", "random")] + ["gradient", "random"]
    return tuple((m, s) for m in names
                 for s in ([0, -1] if m == "chefer" else [resolve_start(m, spec.name, None, depth)]))


def concept_bank(p: Any, plan: RunPlan) -> tuple[ConceptBank | None, str]:
    """The run's concept bank and, without one, why. A bank the user named must cover the classes."""
    if p.concepts.descriptors:
        return resolve_bank(p.concepts.descriptors, plan.model.name, plan.classes), ""
    try:
        bank = resolve_bank(None, plan.model.name, plan.classes)
    except ValueError as e:  # the model preset's bank (the toy one) does not cover this dataset
        return None, f"the model's own concept bank does not cover this dataset: {e}; pass concepts.descriptors"
    if bank is None:
        return None, (f"no concept bank for model {plan.model.name}: pass concepts.descriptors=PATH, a JSON "
                      f"{{class name: [descriptor, ...]}} covering the dataset's classes")
    return bank, ""


def sample_share(images: int, n_images: int) -> float:
    """The share of a run's images a sampled stage (concepts, faithfulness) does: `images`/n rounded to the
    nearest power of two (so between `images`/√2 and `images`·√2), which stays the same while the dataset grows
    within that factor: the stage's config, hence its rows, can then be reused by the next run (reuse.py)."""
    if images >= n_images:
        return 1.0
    return min(1.0, 2.0 ** round(math.log2(max(images, 1) / n_images)))
