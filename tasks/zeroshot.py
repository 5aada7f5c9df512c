"""Zero-shot classification: text classifiers (templates and their ensemble, descriptions) and class probabilities."""
from __future__ import annotations

import threading

import torch
import torch.nn.functional as F

from mapcap.tasks.concept_bank import DESCRIPTION_TEMPLATE, ConceptBank, class_prompt
from mapcap.tasks.models import LoadedModel, autocast, encode_texts, in_batches, model_lock

ENSEMBLE = "ensemble"  # the template name of the ensemble rows in `predictions`


_TEXT_CACHE: dict[tuple, torch.Tensor] = {}
_TEXT_LOCK = threading.Lock()


@torch.no_grad()
def text_classifier(lm: LoadedModel, classes: tuple[str, ...], templates: tuple[str, ...]) -> torch.Tensor:
    """(T + 1, C, D) unit text embeddings: one row per template, the last row their ensemble.

    The ensemble is the mean of the normalised per-template embeddings, normalised again (CLIP's recipe).
    Computed once per process for a model, class list and template list.
    """
    key = (lm.spec, classes, templates)
    with _TEXT_LOCK, model_lock(lm.model):
        if key not in _TEXT_CACHE:
            per_class = []
            for c in classes:
                tokens = lm.tokenizer([t.format(c) for t in templates]).to(lm.spec.device)  # (T, L)
                per_class.append(F.normalize(lm.model.encode_text(tokens).float(), dim=-1))  # (T, D)
            emb = torch.stack(per_class, dim=1)  # (T, C, D)
            ens = F.normalize(emb.mean(0, keepdim=True), dim=-1)  # (1, C, D)
            _TEXT_CACHE[key] = torch.cat([emb, ens], dim=0)  # (T + 1, C, D)
        return _TEXT_CACHE[key]


@torch.no_grad()
def description_classifier(lm: LoadedModel, bank: ConceptBank) -> tuple[torch.Tensor, torch.Tensor]:
    """Menon & Vondrick's description-based classifier: unit embeddings (P, D) of every prompt
    "{class}, which (is/has) {descriptor}" and the (C, P) matrix that averages each class's prompt scores."""
    key = ("descriptions", lm.spec, bank)
    with _TEXT_LOCK, model_lock(lm.model):
        if key not in _TEXT_CACHE:
            prompts = [class_prompt(c, d) for c, descs in zip(bank.classes, bank.descriptors) for d in descs]
            emb = in_batches(len(prompts), 512, lambda i, j: encode_texts(lm, prompts[i:j]))  # (P, D), unit
            avg = torch.zeros(len(bank.classes), len(prompts), device=emb.device)  # (C, P)
            start = 0
            for c, descs in enumerate(bank.descriptors):
                avg[c, start:start + len(descs)] = 1.0 / len(descs)
                start += len(descs)
            _TEXT_CACHE[key] = (emb, avg)
        return _TEXT_CACHE[key]


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
        img = lm.model.encode_image(pixels.to(dev, non_blocking=True))  # (B, D)
    return probabilities(lm, img, classifier, descriptions)


def prediction_rows(run_id: str, shard: int, image_ids: list[str], labels: list[str], classes: tuple[str, ...],
                    templates: tuple[str, ...], probs: torch.Tensor, top_k: int) -> list[dict]:
    """One row per image × template (+ the ensemble row, + a 'descriptors' row when probs has one more)."""
    k = min(top_k, len(classes))
    # on the probabilities' device: only top-k, the label's probability and its rank are copied back
    top_p, top_i = probs.topk(k, dim=-1)  # (T + 1, B, k)
    label_idx = torch.tensor([classes.index(l) for l in labels], device=probs.device)  # (B,)
    label_p = probs.gather(-1, label_idx.view(1, -1, 1).expand(probs.shape[0], -1, 1)).squeeze(-1)  # (T+1, B)
    rank = (probs > label_p.unsqueeze(-1)).sum(-1) + 1  # (T + 1, B)
    # as Python lists: indexing tensors element by element cost ~40 µs a row (0.9 s for a 3,300-image shard)
    top_p, top_i, label_p, rank = (t.cpu().tolist() for t in (top_p, top_i, label_p, rank))
    rows = []
    names = list(templates) + [ENSEMBLE] + [DESCRIPTION_TEMPLATE] * (probs.shape[0] - len(templates) - 1)
    for t, name in enumerate(names):
        for b, (iid, label) in enumerate(zip(image_ids, labels)):
            tp, ti = top_p[t][b], top_i[t][b]
            pred = classes[ti[0]]
            rows.append({"run_id": run_id, "image_id": iid, "shard": shard, "template": name, "label": label,
                         "pred": pred, "correct": pred == label, "pred_prob": tp[0], "label_prob": label_p[t][b],
                         "label_rank": rank[t][b], "topk_labels": [classes[i] for i in ti], "topk_probs": tp})
    return rows
