"""The one parameter model of a run, nested by stage. Prefect renders its UI form from it, the CLI is generated
from it (cli/commands.py), and each section builds its stage's frozen config at planning (`resolve`).

Old flat names (`top_k`, `relevancy_methods`, `caption_beams`, ...) of deployments made before the sections keep
working: they are moved to their section, with a warning naming the new field.
"""
from __future__ import annotations

import logging
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from mapcap.tasks.pipeline.base import check_stage_list, stage_order

log = logging.getLogger(__name__)
StageName = Literal[tuple(stage_order())]  # type: ignore[valid-type]  # every registered stage, in run order


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class ClassifyParams(Section):
    templates: str | list[str] = Field("simple", description="template set (openai, simple, compare) or a list of "
                                                             "templates with one '{}' each")
    top_k: int = Field(5, ge=1, description="labels and probabilities kept per prediction")
    batch_size: int | None = Field(None, ge=1, description="images per forward pass (default: 256 on a GPU, 64 on "
                                                           "CPU)")
    descriptions: bool = Field(True, description="add description-based rows (template 'descriptors') when the "
                                                 "concept bank covers the dataset's classes")


class RelevancyParams(Section):
    methods: list[str] | None = Field(None, min_length=1,
                                      description="relevancy methods (chefer, legrad, grad_eclip, gradcam, gradient, "
                                                  "random); the first is the primary one that regions' captions, "
                                                  "concepts and summaries use. Empty: the best the model's image "
                                                  "tower supports: chefer for open_clip ViTs, legrad for timm ViTs "
                                                  "(EVA02, SigLIP), gradcam for ResNet and ConvNeXt; evaluate "
                                                  "scores every method the tower supports anyway")
    start_layers: list[int] | None = Field(None, description="chefer's first block(s), from 0 (all blocks) to "
                                                             "depth-1, or -1 for the last block; empty: the "
                                                             "model's default (last block; all for the toy model)")
    batch_size: int | None = Field(None, ge=1, description="(image, class) pairs per backward pass (default: 128 on "
                                                           "a GPU, 64 on CPU)")


class RegionsParams(Section):
    threshold: Literal["otsu", "mass"] = Field("otsu", description="map threshold: Otsu, or the most relevant "
                                                                   "pixels holding `mass`")
    mass: float = Field(0.5, gt=0, le=1, description="share of relevancy mass kept (threshold='mass')")
    min_area: float = Field(0.005, ge=0, lt=1, description="drop regions below this share of the image")
    top_k: int = Field(3, ge=1, description="regions kept per map, ranked by relevancy mass")
    superpixels: int = Field(0, ge=0, description="snap regions to this many SLIC superpixels (0: off)")
    resolution: int = Field(256, ge=0, description="segment maps at this longest side (px) and scale regions "
                                                   "back to the image (0: at full image size)")


class CaptionsParams(Section):
    captioner: str = Field("retrieval", description="captioner for regions and whole images: retrieval (phrase "
                                                    "bank by CLIP similarity), clipcap, hf, coca (a CoCa "
                                                    "model's own text decoder)")
    path: str | None = Field(None, description="clipcap: a ClipCap .pt checkpoint or save_clipcap directory (toy "
                                               "model: the shipped one); hf: a local image-to-text model dir")
    tokenizer: str | None = Field(None, description="clipcap with an authors' .pt checkpoint: a local GPT-2 "
                                                    "tokenizer directory")
    phrase_bank: str | None = Field(None, description="retrieval: JSON {class: [phrase, ...]}, or 'general'; "
                                                      "empty: the toy model's own bank, for other CLIPs the general "
                                                      "one (ImageNet's objects, stuff, the run's classes)")
    phrases: int = Field(1, ge=1, description="retrieval: best phrases joined into one caption")
    beams: int = Field(1, ge=1, description="generative captioners: 1 = greedy, more = beam search")
    max_tokens: int = Field(20, ge=1, description="generative captioners: longest caption in tokens")
    prompt: str | None = Field(None, description="hf: text prompt for conditional models (BLIP: 'a picture of')")
    top_k: int = Field(1, ge=1, description="regions per map to caption")
    context: float = Field(1.0, ge=0, description="crop context around a region, × its size")
    batch_size: int | None = Field(None, ge=1, description="crops per captioning call (default on a GPU: 512, 256 "
                                                           "for hf models; 32 on CPU). One H200 captioned 458/s "
                                                           "with GPT-2-small ClipCap in batches of 64, 3,663/s in 512")


