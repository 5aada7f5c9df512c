"""Planning: the parameter model's sections become stage configs, and everything is validated before any shard
starts — method names, start layers against the model's depth, the captioner, stage dependencies, the concept
bank's coverage. A stage that lacks what it needs is skipped with its reason when it was picked by default, and
fails the run when the user listed it.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from mapcap.tasks.captioners.base import CaptionerConfig, check_captioner
from mapcap.tasks.captioners.general_bank import GENERAL
from mapcap.tasks.captioners.retrieval import phrase_bank
from mapcap.tasks.concept_bank import ConceptBank, resolve_bank
from mapcap.tasks.cost import CPU_STEPS, default_eval_images
from mapcap.tasks.models import ModelSpec, load_model
from mapcap.tasks.pipeline.plan import RunPlan, default_batch, model_notes, plan_run
from mapcap.tasks.relevancy.methods import DEFAULTS, check_supported, default_start_layer, get_method, supported
from mapcap.tasks.relevancy.towers import Tower, tower_of, vit_blocks
from mapcap.tasks.segment import SegmentConfig
from mapcap.tasks.pipeline.base import StageUnavailable, check_stage_list, get_stage, stage_order, upstream
from mapcap.tasks.stages.caption_quality import CaptionQualityConfig
from mapcap.tasks.stages.captions import CaptionsConfig, references
from mapcap.tasks.stages.classify import ClassifyConfig
from mapcap.tasks.stages.concepts import ConceptsConfig
from mapcap.tasks.pipeline.driver import StagePlan
from mapcap.tasks.stages.evaluate import EvaluateConfig
from mapcap.tasks.stages.faithfulness import FaithfulnessConfig
from mapcap.tasks.stages.regions import RegionsConfig
from mapcap.tasks.stages.relevancy import RelevancyConfig
from mapcap.tasks.stages.report import ReportConfig
from mapcap.tasks.stages.summarize import SummarizeConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Resolved:
    plan: RunPlan  # dataset, model, classes, templates, shards, run id
    shard_stages: tuple[StagePlan, ...]  # per-shard stages to run, in order
    run_stages: tuple[StagePlan, ...]  # per-run stages to run, in order
    skipped: tuple[tuple[str, str], ...]  # (stage or feature, why it does not run)
    notes: tuple[str, ...] = ()  # warnings about the run as planned (a model that does not know these classes)


@dataclass(frozen=True)
class Facts:
    """What the builders share: the plan, the bank (or why there is none), the primary map variant."""

    plan: RunPlan
    bank: ConceptBank | None
    bank_reason: str
    variants: tuple[tuple[str, int | None], ...]

    @property
    def primary(self) -> tuple[str, int | None]:
        return self.variants[0]


def model_tower(spec: ModelSpec) -> tuple[Tower, int | None]:
    """The model's image-tower kind and map grid, and its blocks for ViTs (None for convolutional towers)."""
    visual = load_model(spec).model.visual
    tower = tower_of(visual)
    return tower, (len(vit_blocks(visual)) if tower.kind in ("vit", "timm_vit") else None)


def _starts(method: str, wanted: list[int] | None, model_name: str, depth: int | None) -> list[int | None]:
    """A method's start blocks, checked against the tower's depth; [None] for methods without one."""
    if get_method(method).start is None:
        return [None]
    if not wanted:  # the default: chefer's preset or -1, legrad's -2 (the whole tower when it has fewer blocks)
        return [max(default_start_layer(model_name, method), -(depth or 1))]
    for s in wanted:
        if depth is not None and not -depth <= s < depth:
            raise ValueError(f"relevancy start layer {s} is out of range for {model_name}, whose vision tower has "
                             f"{depth} blocks: use 0..{depth - 1} (0 = all blocks) or -{depth}..-1 (-1 = the last "
                             f"block)")
    return list(dict.fromkeys(wanted))


def map_variants(p, spec: ModelSpec) -> tuple[tuple[str, int | None], ...]:
    """(method, start layer) per map to compute, the primary first. Left empty, the methods are the best the
    model's tower supports (DEFAULTS); unknown methods, methods the tower cannot do and bad layers fail here."""
    tower, depth = model_tower(spec)
    names = list(p.relevancy.methods or DEFAULTS[tower.kind])
    for m in names:
        check_supported(m, tower.kind, spec.name)
    return tuple((m, s) for m in dict.fromkeys(names)
                 for s in _starts(m, p.relevancy.start_layers if m == "chefer" else None, spec.name, depth))


