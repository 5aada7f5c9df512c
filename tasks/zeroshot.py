"""Zero-shot classification: text classifiers (templates and their ensemble, descriptions) and class probabilities."""
from __future__ import annotations


import numpy as np
import pyarrow as pa
import torch
import torch.nn.functional as F

from mapcap.storage.schemas import SCHEMAS
from mapcap.tasks.cache import load_once
from mapcap.tasks.concept_bank import DESCRIPTION_TEMPLATE, ConceptBank, class_prompt
from mapcap.tasks.models import (LoadedModel, autocast, embed_texts, encode_texts, image_features, in_batches,
                                 model_lock)
from mapcap.tasks.templates import fill

ENSEMBLE = "ensemble"  # the template name of the ensemble rows in `predictions`


@torch.no_grad()
def text_classifier(lm: LoadedModel, classes: tuple[str, ...], templates: tuple[str, ...]) -> torch.Tensor:
    """(T + 1, C, D) unit text embeddings: one row per template, the last row their ensemble.

    The ensemble is the mean of the normalised per-template embeddings, normalised again (CLIP's recipe).
    Computed once per process for a model, class list and template list, all prompts through `embed_texts` (batches,
    the model's autocast: ImageNet's 1,000 classes × CLIP's 80 templates are 80,000 prompts).
    """
    def build() -> torch.Tensor:
        prompts = [fill(t, c) for c in classes for t in templates]  # class-major
        with model_lock(lm.model):
            emb = embed_texts(lm, prompts)  # (C·T, D)
        emb = emb.view(len(classes), len(templates), -1).transpose(0, 1)  # (T, C, D)
        ens = F.normalize(emb.mean(0, keepdim=True), dim=-1)  # (1, C, D)
        return torch.cat([emb, ens], dim=0)  # (T + 1, C, D)
    return load_once(("text-classifier", lm.spec, tuple(classes), tuple(templates)), build)


@torch.no_grad()
def description_classifier(lm: LoadedModel, bank: ConceptBank) -> tuple[torch.Tensor, torch.Tensor]:
    """Menon & Vondrick's description-based classifier: unit embeddings (P, D) of every prompt
    "{class}, which (is/has) {descriptor}" and the (C, P) matrix that averages each class's prompt scores."""
    def build() -> tuple[torch.Tensor, torch.Tensor]:
        prompts = [class_prompt(c, d) for c, descs in zip(bank.classes, bank.descriptors) for d in descs]
        emb = in_batches(len(prompts), 512, lambda i, j: encode_texts(lm, prompts[i:j]))  # (P, D), unit
        avg = torch.zeros(len(bank.classes), len(prompts), device=emb.device)  # (C, P)
        start = 0
        for c, descs in enumerate(bank.descriptors):
            avg[c, start:start + len(descs)] = 1.0 / len(descs)
            start += len(descs)
        return emb, avg
    return load_once(("descriptions", lm.spec, bank), build)


def probabilities(lm: LoadedModel, img: torch.Tensor, classifier: torch.Tensor,
                  descriptions: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """(R, B, C) class probabilities of image embeddings (B, D): one row per template, the ensemble, and with
    `descriptions` a last row scoring each class by the mean similarity to its descriptor prompts."""
    img = F.normalize(img.float(), dim=-1)
    scale = lm.model.logit_scale.exp().float()
    logits = scale * torch.einsum("bd,tcd->tbc", img, classifier)  # (T+1, B, C)
    if descriptions is not None:
        emb, avg = descriptions  # (P, D), (C, P)
        desc = scale * (img @ emb.T) @ avg.T  # (B, C): mean cosine over each class's prompts, scaled
        logits = torch.cat([logits, desc.unsqueeze(0)], dim=0)  # (T+2, B, C)
    return logits.softmax(-1)


@torch.no_grad()
def classify_pixels(lm: LoadedModel, pixels: torch.Tensor, classifier: torch.Tensor,
                    descriptions: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """(R, B, C) class probabilities of a preprocessed batch (B, 3, H, W) (see `probabilities`)."""
    dev = lm.spec.device
    with model_lock(lm.model), autocast(lm):
        img = image_features(lm, pixels.to(dev, non_blocking=True))  # (B, D)
    return probabilities(lm, img, classifier, descriptions)


def prediction_table(run_id: str, shard: int, image_ids: list[str], labels: list[str], classes: tuple[str, ...],
                     templates: tuple[str, ...], probs: torch.Tensor, top_k: int) -> pa.Table:
    """`predictions` rows, one per template × image (+ the ensemble row, + a 'descriptors' row when probs has one
    more), as Arrow columns built from whole tensors: a dict per row cost 0.3 s and turning the dicts into Arrow
    0.1 s more for a 3,318-image shard, most of a GPU's budget for classifying it."""
    k = min(top_k, len(classes))
    R, B, _ = probs.shape
    # on the probabilities' device: only top-k, the label's probability and its rank are copied back
    top_p, top_i = probs.topk(k, dim=-1)  # (R, B, k)
    label_idx = torch.tensor([classes.index(l) for l in labels], device=probs.device)  # (B,)
    label_p = probs.gather(-1, label_idx.view(1, -1, 1).expand(R, -1, 1)).squeeze(-1)  # (R, B)
    rank = (probs > label_p.unsqueeze(-1)).sum(-1) + 1  # (R, B)
    top_p, top_i, label_p, rank = (t.cpu().numpy() for t in (top_p.float(), top_i, label_p.float(), rank))
    names = list(templates) + [ENSEMBLE] + [DESCRIPTION_TEMPLATE] * (R - len(templates) - 1)
    vocab = pa.array(classes, pa.string())
    pred_i = top_i[..., 0].reshape(-1)  # (R·B,) rows template-major, as the rows were always written
    n = R * B
    offsets = pa.array(np.arange(0, n * k + 1, k, dtype=np.int32))
    return pa.table({
        "run_id": pa.array([run_id] * n, pa.string()),
        "image_id": pa.array(list(image_ids) * R, pa.string()),
        "shard": pa.array(np.full(n, shard, dtype=np.int32)),
        "template": pa.array([name for name in names for _ in range(B)], pa.string()),
        "label": pa.array(list(labels) * R, pa.string()),
        "pred": vocab.take(pa.array(pred_i)),
        "correct": pa.array(pred_i == np.tile(label_idx.cpu().numpy(), R)),
        "pred_prob": pa.array(top_p[..., 0].reshape(-1).astype(np.float32)),
        "label_prob": pa.array(label_p.reshape(-1).astype(np.float32)),
        "label_rank": pa.array(rank.reshape(-1).astype(np.int32)),
        "topk_labels": pa.ListArray.from_arrays(offsets, vocab.take(pa.array(top_i.reshape(-1)))),
        "topk_probs": pa.ListArray.from_arrays(offsets, pa.array(top_p.reshape(-1).astype(np.float32))),
    }, schema=SCHEMAS["predictions"])