class ConceptsParams(Section):
    descriptors: str | None = Field(None, description="concept bank: JSON {class: [descriptor, ...]} (Menon & "
                                                      "Vondrick's format) for description-based classification "
                                                      "and the concepts stage; the toy model has its own")
    subject: str = Field("an object", description="subject of class-free concept prompts: '<subject>, which has "
                                                  "<descriptor>'")
    top_k: int = Field(3, ge=1, description="visual concepts (descriptors) per region and per image")
    language_top_k: int = Field(5, ge=1, description="language concepts (descriptors nearest the predicted class)")
    images: int | None = Field(256, ge=1, description="about this many images of the run get concepts (within "
                                                      "a factor √2: a sample fixed by image id, the same whatever "
                                                      "the sharding and while the dataset grows within that "
                                                      "factor); empty: all")


class EvaluateParams(Section):
    images: int | None = Field(None, ge=1, description="about this many classified images get per-image "
                                                       "faithfulness scores (the faithfulness stage; within a factor "
                                                       "√2: a sample fixed by image id, as for concepts) that "
                                                       "evaluate averages; empty: 64, or on CPU fewer for a large "
                                                       "model (each image costs a few hundred forwards per method: "
                                                       "RISE's deletion and insertion take one per map cell)")
    steps: int | None = Field(None, ge=1, description="RISE deletion/insertion steps (each reveals or removes "
                                                      "the next cells in relevance order); empty: one per map "
                                                      "cell on a GPU, 16 on CPU (a ViT-B-16 map has 196 cells)")
    base: Literal["black", "mean"] = Field("black", description="what Chefer's positive/negative perturbation "
                                                                "shows where cells are removed: black (pixels "
                                                                "zeroed before normalisation, as Chefer et al.) "
                                                                "or mean (the dataset's mean colour)")
    deletion: Literal["mean", "black"] = Field("mean", description="RISE deletion substrate: mean (RISE's zeros "
                                                                   "of the normalised input) or black")
    insertion: Literal["blur", "mean"] = Field("blur", description="RISE insertion start image: blur (RISE's "
                                                                   "Gaussian blur, 11 px, sigma 5) or mean")


class SummarizeParams(Section):
    k: int = Field(3, ge=1, description="captions per class summary (picked by MMR)")
    synonyms: dict[str, list[str]] | None = Field(None, description="{class: [synonym, ...]}: words that count "
                                                                    "as naming the class in a caption")


class ReportParams(Section):
    explained: int = Field(12, ge=0, description="images shown with overlays and captions (misclassified first)")
    sampled: int = Field(6, ge=0, description="images shown with top-k probability bars")


SECTIONS = {"classify": ClassifyParams, "relevancy": RelevancyParams, "regions": RegionsParams,
            "captions": CaptionsParams, "concepts": ConceptsParams, "evaluate": EvaluateParams,
            "summarize": SummarizeParams, "report": ReportParams}

# old flat parameter -> (section, field) or several (a value that fed several stages)
FLAT_NAMES: dict[str, tuple[tuple[str, str], ...]] = {
    "templates": (("classify", "templates"),), "top_k": (("classify", "top_k"),),
    "batch_size": (("classify", "batch_size"), ("relevancy", "batch_size")),
    "relevancy_methods": (("relevancy", "methods"),), "start_layers": (("relevancy", "start_layers"),),
    "segment_threshold": (("regions", "threshold"),), "segment_mass": (("regions", "mass"),),
    "segment_min_area": (("regions", "min_area"),), "segment_top_k": (("regions", "top_k"),),
    "segment_superpixels": (("regions", "superpixels"),), "captioner": (("captions", "captioner"),),
    "captioner_path": (("captions", "path"),), "captioner_tokenizer": (("captions", "tokenizer"),),
    "caption_beams": (("captions", "beams"),), "caption_max_tokens": (("captions", "max_tokens"),),
    "caption_prompt": (("captions", "prompt"),), "concept_bank": (("captions", "phrase_bank"),),
    "caption_top_k": (("captions", "top_k"),), "caption_context": (("captions", "context"),),
    "descriptors": (("concepts", "descriptors"),), "concept_subject": (("concepts", "subject"),),
    "concept_top_k": (("concepts", "top_k"),), "language_top_k": (("concepts", "language_top_k"),),
    "eval_images": (("evaluate", "images"),), "summary_k": (("summarize", "k"),),
    "synonyms": (("summarize", "synonyms"),),
}