def all_variants(spec: ModelSpec) -> tuple[tuple[str, int | None], ...]:
    """Every method the tower supports, as evaluate compares them: chefer over all blocks and the last one, the
    others at their defaults; the baselines (gradient, random) last."""
    tower, depth = model_tower(spec)
    names = [m for m in supported(tower.kind) if m not in ("gradient", "random")] + ["gradient", "random"]
    return tuple((m, s) for m in names
                 for s in ([0, -1] if m == "chefer" else _starts(m, None, spec.name, depth)))


def concept_bank(p, plan: RunPlan) -> tuple[ConceptBank | None, str]:
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


def _classify(p, f: Facts) -> ClassifyConfig:
    bank = f.bank if p.classify.descriptions else None
    return ClassifyConfig(f.plan.model, f.plan.classes, f.plan.templates, p.classify.top_k,
                          p.classify.batch_size or default_batch(f.plan.model.device, 64, 256), bank)


def _relevancy(p, f: Facts) -> RelevancyConfig:
    return RelevancyConfig(f.plan.model, f.plan.classes, f.plan.templates, f.variants,
                           p.relevancy.batch_size or default_batch(f.plan.model.device, 64, 128))


def _regions(p, f: Facts) -> RegionsConfig:
    r = p.regions
    return RegionsConfig(SegmentConfig(r.threshold, r.mass, r.min_area, r.top_k, r.superpixels, r.resolution),
                         f.plan.dataset)


def sample_share(images: int, n_images: int) -> float:
    """The share of a run's images a sampled stage (concepts, faithfulness) does: `images`/n rounded to the nearest power of two (so between
    `images`/√2 and `images`·√2), which stays the same while the dataset grows within that factor: the stage's
    config, hence its rows, can then be reused by the next run (tasks/pipeline/reuse.py)."""
    if images >= n_images:
        return 1.0
    return min(1.0, 2.0 ** round(math.log2(max(images, 1) / n_images)))


def _concepts(p, f: Facts) -> ConceptsConfig:
    if f.bank is None:
        raise StageUnavailable(f.bank_reason)
    c = p.concepts
    sample = 1.0 if c.images is None else sample_share(c.images, f.plan.n_images)
    return ConceptsConfig(f.plan.model, f.plan.classes, f.plan.templates, f.bank, c.subject, c.top_k,
                          c.language_top_k, f.primary[0], f.primary[1], p.captions.context, sample)


def captioner_config(p, device: str, model_name: str = "", classes: tuple[str, ...] = ()) -> CaptionerConfig:
    """The captioner's config; a retrieval captioner left without a bank gets the general one, named as such and
    with the run's classes (so its config, and the captions' hash, say which phrases were used)."""
    c = p.captions
    cfg = CaptionerConfig(c.captioner, c.path, c.tokenizer, c.phrase_bank, c.phrases, c.beams, c.max_tokens, c.prompt,
                          c.batch_size or default_batch(device, 32, 256 if c.captioner == "hf" else 512))
    if c.captioner == "retrieval" and phrase_bank(cfg, model_name) == GENERAL:
        cfg = replace(cfg, concept_bank=GENERAL, classes=tuple(classes))
    return cfg


def _captions(p, f: Facts) -> CaptionsConfig:
    cap = captioner_config(p, f.plan.model.device, f.plan.model.name, f.plan.classes)
    check_captioner(cap, f.plan.model.name)  # StageUnavailable if it lacks what it needs: skipped, or fails
    return CaptionsConfig(f.plan.model, cap, f.primary[0], f.primary[1], p.captions.top_k, p.captions.context,
                          f.plan.dataset)


def _caption_quality(p, f: Facts) -> CaptionQualityConfig:
    if not references(f.plan.dataset):
        raise StageUnavailable(f"dataset {f.plan.dataset} has no reference captions (a Parquet manifest with a "
                               f"`caption` column) to score captions against")
    return CaptionQualityConfig(f.plan.dataset, f.primary[0], f.primary[1])


