"""Equality with the methods' authors' code on the same weights and images: LeGrad (legrad-torch 1.1's
`compute_legrad_clip`), Grad-ECLIP (the authors' `grad_eclip` on `clip_encode_dense`) and Grad-CAM
(pytorch-grad-cam's `GradCAM`). Their outputs were computed once by tests/data/make_reference_maps.py (their code
needs open_clip 2.23 and packages the project does not install) and are stored with the tiny towers' weights."""
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mapcap.tasks.models import LoadedModel, ModelSpec
from mapcap.tasks.relevancy.methods import min_max, relevancy_maps
from tests.towers.tiny import build

REF = torch.load(Path(__file__).parents[1] / "data" / "reference_maps.pt", weights_only=False)


def _model(name: str) -> LoadedModel:
    model, pre, tok = build(name)
    model.visual.load_state_dict({k: v.float() for k, v in REF["state_dicts"][name].items()})
    model.logit_scale.data.fill_(float(REF["logit_scale"][name]))
    return LoadedModel(ModelSpec(name, "", "cpu", "fp32"), model, pre, tok)


def _pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(np.corrcoef(a.flatten().numpy(), b.flatten().numpy())[0, 1])


def _inputs(name: str):
    return REF["pixels"][name].float(), REF["texts"][name].float()


@pytest.mark.parametrize("name", ["Tiny-ViT", "Tiny-RN", "Tiny-ConvNeXt"])
def test_the_stored_weights_give_the_stored_embeddings(name):
    pix, _ = _inputs(name)
    with torch.no_grad():
        got = _model(name).model.encode_image(pix)
    assert (got - REF["embeddings"][name]).abs().max() < 1e-4


@pytest.mark.parametrize("batch", [1, 4])
def test_legrad_equals_the_authors_compute_legrad_clip(batch):
    lm = _model("Tiny-ViT")
    pix, txt = _inputs("Tiny-ViT")
    ours = relevancy_maps(lm, "legrad", pix, txt, batch_size=batch)  # (4, 8, 8) at the authors' default, -2
    up = min_max(F.interpolate(ours[:, None], scale_factor=8, mode="bilinear")[:, 0])  # as the authors upsample
    for a, b in zip(up, REF["legrad"]):
        assert _pearson(a, b) >= 0.999


@pytest.mark.parametrize("batch", [1, 4])
def test_grad_eclip_equals_the_authors_grad_eclip(batch):
    lm = _model("Tiny-ViT")
    pix, txt = _inputs("Tiny-ViT")
    ours = relevancy_maps(lm, "grad_eclip", pix, txt, batch_size=batch)
    assert torch.allclose(ours, REF["grad_eclip"], rtol=1e-3, atol=1e-6 * float(REF["grad_eclip"].abs().max()))
    for a, b in zip(ours, REF["grad_eclip"]):
        assert _pearson(a, b) >= 0.999


@pytest.mark.parametrize("name,key", [("Tiny-RN", "gradcam_rn"), ("Tiny-ConvNeXt", "gradcam_convnext")])
def test_gradcam_equals_pytorch_grad_cam(name, key):
    lm = _model(name)
    pix, txt = _inputs(name)
    ours = relevancy_maps(lm, "gradcam", pix, txt, batch_size=4)  # (4, 4, 4) at the feature grid
    up = min_max(F.interpolate(ours[:, None], size=pix.shape[-2:], mode="bilinear")[:, 0])  # as it scales
    compared = 0
    for a, b in zip(up, REF[key]):
        if b.std() == 0:  # relu zeroed the whole map: both must be zero
            assert a.abs().max() == 0
            continue
        assert _pearson(a, b) >= 0.999
        compared += 1
    assert compared >= 2
