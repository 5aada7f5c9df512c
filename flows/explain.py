"""The `explain` flow: plan shards, map the per-shard stages, record the run, summarise it.

This module only wires tasks; every stage's logic lives in tasks/.
"""
from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from datetime import datetime, timezone
from typing import Literal

from prefect import flow, get_run_logger, unmapped
from prefect.artifacts import (create_markdown_artifact, create_progress_artifact, create_table_artifact,
                               update_progress_artifact)
from prefect.futures import as_completed
from pydantic import BaseModel, ConfigDict, Field, field_validator

from mapcap.flows.stages import ALL_STAGES, Stage, check_stages
from mapcap.tasks.captioners.base import CaptionerConfig
from mapcap.tasks.stages.captions import CaptionsConfig, captions_shard_task
from mapcap.tasks.stages.classify import ClassifyConfig, classify_shard_task
from mapcap.tasks.stages.concepts import ConceptsConfig, concepts_shard_task
from mapcap.tasks.stages.evaluate import evaluate_run_task
from mapcap.tasks.plan import plan_run_task, shards_to_force
from mapcap.tasks.stages.regions import RegionsConfig, regions_shard_task
from mapcap.tasks.stages.relevancy import RelevancyConfig, relevancy_shard_task
from mapcap.tasks.report.html import write_report_task
from mapcap.tasks.segment import SegmentConfig
from mapcap.tasks.stages.summarize import SummarizeConfig, summarize_run_task
from mapcap.tasks.run_record import record_run_task
from mapcap.tasks.report.run_summary import run_summary_task