def _variants(f: Facts) -> tuple[tuple[str, int | None], ...]:
    return all_variants(f.plan.model)


def eval_images(p, f: Facts) -> tuple[int, str | None]:
    """The faithfulness sample's size: the user's, else sized to the model's cost off a GPU (tasks/cost.py)."""
    if p.evaluate.images is not None:
        return p.evaluate.images, None
    return default_eval_images(load_model(f.plan.model), len(_variants(f)), eval_steps(p, f))


def eval_steps(p, f: Facts) -> int | None:
    """RISE's deletion/insertion steps: the user's, else one per map cell on a GPU and CPU_STEPS elsewhere."""
    if p.evaluate.steps is not None:
        return p.evaluate.steps
    return None if f.plan.model.device.startswith("cuda") else CPU_STEPS


def _faithfulness(p, f: Facts) -> FaithfulnessConfig:
    e = p.evaluate
    return FaithfulnessConfig(f.plan.model, f.plan.classes, f.plan.templates, f.plan.dataset,
                              sample_share(eval_images(p, f)[0], f.plan.n_images), _variants(f),
                              steps=eval_steps(p, f), base=e.base, deletion=e.deletion, insertion=e.insertion)


def _evaluate(p, f: Facts) -> EvaluateConfig:
    return EvaluateConfig(_variants(f))


def _summarize(p, f: Facts) -> SummarizeConfig:
    syn = tuple((c, tuple(v)) for c, v in sorted((p.summarize.synonyms or {}).items()))
    return SummarizeConfig(f.plan.model, f.plan.classes, p.captions.captioner, "pred", f.primary[0], f.primary[1],
                           p.summarize.k, synonyms=syn, dataset=f.plan.dataset)


def _report(p, f: Facts) -> ReportConfig:
    return ReportConfig(p.report.explained, p.report.sampled, f.primary[0], f.primary[1])


BUILDERS: dict[str, Callable[[Any, Facts], Any]] = {
    "classify": _classify, "relevancy": _relevancy, "regions": _regions, "concepts": _concepts,
    "captions": _captions, "faithfulness": _faithfulness, "caption_quality": _caption_quality,
    "evaluate": _evaluate, "summarize": _summarize, "report": _report}


def resolve_run(p) -> Resolved:
    """Plan the run and build the config of every stage it will run; see the module doc."""
    plan = plan_run(p.dataset, p.class_map, p.model, p.pretrained, p.classify.templates, p.shard_size, p.device,
                    p.precision, p.run_name, p.redo_classes, p.out, p.compile)
    explicit = p.stages is not None
    picked = check_stage_list(list(p.stages)) if explicit else stage_order()
    bank, bank_reason = concept_bank(p, plan)
    facts = Facts(plan, bank, bank_reason, map_variants(p, plan.model))
    configs: dict[str, Any] = {}
    skipped: list[tuple[str, str]] = []
    for name in picked:
        missing = [d for d in upstream(name) if d not in configs]
        try:
            if missing:
                raise StageUnavailable(f"it reads what {missing} write, and they do not run")
            build = BUILDERS.get(name, lambda _p, _f: get_stage(name).Config())  # a new stage: its defaults
            configs[name] = build(p, facts)
        except StageUnavailable as e:
            if explicit:
                raise ValueError(f"stage {name!r} was asked for but cannot run: {e}") from e
            log.warning("stage %s skipped: %s", name, e)
            skipped.append((name, str(e)))
    if "classify" in configs and p.classify.descriptions and bank is None:
        skipped.append(("classify.descriptions", f"description-based classification off: {bank_reason}"))
        log.info("description-based classification off: %s", bank_reason)
    plans = [StagePlan(n, configs[n]) for n in picked if n in configs]
    notes = model_notes(plan.model.name, plan.classes)
    if "faithfulness" in configs and configs["faithfulness"].sample < 1.0:
        notes += [n for n in eval_images(p, facts)[1:] if n]
    for note in notes:
        log.warning("%s", note)
    return Resolved(plan, tuple(s for s in plans if get_stage(s.name).scope == "shard"),
                    tuple(s for s in plans if get_stage(s.name).scope == "run"), tuple(skipped), tuple(notes))
