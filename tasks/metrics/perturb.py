"""Deletion and insertion images at the model's input resolution, as tensors.

The concepts stage perturbs every image 2(N+1) times (N concepts). Drawing each perturbation at full image
resolution and preprocessing it costs one full-size PIL resize per perturbed image. Here the image is
preprocessed once, each step's mask goes through the same resize and centre crop (a soft mask in [0, 1]), and
the model's inputs are blends at model resolution: deletion x·(1 − m) + c·m, insertion c·(1 − m) + x·m, with c
the image's mean colour normalised like x. Away from mask edges this is exactly what perturbing first gives;
tests/tasks/test_concepts.py bounds the difference in class probabilities on toy images.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from PIL import Image

from mapcap.tasks.decode import geometry, resize_crop


def perturbed_pixels(preprocess: Callable, image: Image.Image, steps: list[np.ndarray]) -> torch.Tensor:
    """(2 · len(steps), 3, S, S): the deletion inputs of every step (step pixels → the image's mean colour),
    then the insertion inputs (a mean-colour canvas with the step pixels restored). Steps are (H, W) bool
    masks. A preprocess `tasks/decode.geometry` cannot mirror falls back to perturbing at full size."""
    rgb = image.convert("RGB")
    mean = np.asarray(rgb).reshape(-1, 3).mean(0).round()  # (3,) the fill colour, as at full size
    geo = geometry(preprocess)
    if geo is None:
        from mapcap.tasks.metrics.mutual_knowledge import perturbed
        deleted, inserted = perturbed(image, steps)
        return torch.stack([preprocess(im) for im in deleted + inserted])
    x = preprocess(rgb)  # (3, S, S)
    c = ((torch.tensor(mean, dtype=x.dtype) / 255 - torch.tensor(geo.mean, dtype=x.dtype))
         / torch.tensor(geo.std, dtype=x.dtype)).view(3, 1, 1)  # (3, 1, 1)
    m = resize_crop(torch.from_numpy(np.stack(steps)).to(x.dtype), geo).clamp(0, 1).unsqueeze(1)  # (K, 1, S, S)
    deleted = x * (1 - m) + c * m  # (K, 3, S, S)
    inserted = c * (1 - m) + x * m
    return torch.cat([deleted, inserted])
