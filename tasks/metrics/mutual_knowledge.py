"""Textual concepts of an image, and the mutual knowledge of CLIP's two encoders (Sammani & Deligiannis 2024).

Concept units are the descriptors of the run's concept bank (its vocabulary V), each embedded by the text
encoder as a class-free prompt ("an object, which has four corners").
- Visual concepts: for each segmented region of the predicted class's relevancy map (a square crop with
  context, as captioned), the top-k descriptors by cosine similarity; their distinct union X, ordered by
  importance = similarity of the descriptor to the whole image (descending), as in the authors' code.
  An image without regions uses the whole image as its one part.
- Language concepts: the top-m descriptors by cosine similarity to the predicted class's text embedding
  (the ensemble of the run's templates): Y.
- Mutual information, the estimator of the authors' released code (`get_intersection`): the N×M table
  T_ij = [X_i = Y_j] normalised to P = T / ΣT, H = -Σ P ln(P + 1e-9), MI = ln N + ln M + H (nats); 0 when
  X and Y share nothing. With c shared descriptors this is ln(N·M·c). (Their sign of H is kept; the textbook MI
  of a table with uniform marginals would subtract it.)
- MI curve: the visual concepts are removed one at a time in importance order (replaced by a placeholder that
  matches nothing, so N stays fixed), MI recomputed: N + 1 points from all present to none. AUC = the mean of
  the curve's points (their `get_statistics`); higher AUC = knowledge shared by more, and by less important,
  concepts.
- Faithfulness: the pixels of the regions tied to the top-s visual concepts (a concept is tied to the regions
  whose top-k hold it) are removed (filled with the image's mean colour) for s = 0..N: Deletion = mean of the
  predicted class's probability over those N + 1 images (lower = more faithful). Insertion starts from the
  image filled with its mean colour and restores the same pixels: mean probability (higher = more faithful).
  AccDrop = accuracy of the originals − accuracy after removing the top concept's regions (s = 1); AccInc =
  accuracy with only the top concept's regions restored (s = 1) − accuracy of the mean-colour images (s = 0).
  Probabilities and predictions use the run's ensemble class embeddings.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from mapcap.tasks.cache import load_once
from mapcap.tasks.concept_bank import concept_prompt
from mapcap.tasks.models import LoadedModel, encode_images, encode_pixels, encode_texts, in_batches
from mapcap.tasks.segment import rle_decode

REMOVED = -1  # placeholder of a removed visual concept: matches no language concept


@torch.no_grad()
def concept_embeddings(lm: LoadedModel, vocabulary: tuple[str, ...], subject: str) -> torch.Tensor:
    """(V, D) unit text embeddings of the class-free concept prompts; once per process."""
    prompts = [concept_prompt(d, subject) for d in vocabulary]
    return load_once(("concept-embeddings", lm.spec, tuple(vocabulary), subject),
                     lambda: in_batches(len(prompts), 512, lambda i, j: encode_texts(lm, prompts[i:j]).cpu()))


def top_k(sims: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Values and indices (R, k) of the k most similar concepts per row of sims (R, V)."""
    return sims.topk(min(k, sims.shape[-1]), dim=-1)


def visual_concepts(region_top: torch.Tensor, image_sims: torch.Tensor) -> tuple[list[int], dict[int, list[int]]]:
    """The distinct concepts among the regions' top-k (R, k), ordered by similarity to the whole image (V,)
    (descending, ties by index), and for each concept the regions whose top-k hold it."""
    tied: dict[int, list[int]] = {}
    for r, row in enumerate(region_top.tolist()):
        for v in row:
            tied.setdefault(v, []).append(r)
    order = sorted(tied, key=lambda v: (-float(image_sims[v]), v))
    return order, tied


def language_concepts(class_emb: torch.Tensor, concept_emb: torch.Tensor, m: int) -> tuple[list[int], list[float]]:
    """The m concepts nearest (cosine) a class's unit text embedding (D,), with their similarities."""
    vals, idx = (concept_emb @ class_emb).topk(min(m, len(concept_emb)))  # (m,)
    return idx.tolist(), vals.tolist()


