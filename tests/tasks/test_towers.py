"""Relevancy on every image-tower family open_clip builds: method × family × batch size × precision, on tiny
random models of each family (tests/towers/tiny.py), and the tower kinds of the real architectures."""
import gc
from types import SimpleNamespace

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F

from mapcap.tasks.stages.relevancy import RelevancyParams
from mapcap.tasks.pipeline.facts import all_variants, map_variants
from mapcap.tasks.models import LoadedModel, ModelSpec
from mapcap.tasks.relevancy.methods import DEFAULTS, METHODS, relevancy_maps, supported
from mapcap.tasks.relevancy.recording import recording
from mapcap.tasks.relevancy.towers import tower_of, vit_blocks
from tests.towers.tiny import FAMILIES, build, register

GRID = [(name, m) for name, kind in FAMILIES.items() for m in METHODS if kind in METHODS[m].kinds]


def _spec(name: str, precision: str = "fp32") -> ModelSpec:
    register()
    return ModelSpec(name, "", "cpu", precision)


_BUILT: dict[str, LoadedModel] = {}


def _model(name: str, precision: str = "fp32") -> LoadedModel:
    """The tiny model with seed-0 weights, built once here (load_model's cache may hold one another test seeded)."""
    if name not in _BUILT:
        model, pre, tok = build(name, seed=0)
        _BUILT[name] = LoadedModel(_spec(name), model, pre, tok)
    fp32 = _BUILT[name]
    return fp32 if precision == "fp32" else LoadedModel(_spec(name, precision), fp32.model, fp32.preprocess,
                                                        fp32.tokenizer)


