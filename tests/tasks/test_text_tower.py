"""The text tower over the positions a batch uses gives the embeddings of the whole context."""
import pytest
import torch
import torch.nn.functional as F

from mapcap.tasks.models import create_clip
from mapcap.tasks.text_tower import text_features, truncatable
from mapcap.tasks.zeroshot import text_classifier

PROMPTS = ["a photo of a circle.", "a", "an origami drawing of a small red star on a wooden table, seen from above",
           "This is not a photo of a cross."]


def _positions(model, tokens) -> tuple[torch.Tensor, list[int]]:
    seen = []
    hook = model.transformer.register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[1]))
    try:
        with torch.no_grad():
            return text_features(model, tokens), seen
    finally:
        hook.remove()


@pytest.mark.parametrize("name", ["toy", "ViT-B-16"])
def test_the_used_positions_give_the_whole_contexts_embeddings(name, toy_model):
    if name == "toy":
        model, tokenizer = toy_model.model, toy_model.tokenizer  # a context of 32 tokens
    else:
        model, _, tokenizer = create_clip("ViT-B-16")  # random weights, 77 tokens
        model.eval()
    assert truncatable(model)
    tokens = tokenizer(PROMPTS)  # (4, L)
    out, seen = _positions(model, tokens)
    with torch.no_grad():
        ref = model.encode_text(tokens)  # (4, D)
    assert seen == [int(tokens.argmax(-1).max()) + 1] and seen[0] < tokens.shape[1]
    assert torch.allclose(out, ref, atol=1e-5, rtol=1e-4), (out - ref).abs().max()
    full = tokenizer(["word " * 200])  # fills the context: the whole tower runs
    out, seen = _positions(model, full)
    assert seen == [full.shape[1]] and torch.equal(out, model.encode_text(full).detach())


def test_the_classifier_batched_across_classes_equals_one_class_at_a_time(toy_model):
    classes, templates = ("circle", "star", "red cross"), ("a photo of a {}.", "{}", "a sketch of the {} on paper")
    got = text_classifier(toy_model, classes, templates)  # (T + 1, C, D)
    with torch.no_grad():
        per = torch.stack([F.normalize(toy_model.model.encode_text(toy_model.tokenizer([t.format(c) for t in templates])),
                                       dim=-1) for c in classes], dim=1)  # (T, C, D)
    assert got.shape == (4, 3, per.shape[-1])
    assert torch.allclose(got[:3], per, atol=1e-5)
    assert torch.allclose(got[3], F.normalize(per.mean(0), dim=-1), atol=1e-5)
