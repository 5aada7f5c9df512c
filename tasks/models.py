"""Model loading: one cache per process, clear errors for unknown names and tags.

Models are named the open_clip way: a config name plus a pretrained tag (downloaded by open_clip on a
connected machine) or a local checkpoint path. The toy model's config is registered with open_clip here, so
it loads through exactly the same code path as any other local checkpoint.
"""
from __future__ import annotations

import gc
import logging
import os
import pickle
import threading
import weakref
from collections import OrderedDict
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch.nn.functional as F
from PIL import Image

import open_clip
import torch

from mapcap.tasks.cache import load_once
from mapcap.tasks.plugins import load_plugins, preset
from mapcap.tasks.provenance import frozen_config, omit_default
from mapcap.tasks.pipeline.stop import check_stop
from mapcap.tasks.text_tower import text_features
from mapcap.tasks.weights import hub_host, reachable, tag_options

log = logging.getLogger(__name__)


@frozen_config
class ModelSpec:
    name: str  # open_clip config name, e.g. 'ViT-B-16' or 'MapCap-Toy-ViT'
    pretrained: str  # open_clip tag ('laion2b_s34b_b88k'), a local checkpoint path, or '' for random weights
    device: str  # 'cpu', 'cuda', 'cuda:1'
    precision: str  # 'fp32' | 'bf16' | 'fp16' (autocast dtype for the forward pass)
    # torch.compile the image tower of passes without maps (embeddings; classification when no Chefer map shares
    # its pass); left out of stored configs and hashes while off, so results made before it existed still match
    compile: bool = omit_default(False)


@dataclass
class LoadedModel:
    spec: ModelSpec
    model: Any  # open_clip.CLIP, eval mode, on spec.device
    preprocess: Callable  # PIL image -> (3, H, W) float tensor
    tokenizer: Callable  # list[str] -> (N, context_length) long tensor
    tower: Callable | None = None  # model.visual under torch.compile (spec.compile), for passes without maps

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.spec.precision)


def autocast(lm: LoadedModel):
    """The model's mixed-precision context (bf16 / fp16 on a GPU), or nothing in fp32."""
    dtype = lm.autocast_dtype
    return torch.autocast(lm.spec.device.split(":")[0], dtype=dtype) if dtype else nullcontext()


