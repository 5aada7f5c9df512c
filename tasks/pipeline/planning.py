"""Planning: the run's parameters become the config of every stage it runs, validated before any shard starts —
method names, start layers against the model's depth, the captioner, stage dependencies, the concept bank's
coverage. Each stage builds its own config (`Stage.plan`, in its file); a stage that lacks what it needs is
skipped with its reason when it was picked by default, and fails the run when the user listed it.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from mapcap.tasks.limits import DEFAULT_LIMITS, DecodeLimits
from mapcap.tasks.pipeline.base import StageUnavailable, check_stage_list, get_stage, stage_order, upstream
from mapcap.tasks.pipeline.driver import StagePlan
from mapcap.tasks.pipeline.facts import facts_for
from mapcap.tasks.pipeline.plan import RunPlan, plan_run, result_notes

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Resolved:
    plan: RunPlan  # dataset, model, classes, templates, shards, run id
    shard_stages: tuple[StagePlan, ...]  # per-shard stages to run, in order
    run_stages: tuple[StagePlan, ...]  # per-run stages to run, in order
    skipped: tuple[tuple[str, str], ...]  # (stage or feature, why it does not run)
    notes: tuple[str, ...] = ()  # warnings about the run as planned (a model that does not know these classes)
    limits: DecodeLimits = DEFAULT_LIMITS  # what one image file may cost (tasks/limits.py)


Pass = tuple[tuple[StagePlan, ...], tuple[StagePlan, ...], frozenset[str]]  # shard stages, run stages, deferred


def passes(resolved: Resolved) -> list[Pass]:
    """The run in passes. With a deferred stage (costly and optional: faithfulness), the shards first run the
    others and a first report is written; then the shards run the deferred stages (the rest are complete and
    skipped) and every run-level stage follows (the report again, now with the evaluation)."""
    deferred = frozenset(sp.name for sp in resolved.shard_stages if get_stage(sp.name).deferred)
    if not deferred:
        return [(resolved.shard_stages, resolved.run_stages, deferred)]
    first = tuple(sp for sp in resolved.shard_stages if sp.name not in deferred)
    early = tuple(sp for sp in resolved.run_stages if not set(upstream(sp.name)) & deferred)
    return [(first, early, frozenset()), (resolved.shard_stages, resolved.run_stages, deferred)]


def resolve_run(p: Any) -> Resolved:
    """Plan the run and build the config of every stage it will run; see the module doc."""
    plan = plan_run(p.dataset, p.class_map, p.model, p.pretrained, p.classify.templates, p.shard_size, p.device,
                    p.precision, p.run_name, p.redo_classes, p.out, p.compile)
    explicit = p.stages is not None
    picked = check_stage_list(list(p.stages)) if explicit else stage_order()
    facts = facts_for(p, plan)
    configs: dict[str, Any] = {}
    skipped: list[tuple[str, str]] = []
    for name in picked:
        missing = [d for d in upstream(name) if d not in configs]
        try:
            if missing:
                raise StageUnavailable(f"it reads what {missing} write, and they do not run")
            configs[name] = get_stage(name).plan(p, facts)
        except StageUnavailable as e:
            if explicit:
                raise ValueError(f"stage {name!r} was asked for but cannot run: {e}") from e
            log.debug("stage %s skipped: %s", name, e)  # the flow says it, once
            skipped.append((name, str(e)))
    if "classify" in configs and p.classify.descriptions and facts.bank is None:
        skipped.append(("classify.descriptions", facts.bank_reason))
    plans = [StagePlan(n, configs[n]) for n in picked if n in configs]
    notes = result_notes(plan.model.name, plan.model.pretrained, plan.classes) + facts.notes
    return Resolved(plan, tuple(s for s in plans if get_stage(s.name).scope == "shard"),
                    tuple(s for s in plans if get_stage(s.name).scope == "run"), tuple(skipped), tuple(notes),
                    p.limits)
