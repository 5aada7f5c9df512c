"""Relevancy maps: exact attention re-computation, batched = batch-1, precision, memory, errors."""
import gc

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mapcap.tasks.relevancy.attention import UnsupportedArchitecture, attention_blocks, recording_attention
from mapcap.tasks.models import LoadedModel, create_clip, resolve_spec
from mapcap.tasks.relevancy.chefer import text_token_relevancy
from mapcap.tasks.relevancy.methods import METHODS, map_stats, relevancy_maps


def _random_model(name: str) -> LoadedModel:
    torch.manual_seed(0)
    model, pre, tok = create_clip(name)
    return LoadedModel(resolve_spec(name, "", "cpu", "fp32"), model.eval(), pre, tok)


@pytest.fixture(scope="module")
def tiny_b32():
    """A real ViT-B-32 config shrunk by open_clip's own override path is too slow on CPU; the toy config is
    the tiny grid member, and ViT-B-32 (random weights) checks a standard CLIP layout once."""
    return _random_model("ViT-B-32")


def _inputs(lm: LoadedModel, b: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    size = lm.model.visual.image_size
    size = size[0] if isinstance(size, tuple) else size
    pix = torch.randn(b, 3, size, size, generator=g)
    txt = F.normalize(torch.randn(b, lm.model.text_projection.shape[1], generator=g), dim=-1)
    return pix, txt


def test_recorded_attention_reproduces_the_model_exactly(toy_model):
    pix, _ = _inputs(toy_model, 3)
    with torch.no_grad():
        ref = toy_model.model.encode_image(pix)
        blocks = attention_blocks(toy_model.model.visual, "image")
        with recording_attention(blocks) as attns:
            got = toy_model.model.encode_image(pix)
            assert len(attns) == len(blocks) and attns[0].shape == (3, 4, 65, 65)
            assert torch.allclose(attns[0].sum(-1), torch.ones(3, 4, 65), atol=1e-5)
        assert all(isinstance(b.attn, torch.nn.MultiheadAttention) for b in blocks)  # restored
    assert torch.allclose(ref, got, atol=1e-5)


def test_blocks_another_shard_is_recording_are_still_attention_blocks(toy_model):
    """Two shards in flight share the model: while one records (its blocks' attn swapped, under the model's lock),
    the other's architecture check must not take the model for an unsupported one."""
    blocks = attention_blocks(toy_model.model.visual, "image")
    with recording_attention(blocks, 0):
        assert attention_blocks(toy_model.model.visual, "image") == blocks


@pytest.mark.parametrize("method", ["chefer", "gradient"])
@pytest.mark.parametrize("batch", [1, 3, 8])
def test_batched_equals_plain_batch1_fp32(toy_model, method, batch):
    pix, txt = _inputs(toy_model, 8, seed=batch)
    batched = relevancy_maps(toy_model, method, pix, txt, batch_size=batch)
    single = torch.cat([METHODS[method].fn(toy_model, pix[i:i + 1], txt[i:i + 1], 0) for i in range(8)])
    assert batched.shape == (8, 8, 8)
    assert (batched - single).abs().max() <= 1e-4


def _chefer_recording_every_block(lm: LoadedModel, pix, txt, start: int) -> torch.Tensor:
    """The plain path: every block records attention and the graph runs through all of them."""
    blocks = attention_blocks(lm.model.visual, "image")
    with recording_attention(blocks) as attns, torch.enable_grad():
        img = F.normalize(lm.model.encode_image(pix), dim=-1)
        target = lm.model.logit_scale.exp() * (img * txt).sum(-1)
        attns = attns[start % len(blocks):]
        grads = torch.autograd.grad(target.sum(), attns)
    B, _, N, _ = attns[0].shape
    R = torch.eye(N).expand(B, N, N)
    for A, G in zip(attns, grads):
        R = R + torch.bmm((G * A.detach()).clamp(min=0).mean(dim=1), R)
    return R[:, 0, 1:].reshape(B, 8, 8).detach()


@pytest.mark.parametrize("start", [-1, 2, 0])
def test_blocks_before_start_run_without_recording_and_give_the_same_map(toy_model, start):
    pix, txt = _inputs(toy_model, 4, seed=5)
    blocks = attention_blocks(toy_model.model.visual, "image")
    got = relevancy_maps(toy_model, "chefer", pix, txt, start_layer=start)
    assert (got - _chefer_recording_every_block(toy_model, pix, txt, start)).abs().max() <= 1e-4
    with recording_attention(blocks, start % len(blocks)) as attns, torch.enable_grad():
        toy_model.model.encode_image(pix)
        assert len(attns) == len(blocks) - start % len(blocks)  # only the blocks the map reads
    assert all("forward" not in vars(b) and isinstance(b.attn, torch.nn.MultiheadAttention) for b in blocks)


@pytest.mark.parametrize("method", ["chefer", "gradient"])
def test_bf16_batched_agrees_with_fp32_batch1(toy_model, method):
    pix, txt = _inputs(toy_model, 6, seed=11)
    single = torch.cat([METHODS[method].fn(toy_model, pix[i:i + 1], txt[i:i + 1], 0) for i in range(6)])
    bf16 = LoadedModel(toy_model.spec.__class__(toy_model.spec.name, toy_model.spec.pretrained, "cpu", "bf16"),
                       toy_model.model, toy_model.preprocess, toy_model.tokenizer)
    mixed = relevancy_maps(bf16, method, pix, txt, batch_size=6)
    for a, b in zip(mixed, single):
        r = np.corrcoef(a.flatten().numpy(), b.flatten().numpy())[0, 1]
        assert r >= 0.99, r


def test_start_layer_changes_the_map_and_last_block_is_default_for_clip(tiny_b32):
    pix, txt = _inputs(tiny_b32, 2)
    last = relevancy_maps(tiny_b32, "chefer", pix, txt)  # ViT-B-32 default: -1
    explicit = relevancy_maps(tiny_b32, "chefer", pix, txt, start_layer=11)
    every = relevancy_maps(tiny_b32, "chefer", pix, txt, start_layer=0)
    assert last.shape == (2, 7, 7) and torch.allclose(last, explicit)
    assert not torch.allclose(last, every)


def test_hooks_leave_no_memory_behind(toy_model):
    pix, txt = _inputs(toy_model, 4)
    relevancy_maps(toy_model, "chefer", pix, txt)
    gc.collect()
    before = len([o for o in gc.get_objects() if torch.is_tensor(o)])
    for _ in range(5):
        relevancy_maps(toy_model, "chefer", pix, txt)
    gc.collect()
    after = len([o for o in gc.get_objects() if torch.is_tensor(o)])
    assert after <= before + 2


def test_a_method_the_tower_cannot_do_gets_a_clear_error():
    lm = _random_model("RN50")
    pix, txt = _inputs(lm, 1)
    with pytest.raises(ValueError, match="'chefer' does not explain RN50's resnet image tower.*gradcam, gradient"):
        relevancy_maps(lm, "chefer", pix, txt)
    assert relevancy_maps(lm, "gradient", pix, txt).shape == (1, 7, 7)  # the baseline still works
    assert relevancy_maps(lm, "gradcam", pix, txt).shape == (1, 7, 7)
    with pytest.raises(ValueError, match="unknown relevancy method 'nope'"):
        relevancy_maps(lm, "nope", pix, txt)
    with pytest.raises(UnsupportedArchitecture, match="not ResNet"):  # the text-token path keeps its own check
        attention_blocks(lm.model.visual, "image")


def test_map_stats():
    m = torch.zeros(2, 4, 4)
    m[0, 1, 2] = 1.0
    m[1] += 1.0
    s = map_stats(m)
    assert s["peak"][0] == 6 and s["entropy"][0] < 1e-6
    assert abs(s["entropy"][1] - np.log(16)) < 1e-5 and abs(s["top10_mass"][1] - 2 / 16) < 1e-6


def test_text_token_relevancy_points_at_the_class_word(toy_model):
    from mapcap.toy.dataset import make_scene
    from PIL import Image
    scene = make_scene(np.random.default_rng(3), "single", "star")
    pix = toy_model.preprocess(Image.fromarray(scene.image)).unsqueeze(0)
    with torch.no_grad():
        img = toy_model.model.encode_image(pix)
    tokens = toy_model.tokenizer([scene.caption])  # e.g. "a red star in the top left"
    rel = text_token_relevancy(toy_model, img, tokens)
    assert rel.shape == tokens.shape
    words = tokens[0].tolist()
    star = toy_model.tokenizer(["star"])[0, 1].item()
    content = [i for i, t in enumerate(words) if t not in (0, words[0]) and i < int(tokens[0].argmax())]
    assert max(content, key=lambda i: rel[0, i]) == words.index(star)