def resolve_device(device: str) -> str:
    """'auto' -> 'cuda' when a GPU is present, else 'cpu'."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} was asked for but no CUDA GPU is visible; use device='cpu' or 'auto'")
    return device


def resolve_precision(precision: str, device: str) -> str:
    """'auto' -> bf16 on a GPU that supports it (fp16 otherwise), fp32 on CPU."""
    if precision == "auto":
        if device.startswith("cuda"):
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "fp32"
    if precision not in ("fp32", "bf16", "fp16"):
        raise ValueError(f"precision {precision!r} is unknown; choose auto, fp32, bf16 or fp16")
    return precision


def resolve_spec(name: str, pretrained: str, device: str = "auto", precision: str = "auto",
                 compile: bool = False) -> ModelSpec:
    """Validate a model name / pretrained pair and name what exists when it is wrong."""
    load_plugins()  # plugins register their open_clip configs and presets (the toy world: 'toy')
    if (p := preset(name)) is not None:
        name = p.model
    if (p := preset(pretrained)) is not None:
        pretrained = p.checkpoint
    if name not in open_clip.list_models():
        close = [m for m in open_clip.list_models() if name.lower().replace("/", "-")[:5] in m.lower()]
        raise ValueError(f"unknown open_clip model {name!r}; did you mean one of {close[:10] or 'ViT-B-16'}? "
                         f"`python -c 'import open_clip; print(open_clip.list_models())'` lists all "
                         f"{len(open_clip.list_models())}.")
    if pretrained and not os.path.isfile(pretrained):
        tags = open_clip.list_pretrained_tags_by_model(name)
        if pretrained not in tags:
            raise ValueError(f"pretrained {pretrained!r} is neither a local checkpoint file nor a tag of {name!r}; "
                             f"known tags: {tags or 'none (pass a local checkpoint path)'}")
    dev = resolve_device(device)
    return ModelSpec(name, str(Path(pretrained).resolve()) if pretrained and os.path.isfile(pretrained) else pretrained,
                     dev, resolve_precision(precision, dev), compile)


_LOCK = threading.Lock()
COMPILE_BACKEND = "inductor"  # torch.compile's backend for ModelSpec.compile (the tests trace with a cheaper one)


def compiled_tower(model: Any) -> Callable:
    """model.visual under torch.compile; `image_features` marks the batch dimension dynamic: shards' last batches
    and captions' crop batches vary in size, and each static size would compile again (eager after 8).
    Compiled on its first call, once per process; the module itself stays eager for the relevancy passes,
    which swap its attention modules."""
    return torch.compile(model.visual, backend=COMPILE_BACKEND, dynamic=False)


def image_features(lm: LoadedModel, pixels: torch.Tensor) -> torch.Tensor:
    """(B, D) raw image embeddings of pixels on the device: `encode_image`, through the compiled tower when
    spec.compile."""
    if lm.tower is None:
        return lm.model.encode_image(pixels)
    if len(pixels) == 1:  # a batch of one would compile a graph of its own: run it as a pair
        return lm.tower(torch.cat([pixels, pixels]))[:1]
    torch._dynamo.mark_dynamic(pixels, 0)  # the batch size only: one graph for every batch size
    return lm.tower(pixels)


def create_clip(name: str, pretrained: str = "") -> tuple[Any, Callable, Callable]:
    """Build an open_clip model (train mode, CPU, fp32) with its eval preprocess and tokenizer."""
    load_plugins()  # in a fresh worker process (Ray, a deployment) too: plugins register their open_clip configs
    weights, opts = tag_options(name, pretrained) if pretrained and not os.path.isfile(pretrained) else (pretrained, {})
    tokenizer = clip_tokenizer(name)  # before the model: a tokenizer that cannot be had stops planning at once
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=weights or None, **opts)
    except torch.cuda.OutOfMemoryError:
        raise
    except (RuntimeError, OSError, EOFError, pickle.UnpicklingError) as e:  # a corrupt or mismatched checkpoint
        raise ValueError(f"open_clip could not build {name!r} with pretrained={pretrained!r}: {type(e).__name__}: "
                         f"{str(e)[:600]}; check that the checkpoint is whole and is one of {name!r} (OpenAI's "
                         f"weights need the '-quickgelu' name), or pass another --model / --pretrained") from e
    if not weights:
        init_coca_decoder(model)
    return model, preprocess, tokenizer


def init_coca_decoder(model: Any) -> None:
    """open_clip 3.3 never initialises a CoCa's multimodal decoder projection (torch.empty: zeros, or NaN; its
    `init_parameters` would, but fails on a missing attribute and is not called): random weights get the normal
    init it intends (std = width^-0.5), so a random CoCa's captions are finite and seeded."""
    proj = getattr(getattr(model, "text_decoder", None), "text_projection", None)
    if isinstance(proj, torch.nn.Parameter):
        torch.nn.init.normal_(proj, std=proj.shape[0] ** -0.5)


def _tokenizer_cached(hf: str | None) -> bool:
    """Whether the hub tokenizer `hf` is in the local Hugging Face cache (no network asked)."""
    if not hf:
        return False
    from huggingface_hub import try_to_load_from_cache
    return any(isinstance(try_to_load_from_cache(hf, f), str) for f in ("tokenizer.json", "tokenizer_config.json"))


def clip_tokenizer(name: str) -> Callable:
    """open_clip's tokenizer for the model. CLIP's own ships with open_clip; SigLIP's, and any named by a Hugging
    Face id in the model's config, is fetched on first use, so a machine without the hub needs it in its cache."""
    hf = (open_clip.get_model_config(name) or {}).get("text_cfg", {}).get("hf_tokenizer_name")
    try:
        if (hf or "siglip" in name.lower()) and not _tokenizer_cached(hf):
            # open_clip fetches SigLIP's vocabulary from Google's storage when no hub id is named
            why = reachable(hub_host() if hf else "storage.googleapis.com")
            if why:
                raise OSError(why)
        return open_clip.get_tokenizer(name)
    except (OSError, ValueError, ImportError) as e:  # hub / web unreachable, or the tokenizer's library missing
        raise ValueError(f"the tokenizer of {name!r} ({hf or 'fetched by open_clip on first use'}) is not available "
                         f"on this machine ({type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}); "
                         f"load it once where the Hugging Face hub is reachable (python -c \"import open_clip; "
                         f"open_clip.get_tokenizer('{name}')\") and copy its cache (HF_HOME) here, or pick a model "
                         f"with CLIP's built-in tokenizer") from e


def load_model(spec: ModelSpec) -> LoadedModel:
    """The model for `spec`, built once per process and shared by every task in it."""
    def build() -> LoadedModel:
        log.info("loading %s (%s) on %s", spec.name, spec.pretrained or "random weights", spec.device)
        model, preprocess, tokenizer = create_clip(spec.name, spec.pretrained)
        model = model.to(spec.device).eval()
        lm = LoadedModel(spec, model, preprocess, tokenizer, compiled_tower(model) if spec.compile else None)
        settle_heap()
        return lm
    return load_once(("clip", spec), build)