class ExplainParams(BaseModel):
    """Parameters of one MapCap run (Prefect renders its UI form from this model; the CLI is built from it)."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    dataset: str = Field("toy", description="ImageFolder directory, manifest (.csv/.parquet with path,label), "
                                            "or 'toy' for the embedded toy shapes dataset")
    class_map: str | None = Field(None, description="optional JSON {folder or label: class name}")
    model: str = Field("toy", description="open_clip model name (e.g. ViT-B-16), or 'toy'")
    pretrained: str = Field("toy", description="open_clip pretrained tag, a local checkpoint path, or 'toy'")
    device: str = Field("auto", description="'auto' (CUDA if present), 'cpu', 'cuda', 'cuda:N'")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field("auto", description="auto: bf16/fp16 on GPU, "
                                                                                   "fp32 on CPU")
    compile: bool = Field(False, description="torch.compile the image tower for passes without relevancy maps "
                                             "(crop embeddings; classification when no Chefer map shares its pass), "
                                             "compiled on its first batch, once per process. One H200 ran ViT-B-16's "
                                             "forward at 6,941 img/s eager, 10,475 compiled (bf16, batch 512); 2 "
                                             "CPU cores 1.1-1.2x. It pays only when the forward passes take longer "
                                             "than the compile: large runs, or a real model on CPU")
    out: str = Field("./mapcap-results", description="results root: local path or fsspec URL (s3://...)")
    run_name: str | None = Field(None, description="run id; reusing one resumes that run, skipping finished work")
    force: bool = Field(False, description="redo work that is already complete")
    redo_classes: list[str] | None = Field(None, description="redo only the shards holding images of these classes "
                                                             "(reprocessing a subset; other shards are reused)")
    stages: list[StageName] | None = Field(  # type: ignore[valid-type]
        None, description="stages to run, e.g. [classify, relevancy, regions]; empty: every stage this run can do "
                          "(a stage missing what it needs, such as a concept bank covering the classes, is skipped "
                          "with the reason in the run's record). A stage listed here must run, or the run fails.")
    shard_size: int | None = Field(None, ge=1, description="images per shard on average (one task, one file per "
                                                           "table and stage; shards are buckets of a hash of the "
                                                           "image path, their count fixed when the run starts); "
                                                           "empty: 4096 on a GPU, 1024 on CPU, so Prefect's "
                                                           "per-task cost stays a small share; on a GPU the count "
                                                           "is rounded up to pairs, the two shards in flight)")
    workers: int | None = Field(None, ge=1, description="threads per shard that decode, crop and segment (empty: "
                                                        "one per CPU core, at most 16)")
    gpus_per_shard: float = Field(0, ge=0, description="on Ray (flows/explain_ray.py): GPUs each shard task asks "
                                                        "for, so Ray places one shard per GPU; 0: no request")
    classify: ClassifyParams = Field(default_factory=ClassifyParams, description="zero-shot classification")
    relevancy: RelevancyParams = Field(default_factory=RelevancyParams, description="relevancy maps")
    regions: RegionsParams = Field(default_factory=RegionsParams, description="segmenting maps into regions")
    captions: CaptionsParams = Field(default_factory=CaptionsParams, description="captioning regions")
    concepts: ConceptsParams = Field(default_factory=ConceptsParams, description="textual concepts, mutual "
                                                                                  "knowledge")
    evaluate: EvaluateParams = Field(default_factory=EvaluateParams, description="evaluation of the map methods")
    summarize: SummarizeParams = Field(default_factory=SummarizeParams, description="per-class caption summaries")
    report: ReportParams = Field(default_factory=ReportParams, description="the HTML report")

    @field_validator("stages")
    @classmethod
    def _stages_with_their_upstream(cls, stages: list[str] | None) -> list[str] | None:
        return None if stages is None else check_stage_list(stages)

    @model_validator(mode="before")
    @classmethod
    def _flat_names(cls, data: Any) -> Any:
        """Move old flat parameters into their sections (deployments made before the sections keep working)."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        for old in [k for k in data if k in FLAT_NAMES]:
            value = data.pop(old)
            targets = FLAT_NAMES[old]
            log.warning("parameter %r is now %s; the old name still works but will go", old,
                        " and ".join(f"{s}.{f}" for s, f in targets))
            for section, field in targets:
                sec = data.get(section)
                sec = dict(sec) if isinstance(sec, dict) else (sec.model_dump() if isinstance(sec, BaseModel) else {})
                sec.setdefault(field, value)
                data[section] = sec
        return data

    def resolve(self):
        """The run plan and every stage's config, validated before any shard starts (see tasks/pipeline/planning.py)."""
        from mapcap.tasks.pipeline.planning import resolve_run

        return resolve_run(self)
