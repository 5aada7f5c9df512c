"""The coca captioner: a CoCa model's own text decoder, batched, greedy and beam search."""
import pytest
import torch
from PIL import Image

from mapcap.tasks.captioners.base import CaptionerConfig, check_captioner, make_captioner
from mapcap.tasks.captioners.coca import beam_search, greedy
from mapcap.tasks.models import LoadedModel, ModelSpec
from tests.towers.tiny import build


@pytest.fixture(scope="module")
def coca():
    model, pre, tok = build("Tiny-CoCa", seed=3)
    return LoadedModel(ModelSpec("Tiny-CoCa", "", "cpu", "fp32"), model, pre, tok)


def _embs(lm, n, seed=0):
    pix = torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return pix, lm.model._encode_image(pix)[1]


@torch.no_grad()
def _forward_loop(lm, pix, steps):
    """One image at a time through CoCa.forward's logits, the path open_clip's generate reads."""
    sot, eot = lm.tokenizer.sot_token_id, lm.tokenizer.eot_token_id
    rows = []
    for p in pix:
        seq = torch.tensor([[sot]])
        for _ in range(steps):
            nxt = lm.model(p[None], seq, output_labels=False)["logits"][:, -1].argmax(-1)
            seq = torch.cat([seq, nxt[:, None]], 1)
            if nxt.item() == eot:
                break
        rows.append(seq[0, 1:].tolist())
    return rows


def test_greedy_batched_equals_coca_forward_one_image_at_a_time(coca):
    pix, embs = _embs(coca, 4)
    with torch.no_grad():
        got = greedy(coca.model, embs, coca.tokenizer.sot_token_id, coca.tokenizer.eot_token_id, 6)
    eot = coca.tokenizer.eot_token_id
    for row, ref in zip(got.tolist(), _forward_loop(coca, pix, 6)):
        assert row[:len(ref)] == ref and all(t == eot for t in row[len(ref):])


def test_one_beam_is_greedy_and_beams_are_batch_independent(coca):
    _, embs = _embs(coca, 3, seed=1)
    sot, eot = coca.tokenizer.sot_token_id, coca.tokenizer.eot_token_id
    with torch.no_grad():
        assert torch.equal(beam_search(coca.model, embs, sot, eot, 5, 1), greedy(coca.model, embs, sot, eot, 5))
        three = beam_search(coca.model, embs, sot, eot, 5, 3)
        alone = [beam_search(coca.model, embs[i:i + 1], sot, eot, 5, 3)[0] for i in range(3)]
    for a, b in zip(three, alone):
        assert a[:len(b)].tolist() == b.tolist()


def test_captioner_captions_crops_and_refuses_a_model_that_is_no_coca(coca):
    crops = [Image.new("RGB", (40, 30), c) for c in ("red", "blue", "green")]
    for beams in (1, 2):
        cap = make_captioner(CaptionerConfig("coca", beams=beams, max_tokens=5, batch_size=2), coca)
        texts = cap.caption(crops)
        assert len(texts) == 3 and all(isinstance(t, str) for t in texts) and texts == cap.caption(crops)
    check_captioner(CaptionerConfig("coca"), "coca_ViT-B-32")
    with pytest.raises(ValueError, match="'ViT-B-32' is not a CoCa: pass --model coca_ViT-B-32"):
        check_captioner(CaptionerConfig("coca"), "ViT-B-32")