def settle_heap() -> None:
    """Move every object alive now (imported libraries, loaded models) out of the garbage collector's view.
    torch, transformers, Prefect and pydantic leave millions of tracked objects, and each full collection rescans
    them all: 0.2–0.45 s, every few seconds while shards build rows (measured with gc.callbacks on the 4,000-image
    classify benchmark). They live as long as the process does; later objects are collected as usual."""
    gc.collect()
    gc.freeze()


_MODEL_LOCKS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def model_lock(model: torch.nn.Module) -> threading.RLock:
    """One lock per model object: shard tasks share a model across threads, and relevancy temporarily swaps
    its attention modules, so every forward pass holds this lock (one shard at a time on a device). Taking it is
    also where the shard of a stopped run ends (tasks/pipeline/stop.py): before each forward, whatever the stage."""
    check_stop()
    with _LOCK:
        if model not in _MODEL_LOCKS:
            _MODEL_LOCKS[model] = threading.RLock()
        return _MODEL_LOCKS[model]


@torch.no_grad()
def encode_images(lm: LoadedModel, crops: list[Image.Image], normalize: bool = True) -> torch.Tensor:
    """(N, D) image embeddings of PIL crops, unit length unless normalize=False."""
    return encode_pixels(lm, torch.stack([lm.preprocess(c.convert("RGB")) for c in crops]), normalize)


@torch.no_grad()
def encode_pixels(lm: LoadedModel, pixels: torch.Tensor, normalize: bool = True) -> torch.Tensor:
    """(N, D) image embeddings of preprocessed pixels (N, 3, S, S), unit length unless normalize=False."""
    with model_lock(lm.model), autocast(lm):
        emb = image_features(lm, pixels.to(lm.spec.device, non_blocking=True)).float()
    return F.normalize(emb, dim=-1) if normalize else emb


TEXT_CACHE_SIZE = 65_536  # text embeddings kept per model (captions, references and bank phrases repeat)
TEXT_BATCH = 512  # texts per encoder call
_TEXTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> OrderedDict[text, (D,) embedding]


@torch.no_grad()
def embed_texts(lm: LoadedModel, texts: list[str]) -> torch.Tensor:
    """(T, D) unit text embeddings, TEXT_BATCH texts per encoder call under the model's autocast (a batch halves on
    CUDA out-of-memory), no cache: callers that hold many texts at once (a class × template classifier) or that
    cache them themselves (`encode_texts`). Hold the model's lock."""
    def encode(i: int, j: int) -> torch.Tensor:
        with autocast(lm):
            raw = text_features(lm.model, lm.tokenizer(texts[i:j]).to(lm.spec.device))  # (j - i, D)
        return F.normalize(raw.float(), dim=-1)
    return in_batches(len(texts), TEXT_BATCH, encode)


@torch.no_grad()
def encode_texts(lm: LoadedModel, texts: list[str]) -> torch.Tensor:
    """(T, D) unit text embeddings. Each distinct text goes through the encoder once per process: captions,
    references and phrases repeat across crops, shards and stages (a bounded LRU per model)."""
    with model_lock(lm.model):
        cache = _TEXTS.setdefault(lm.model, OrderedDict())
        todo = list(dict.fromkeys(t for t in texts if t not in cache))
        if todo:
            cache.update(zip(todo, embed_texts(lm, todo)))  # (D,) rows
        for t in texts:
            cache.move_to_end(t)
        if not texts:
            return torch.empty(0, lm.model.visual.output_dim, device=lm.spec.device)
        out = torch.stack([cache[t] for t in texts])  # (T, D)
        while len(cache) > TEXT_CACHE_SIZE:
            cache.popitem(last=False)
        return out


def in_batches(n: int, batch_size: int, fn: Callable[[int, int], torch.Tensor],
               log: logging.Logger | None = None) -> torch.Tensor:
    """fn(i, j) over [0, n) in batches, concatenated on dim 0; a CUDA out-of-memory halves the batch and retries
    from where it stopped (down to 1, then it is raised)."""
    out, i, bs = [], 0, max(batch_size, 1)
    while i < n:
        try:
            part = fn(i, min(i + bs, n))
        except torch.cuda.OutOfMemoryError:
            if bs == 1:
                raise
            bs //= 2
            (log or logging.getLogger(__name__)).warning("CUDA out of memory: batch halved to %d", bs)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            continue
        out.append(part)
        i += bs
    return torch.cat(out) if out else torch.empty(0)