def mutual_information(visual: Sequence[int], language: Sequence[int]) -> float:
    """MI (nats) of the match table of two concept lists, by the authors' estimator (see module doc)."""
    n, m = len(visual), len(language)
    if not n or not m:
        return 0.0
    table = (np.asarray(visual)[:, None] == np.asarray(language)[None, :]).astype(np.float64)  # (N, M)
    table[np.asarray(visual) == REMOVED, :] = 0.0
    total = table.sum()
    if total == 0:
        return 0.0
    p = table / total
    entropy = float(-(p * np.log(p + 1e-9)).sum())
    return math.log(n) + math.log(m) + entropy


def mi_curve(visual: Sequence[int], language: Sequence[int]) -> list[float]:
    """MI as the visual concepts are removed one at a time, in the given (importance) order: N + 1 points."""
    current = list(visual)
    curve = [mutual_information(current, language)]
    for i in range(len(current)):
        current[i] = REMOVED
        curve.append(mutual_information(current, language))
    return curve


def curve_auc(curve: Sequence[float]) -> float:
    """Area under a curve of evenly spaced steps, as the authors compute it: the mean of its points."""
    return float(np.mean(curve)) if len(curve) else 0.0


def region_mask(bbox: Sequence[int], runs: list[int], size: tuple[int, int]) -> np.ndarray:
    """A stored region (bbox + run lengths over it) as a full (H, W) bool mask; size is (W, H)."""
    x0, y0, x1, y1 = bbox
    mask = np.zeros((size[1], size[0]), dtype=bool)
    mask[y0:y1, x0:x1] = rle_decode(runs, (y1 - y0, x1 - x0))
    return mask


def cumulative_masks(order: list[int], tied: dict[int, list[int]], masks: list[np.ndarray]) -> list[np.ndarray]:
    """Step s = 0..N: the union of the regions tied to the first s concepts of `order`."""
    cur = np.zeros_like(masks[0])
    steps = [cur.copy()]
    for v in order:
        for r in tied[v]:
            cur |= masks[r]
        steps.append(cur.copy())
    return steps


def perturbed(image: Image.Image, steps: list[np.ndarray]) -> tuple[list[Image.Image], list[Image.Image]]:
    """Deletion images (step pixels filled with the image's mean colour) and insertion images (a mean-colour
    canvas with the step pixels restored)."""
    arr = np.asarray(image.convert("RGB"))  # (H, W, 3)
    mean = arr.reshape(-1, 3).mean(0).round().astype(np.uint8)
    deleted, inserted = [], []
    for m in steps:
        d = arr.copy()
        d[m] = mean
        i = np.broadcast_to(mean, arr.shape).copy()
        i[m] = arr[m]
        deleted.append(Image.fromarray(d))
        inserted.append(Image.fromarray(i))
    return deleted, inserted


@torch.no_grad()
def class_probs(lm: LoadedModel, images: list[Image.Image] | torch.Tensor, class_emb: torch.Tensor) -> torch.Tensor:
    """(B, C) zero-shot probabilities of PIL images, or of preprocessed pixels (B, 3, S, S), against unit class
    embeddings (C, D)."""
    enc = encode_pixels if isinstance(images, torch.Tensor) else encode_images
    img = in_batches(len(images), 256, lambda i, j: enc(lm, images[i:j]).float().cpu())  # (B, D), unit
    return (lm.model.logit_scale.exp().float().cpu() * img @ class_emb.T).softmax(-1)


def faithfulness(probs: torch.Tensor, pred: int, label: int) -> dict:
    """Deletion / insertion curves of the predicted class and the AccDrop / AccInc outcomes of one image, from
    the class probabilities (2(N+1), C) of its deletion images then its insertion images (see module doc)."""
    n = probs.shape[0] // 2
    dele, ins = probs[:n], probs[n:]
    return {"deletion_curve": dele[:, pred].tolist(), "insertion_curve": ins[:, pred].tolist(),
            "deletion": float(dele[:, pred].mean()), "insertion": float(ins[:, pred].mean()),
            "correct_after_drop": bool(dele[min(1, n - 1)].argmax() == label),
            "correct_after_insert": bool(ins[min(1, n - 1)].argmax() == label),
            "correct_empty": bool(ins[0].argmax() == label)}