class ExplainParams(BaseModel):
    """Parameters of one MapCap run (Prefect renders its UI form from this model)."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    dataset: str = Field("toy", description="ImageFolder directory, manifest (.csv/.parquet with path,label), "
                                            "or 'toy' for the embedded toy shapes dataset")
    class_map: str | None = Field(None, description="optional JSON {folder or label: class name}")
    model: str = Field("toy", description="open_clip model name (e.g. ViT-B-16), or 'toy'")
    pretrained: str = Field("toy", description="open_clip pretrained tag, a local checkpoint path, or 'toy'")
    templates: str | list[str] = Field("simple", description="template set (openai, simple, compare) or a list "
                                                             "of templates with one '{}' each")
    top_k: int = Field(5, ge=1, description="labels and probabilities kept per prediction")
    shard_size: int = Field(256, ge=1, description="images per shard (one task, one file per table)")
    batch_size: int = Field(64, ge=1, description="images per forward pass")
    workers: int = Field(4, ge=1, description="image decode threads per shard")
    device: str = Field("auto", description="'auto' (CUDA if present), 'cpu', 'cuda', 'cuda:N'")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field("auto", description="auto: bf16/fp16 on GPU, fp32 on CPU")
    out: str = Field("./mapcap-results", description="results root: local path or fsspec URL (s3://...)")
    run_name: str | None = Field(None, description="run id; reusing one resumes that run, skipping finished shards")
    force: bool = Field(False, description="redo shards that are already complete")
    redo_classes: list[str] | None = Field(None, description="redo only the shards holding images of these classes "
                                                             "(reprocessing a subset; other shards are reused)")
    stages: list[Stage] = Field(
        ALL_STAGES,
        description="stages to run: classify (always; later stages read it), relevancy, regions, concepts and captions "
                    "(per shard; each reuses what the one before stored), evaluate "
                    "(faithfulness of chefer all/last block, gradient and random maps on a sample; pointing game and "
                    "class discrimination where the dataset's manifest has masks), summarize (per-class caption "
                    "summaries and their properties; needs captions), report (one HTML file under <out>/reports). "
                    "concepts (visual / language concepts, mutual knowledge) needs a concept bank (`descriptors`)")
    summary_k: int = Field(3, ge=1, description="captions per class summary (picked by MMR)")
    gpus_per_shard: float = Field(0, ge=0, description="on Ray (flows/explain_ray.py): GPUs each shard task asks "
                                                        "for, so Ray places one shard per GPU; 0: no request")
    synonyms: dict[str, list[str]] | None = Field(None, description="{class: [synonym, ...]}: words that count as "
                                                                    "naming the class in a caption")
    eval_images: int = Field(64, ge=1, description="images the evaluate stage perturbs")
    segment_threshold: Literal["otsu", "mass"] = Field("otsu", description="map threshold: Otsu, or the most "
                                                                            "relevant pixels holding segment_mass")
    segment_mass: float = Field(0.5, gt=0, le=1, description="share of relevancy mass kept (threshold='mass')")
    segment_min_area: float = Field(0.005, ge=0, lt=1, description="drop regions below this share of the image")
    segment_top_k: int = Field(3, ge=1, description="regions kept per map, ranked by relevancy mass")
    segment_superpixels: int = Field(0, ge=0, description="snap regions to this many SLIC superpixels (0: off)")
    captioner: str = Field("retrieval", description="captioner for regions and whole images: retrieval (concept "
                                                    "bank phrases by CLIP similarity), clipcap, hf")
    captioner_path: str | None = Field(None, description="clipcap: a ClipCap .pt checkpoint or save_clipcap "
                                                         "directory (toy model: the shipped toy ClipCap); hf: a local "
                                                         "transformers image-to-text model directory")
    captioner_tokenizer: str | None = Field(None, description="clipcap with an authors' .pt checkpoint: a local "
                                                              "GPT-2 tokenizer directory")
    caption_beams: int = Field(1, ge=1, description="generative captioners: 1 = greedy, more = beam search")
    caption_max_tokens: int = Field(20, ge=1, description="generative captioners: longest caption in tokens")
    caption_prompt: str | None = Field(None, description="hf: text prompt for conditional models (BLIP)")
    concept_bank: str | None = Field(None, description="JSON {class: [phrase, ...]} for the retrieval captioner "
                                                       "(the toy model has a built-in one)")
    descriptors: str | None = Field(None, description="concept bank: JSON {class: [descriptor, ...]} (Menon & "
                                                      "Vondrick's format) for description-based classification "
                                                      "and the concepts stage; the toy model has its own")
    concept_subject: str = Field("an object", description="subject of class-free concept prompts: '<subject>, "
                                                          "which has <descriptor>'")
    concept_top_k: int = Field(3, ge=1, description="visual concepts (descriptors) per region and per image")
    language_top_k: int = Field(5, ge=1, description="language concepts (descriptors nearest the predicted class)")
    caption_top_k: int = Field(1, ge=1, description="regions per map to caption")
    caption_context: float = Field(1.0, ge=0, description="crop context around a region, × its size")
    relevancy_methods: list[str] = Field(["chefer", "gradient"], description="relevancy methods (chefer, gradient, "
                                                                              "random)")
    start_layers: list[int] | None = Field(None, description="chefer's first block(s); empty: the model's default "
                                                             "(last block for CLIP, all blocks for the toy model)")

    @field_validator("stages")
    @classmethod
    def _stages_with_their_upstream(cls, stages: list[str]) -> list[str]:
        return check_stages(stages)


def gpu_request(gpus: float) -> AbstractContextManager:
    """prefect-ray's remote_options(num_gpus=...) when asked for, else nothing."""
    if gpus <= 0:
        return nullcontext()
    from prefect_ray.context import remote_options
    return remote_options(num_gpus=gpus)


