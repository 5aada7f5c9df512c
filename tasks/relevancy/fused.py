"""One forward for classification and Chefer maps.

The plain path runs the image tower twice per image: once without gradients to classify it, once more with
attention recorded to explain it. Here one forward records attention of the blocks from the earliest start
layer asked for (the earlier blocks run fused, without a graph); its embedding gives the probabilities of every
template, the ensemble and the descriptors, the ensemble's prediction picks the targets, and one backward per
target kind (predicted class, then the true class where it differs) gives every map. Same numbers as
`classify_pixels` + `relevancy_maps(..., "chefer")` (tests/tasks/test_fused.py holds them to 1e-4 in fp32).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from mapcap.tasks.models import LoadedModel, model_lock
from mapcap.tasks.relevancy.attention import attention_blocks, recording_attention
from mapcap.tasks.relevancy.chefer import rollout
from mapcap.tasks.relevancy.methods import _autocast, grid_size
from mapcap.tasks.zeroshot import probabilities


@dataclass
class Explained:
    probs: torch.Tensor  # (R, B, C) on the model's device: templates, ensemble (row T), descriptors
    pred: torch.Tensor  # (B,) ensemble prediction (class index)
    maps: dict[int, dict[str, torch.Tensor]]  # start layer -> {"pred": (B, g, g), "label": (B, g, g)} on CPU


def classify_and_explain(lm: LoadedModel, pixels: torch.Tensor, classifier: torch.Tensor, labels: torch.Tensor,
                         starts: list[int], descriptions: tuple[torch.Tensor, torch.Tensor] | None = None
                         ) -> Explained:
    """Probabilities and Chefer maps of a preprocessed batch (B, 3, H, W). classifier: (T + 1, C, D), its last
    row the ensemble the maps explain; labels: (B,) true class indices. The label map of an image whose
    prediction is right is its pred map (not computed twice)."""
    blocks = attention_blocks(lm.model.visual, "image")
    first = min(s % len(blocks) for s in starts)
    dev = lm.spec.device
    with model_lock(lm.model), recording_attention(blocks, first) as store, torch.enable_grad(), _autocast(lm):
        img = lm.model.encode_image(pixels.to(dev, non_blocking=True))  # (B, D)
        attns = list(store)  # blocks[first:], each (B, H, N, N)
    with torch.no_grad():
        probs = probabilities(lm, img.detach(), classifier, descriptions)  # (R, B, C)
    T = classifier.shape[0] - 1
    pred = probs[T].argmax(-1)  # (B,) the ensemble's prediction
    labels = labels.to(pred.device)
    unit = F.normalize(img.float(), dim=-1)  # (B, D)
    scale = lm.model.logit_scale.exp().float()
    text = classifier[T]  # (C, D) ensemble class embeddings
    wrong = pred != labels  # (B,)
    grads = {"pred": torch.autograd.grad((scale * (unit * text[pred]).sum(-1)).sum(), attns,
                                         retain_graph=bool(wrong.any()))}
    if wrong.any():  # right images add nothing to this target: their label map is the pred map
        target = scale * (unit * text[labels]).sum(-1) * wrong  # (B,)
        grads["label"] = torch.autograd.grad(target.sum(), attns)
    g = grid_size(lm)
    maps: dict[int, dict[str, torch.Tensor]] = {}
    for s in starts:
        k = s % len(blocks) - first
        m = {kind: rollout(attns[k:], gr[k:])[:, 0, 1:].reshape(-1, g, g).detach().float().cpu()  # (B, g, g)
             for kind, gr in grads.items()}
        m["label"] = torch.where(wrong.cpu().view(-1, 1, 1), m["label"], m["pred"]) if "label" in m else m["pred"]
        maps[s] = m
    return Explained(probs, pred, maps)
