"""One forward for classification and Chefer maps.

The plain path runs the image tower twice per image: once without gradients to classify it, once more with
attention recorded to explain it. Here one forward records attention of the blocks from the earliest start
layer asked for (the earlier blocks run fused, without a graph); its embedding gives the probabilities of every
template, the ensemble and the descriptors, the ensemble's prediction is the target, and one backward gives
every start layer's map of the predicted class, which is also the true class's map when the prediction is
right. The few wrong images' true-class maps are left to the plain path (a second backward through the whole
batch would cost more than they do). Same numbers as `classify_pixels` + `relevancy_maps(..., "chefer")`
(tests/tasks/test_fused.py holds them to 1e-4 in fp32).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from mapcap.tasks.models import LoadedModel, autocast, model_lock
from mapcap.tasks.relevancy.attention import attention_blocks, recording_attention
from mapcap.tasks.relevancy.chefer import rollout
from mapcap.tasks.relevancy.methods import grid_size
from mapcap.tasks.zeroshot import probabilities


@dataclass
class Explained:
    probs: torch.Tensor  # (R, B, C) on the model's device: templates, ensemble (row T), descriptors
    pred: torch.Tensor  # (B,) ensemble prediction (class index)
    maps: dict[int, torch.Tensor]  # start layer -> (B, g, g) predicted-class maps, on CPU
    embedding: torch.Tensor  # (B, D) raw image embeddings (float), on the model's device (later stages reuse them)


def classify_and_explain(lm: LoadedModel, pixels: torch.Tensor, classifier: torch.Tensor, starts: list[int],
                         descriptions: tuple[torch.Tensor, torch.Tensor] | None = None) -> Explained:
    """Probabilities and predicted-class Chefer maps of a preprocessed batch (B, 3, H, W). classifier:
    (T + 1, C, D), its last row the ensemble the maps explain."""
    blocks = attention_blocks(lm.model.visual, "image")
    first = min(s % len(blocks) for s in starts)
    dev = lm.spec.device
    with model_lock(lm.model), recording_attention(blocks, first) as store, torch.enable_grad(), autocast(lm):
        img = lm.model.encode_image(pixels.to(dev, non_blocking=True))  # (B, D)
        attns = list(store)  # blocks[first:], each (B, H, N, N)
    with torch.no_grad():
        probs = probabilities(lm, img.detach(), classifier, descriptions)  # (R, B, C)
    T = classifier.shape[0] - 1
    pred = probs[T].argmax(-1)  # (B,) the ensemble's prediction
    unit = F.normalize(img.float(), dim=-1)  # (B, D)
    target = lm.model.logit_scale.exp().float() * (unit * classifier[T][pred]).sum(-1)  # (B,)
    grads = torch.autograd.grad(target.sum(), attns)  # one backward for the batch
    g = grid_size(lm)
    maps = {s: rollout(attns[s % len(blocks) - first:], grads[s % len(blocks) - first:])[:, 0, 1:]
            .reshape(-1, g, g).detach().float().cpu() for s in starts}  # (B, g, g) each
    return Explained(probs, pred, maps, img.detach().float())