@flow(name="explain", flow_run_name="explain-{params.dataset}", validate_parameters=True)
def explain(params: ExplainParams = ExplainParams()) -> dict:
    """Classify (and later explain) every image of a dataset, shard by shard, into Parquet under `params.out`."""
    logger = get_run_logger()
    started = datetime.now(timezone.utc)
    cap = CaptionerConfig(params.captioner, params.captioner_path, params.captioner_tokenizer, params.concept_bank,
                          beams=params.caption_beams, max_tokens=params.caption_max_tokens, prompt=params.caption_prompt)
    plan = plan_run_task(dataset=params.dataset, class_map=params.class_map, model=params.model,
                         pretrained=params.pretrained, templates=params.templates, shard_size=params.shard_size,
                         device=params.device, precision=params.precision, run_name=params.run_name,
                         captioner=cap if "captions" in params.stages else None, redo_classes=params.redo_classes,
                         descriptors=params.descriptors, need_bank="concepts" in params.stages)
    pdict = params.model_dump()
    record_run_task(params.out, plan, pdict, "running", started)
    logger.info("run %s: %d images in %d shards, %d classes, %d templates, model %s (%s) on %s/%s",
                plan.run_id, plan.n_images, len(plan.shards), len(plan.classes), len(plan.templates),
                plan.model.name, plan.model.pretrained or "random", plan.model.device, plan.model.precision)
    cfg = ClassifyConfig(plan.model, plan.classes, plan.templates, params.top_k, params.batch_size, params.workers,
                         plan.bank)
    progress = create_progress_artifact(0.0, description=f"MapCap run {plan.run_id}: shards done")
    shard_ids = list(range(len(plan.shards)))
    forces = shards_to_force(plan, params.force, params.redo_classes)
    with gpu_request(params.gpus_per_shard):  # a Ray resource request per shard task (others ignore it)
        classified = classify_shard_task.map(unmapped(cfg), plan.run_id, shard_ids, [list(s) for s in plan.shards],
                                             unmapped(params.out), forces)
        last = classified  # the last stage of each shard's chain
        if "relevancy" in params.stages:
            rcfg = RelevancyConfig(plan.model, plan.classes, plan.templates, tuple(params.relevancy_methods),
                                   tuple(params.start_layers) if params.start_layers else None,
                                   params.batch_size, params.workers)
            last = relevancy_shard_task.map(unmapped(rcfg), plan.run_id, shard_ids, unmapped(params.out),
                                            forces, upstream=classified)
            if "regions" in params.stages:
                seg = SegmentConfig(params.segment_threshold, params.segment_mass, params.segment_min_area,
                                    params.segment_top_k, params.segment_superpixels)
                last = regions_shard_task.map(unmapped(RegionsConfig(seg)), plan.run_id, shard_ids,
                                              unmapped(params.out), forces, upstream=last)
                if "concepts" in params.stages:
                    method = "chefer" if "chefer" in params.relevancy_methods else params.relevancy_methods[0]
                    kcfg = ConceptsConfig(plan.model, plan.classes, plan.templates, plan.bank, params.concept_subject,
                                          params.concept_top_k, params.language_top_k, method, params.caption_context)
                    last = concepts_shard_task.map(unmapped(kcfg), plan.run_id, shard_ids, unmapped(params.out),
                                                   forces, upstream=last)
                if "captions" in params.stages:
                    ccfg = CaptionsConfig(plan.model, cap, "chefer", params.caption_top_k, params.caption_context,
                                          plan.dataset)
                    last = captions_shard_task.map(unmapped(ccfg), plan.run_id, shard_ids, unmapped(params.out),
                                                   forces, upstream=last)
    shard_of = {f.task_run_id: i for i, f in enumerate(last)}
    failed: set[int] = set()
    for n, fut in enumerate(as_completed(last), start=1):
        try:
            fut.result()
        except Exception as e:  # the shard's chain failed (its retries spent); the run records it
            logger.error("shard %d failed: %s: %s", shard_of[fut.task_run_id], type(e).__name__, e)
            failed.add(shard_of[fut.task_run_id])
        update_progress_artifact(progress, 100.0 * n / len(last))
    results = []
    for i, fut in enumerate(classified):
        try:
            results.append(fut.result())
        except Exception:  # already logged through its chain
            failed.add(i)
    status = "failed" if failed else "finished"
    record_run_task(params.out, plan, pdict, status, started, results, sorted(failed))
    if failed:
        raise RuntimeError(f"run {plan.run_id}: shard(s) {sorted(failed)} failed (see their task logs); rerun with "
                           f"run_name={plan.run_id!r} to redo only those")
    if "evaluate" in params.stages:
        evaluate_run_task(params.out, plan.run_id, plan.model, plan.classes, plan.templates, plan.dataset,
                          params.eval_images)
    if "summarize" in params.stages and "captions" in params.stages:
        syn = tuple((c, tuple(v)) for c, v in sorted((params.synonyms or {}).items()))
        summarize_run_task(params.out, plan.run_id, SummarizeConfig(plan.model, params.captioner, k=params.summary_k,
                                                                    synonyms=syn, dataset=plan.dataset), plan.classes)
    report = write_report_task(params.out, plan.run_id) if "report" in params.stages else None
    summary = run_summary_task(params.out, plan.run_id)
    report_line = f"\n\nHTML report: `{report}`\n" if report else ""
    create_markdown_artifact(summary["markdown"] + report_line, key="mapcap-run-summary",
                             description=f"MapCap run {plan.run_id}: per-class accuracy")
    create_table_artifact(summary["per_class_table"], key="mapcap-per-class",
                          description=f"MapCap run {plan.run_id}: per-class accuracy, confusion and caption summary")
    return {"run_id": plan.run_id, "root": params.out, "n_images": plan.n_images, "accuracy": summary["accuracy"],
            "n_failures": summary["n_failures"], "shards_done": len(results),
            "shards_skipped": sum(r["skipped"] for r in results), "report": report}