def _inputs(lm: LoadedModel, b: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    size = tower_of(lm.model.visual)
    s = lm.model.visual.image_size
    s = s[0] if isinstance(s, (tuple, list)) else s
    pix = torch.randn(b, 3, s, s, generator=g)
    with torch.no_grad():
        d = lm.model.encode_image(pix[:1]).shape[1]
    return pix, F.normalize(torch.randn(b, d, generator=g), dim=-1)


def test_every_family_has_its_kind_and_a_default_it_supports():
    for name, kind in FAMILIES.items():
        assert tower_of(_model(name).model.visual).kind == kind
        assert all(m in supported(kind) for m in DEFAULTS[kind])
    pools = {n: tower_of(_model(n).model.visual).pool for n in FAMILIES if FAMILIES[n] != "resnet"}
    assert pools == {"Tiny-ViT": "token", "Tiny-CoCa": "map", "Tiny-EVA": "token", "Tiny-MapViT": "map",
                     "Tiny-ConvNeXt": ""}  # a CoCa is explained through its attentional pooler's first query
    assert set(FAMILIES.values()) == set(DEFAULTS)


@pytest.mark.parametrize("name,method", GRID)
@pytest.mark.parametrize("batch", [1, 3])
def test_batched_fp32_equals_one_image_at_a_time(name, method, batch):
    lm = _model(name)
    pix, txt = _inputs(lm, 5, seed=batch)
    batched = relevancy_maps(lm, method, pix, txt, batch_size=batch)
    single = torch.cat([relevancy_maps(lm, method, pix[i:i + 1], txt[i:i + 1]) for i in range(5)])
    g = tower_of(lm.model.visual).grid
    assert batched.shape == (5, *g) and torch.isfinite(batched).all()
    scale = single.abs().max().clamp(min=1e-12)
    assert (batched - single).abs().max() <= 1e-4 * scale
    assert batched.flatten(1).std(1).max() > 0  # maps, not constants (Grad-CAM's relu may zero a random map)


@pytest.mark.parametrize("name,method", [(n, m) for n, m in GRID if m != "random"])
def test_bf16_batched_agrees_with_fp32_batch1(name, method):
    pix, txt = _inputs(_model(name), 4, seed=7)
    fp32 = torch.cat([relevancy_maps(_model(name), method, pix[i:i + 1], txt[i:i + 1]) for i in range(4)])
    bf16 = relevancy_maps(_model(name, "bf16"), method, pix, txt, batch_size=4)
    varied = [(a, b) for a, b in zip(bf16, fp32) if b.std() > 0]  # Grad-CAM's relu zeroes some random maps
    assert varied
    for a, b in varied:
        assert np.corrcoef(a.flatten().numpy(), b.flatten().numpy())[0, 1] >= 0.9


@pytest.mark.parametrize("name", [n for n, k in FAMILIES.items() if k in ("vit", "timm_vit")])
def test_recording_changes_nothing_and_leaves_nothing(name):
    lm = _model(name)
    pix, _ = _inputs(lm, 3)
    visual = lm.model.visual
    blocks = vit_blocks(visual)
    fused = [getattr(b.attn, "fused_attn", None) for b in blocks]
    with torch.no_grad():
        ref = lm.model.encode_image(pix)
        with recording(visual, 1, outputs=True) as rec:
            got = lm.model.encode_image(pix)
            assert len(rec.attns) == len(blocks) - 1 and len(rec.outputs) == len(blocks) - 1
            n = rec.attns[0].shape[-1]
            assert torch.allclose(rec.attns[0].sum(-1), torch.ones(3, rec.attns[0].shape[1], n), atol=1e-5)
            assert len(rec.pooled) == (tower_of(visual).pool == "map")
    assert torch.allclose(ref, got, atol=1e-5)
    for b, was in zip(blocks, fused):  # every swapped forward, hook and flag is back
        assert "forward" not in vars(b) and not b._forward_hooks
        assert getattr(b.attn, "fused_attn", None) == was
        assert not getattr(getattr(b.attn, "attn_drop", None), "_forward_hooks", None)
    pool = getattr(getattr(visual, "trunk", None), "attn_pool", None)
    assert pool is None or "forward" not in vars(pool)


@pytest.mark.parametrize("name", list(FAMILIES))
def test_memory_stays_flat(name):
    lm = _model(name)
    pix, txt = _inputs(lm, 2)
    methods = supported(FAMILIES[name])
    for m in methods:
        relevancy_maps(lm, m, pix, txt)
    gc.collect()
    before = len([o for o in gc.get_objects() if torch.is_tensor(o)])
    for _ in range(3):
        for m in methods:
            relevancy_maps(lm, m, pix, txt)
    gc.collect()
    assert len([o for o in gc.get_objects() if torch.is_tensor(o)]) <= before + 2


@pytest.mark.parametrize("name", ["Tiny-EVA", "Tiny-MapViT"])
def test_chefer_start_layer_reads_more_blocks_on_timm_towers(name):
    lm = _model(name)
    pix, txt = _inputs(lm, 2, seed=3)
    assert not torch.allclose(relevancy_maps(lm, "chefer", pix, txt, 0), relevancy_maps(lm, "chefer", pix, txt, -1))


def _params(methods=None, start_layers=None):
    return SimpleNamespace(relevancy=RelevancyParams(methods=methods, start_layers=start_layers))


def test_planning_picks_each_towers_default_and_refuses_what_it_cannot_do():
    assert map_variants(_params(), _spec("Tiny-ViT")) == (("chefer", -1),)
    assert map_variants(_params(), _spec("Tiny-MapViT")) == (("legrad", -2),)
    assert map_variants(_params(), _spec("Tiny-RN")) == (("gradcam", None),)
    assert map_variants(_params(["legrad", "chefer"], [0, 1]), _spec("Tiny-EVA")) == (
        ("legrad", -2), ("chefer", 0), ("chefer", 1))
    with pytest.raises(ValueError,
                       match="'gradcam' does not explain Tiny-ViT's vit image tower.*chefer, legrad, grad_eclip, gradient"):
        map_variants(_params(["gradcam"]), _spec("Tiny-ViT"))
    with pytest.raises(ValueError, match="'grad_eclip' does not explain Tiny-ConvNeXt's convnext"):
        map_variants(_params(["grad_eclip"]), _spec("Tiny-ConvNeXt"))
    with pytest.raises(ValueError, match="start layer 5 is out of range for Tiny-EVA, whose vision tower has 2"):
        map_variants(_params(["chefer"], [5]), _spec("Tiny-EVA"))
    assert all_variants(_spec("Tiny-ViT")) == (("chefer", 0), ("chefer", -1), ("legrad", -2), ("grad_eclip", None),
                                               ("gradient", None), ("random", None))
    assert all_variants(_spec("Tiny-ConvNeXt")) == (("gradcam", None), ("gradient", None), ("random", None))


@pytest.mark.parametrize("name,kind,grid", [("RN50", "resnet", 7), ("convnext_tiny", "convnext", 7),
                                            ("EVA02-B-16", "timm_vit", 14), ("ViT-B-16-SigLIP", "timm_vit", 14),
                                            ("coca_ViT-B-32", "vit", 7)])
def test_the_real_architectures_are_known_towers_and_get_their_default_map(name, kind, grid):
    """Built by open_clip with random weights (no tokenizer needed): the families users pick."""
    torch.manual_seed(0)
    model = open_clip.create_model(name).eval()
    tower = tower_of(model.visual)
    assert (tower.kind, tower.grid) == (kind, (grid, grid))
    lm = LoadedModel(ModelSpec(name, "", "cpu", "fp32"), model, None, None)
    pix = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        txt = F.normalize(model.encode_image(pix), dim=-1).roll(1, dims=1)
    maps = relevancy_maps(lm, DEFAULTS[kind][0], pix, txt)
    assert maps.shape == (1, grid, grid) and torch.isfinite(maps).all() and maps.std() > 0
