"""The `hf` captioner on a tiny local VisionEncoderDecoder (ViT + GPT-2) directory, loaded via the Auto classes."""
import numpy as np
import pytest
import torch
from PIL import Image
from transformers import (GPT2Config, VisionEncoderDecoderConfig, VisionEncoderDecoderModel, ViTConfig,
                          ViTImageProcessor)

from mapcap.tasks.captioners.base import CaptionerConfig, make_captioner
from mapcap.toy.train_captioner import WORDS, build_tokenizer


@pytest.fixture(scope="module")
def ved_dir(tmp_path_factory):
    """A ViT-GPT2 captioner directory as `save_pretrained` writes it (random weights, toy vocabulary)."""
    path = tmp_path_factory.mktemp("ved")
    tok = build_tokenizer()
    torch.manual_seed(0)
    enc = ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                    intermediate_size=64)
    dec = GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=len(tok), n_positions=32, add_cross_attention=True,
                     is_decoder=True, bos_token_id=2, eos_token_id=0)
    cfg = VisionEncoderDecoderConfig.from_encoder_decoder_configs(enc, dec)
    cfg.decoder_start_token_id, cfg.pad_token_id, cfg.eos_token_id = 2, 0, 0
    model = VisionEncoderDecoderModel(cfg)
    model.generation_config.decoder_start_token_id = model.generation_config.bos_token_id = 2
    with torch.no_grad():  # larger weights: a random decoder then writes varied words
        for p in model.decoder.parameters():
            p.normal_(0, 0.3)
    model.save_pretrained(str(path))
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(str(path))
    tok.save_pretrained(str(path))
    return path


def _images(n):
    return [Image.fromarray(np.random.default_rng(i).integers(0, 255, (40, 40, 3), dtype=np.uint8)) for i in range(n)]


def test_hf_captioner_batches_like_one_at_a_time(ved_dir, toy_model):
    cap = make_captioner(CaptionerConfig("hf", path=str(ved_dir), max_tokens=6, batch_size=2), toy_model)
    images = _images(5)
    texts = cap.caption(images)
    assert texts == [cap.caption([im])[0] for im in images]
    assert any(texts) and all(set(t.split()) <= set(WORDS) for t in texts)
    assert len(set(texts)) > 1  # the captions depend on the image
    beams = make_captioner(CaptionerConfig("hf", path=str(ved_dir), max_tokens=6, beams=3), toy_model)
    assert len(beams.caption(images)) == 5


def test_hf_captioner_errors_name_the_path(tmp_path, toy_model):
    with pytest.raises(FileNotFoundError, match="not a directory"):
        make_captioner(CaptionerConfig("hf", path=str(tmp_path / "nope")), toy_model)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no image-to-text model"):
        make_captioner(CaptionerConfig("hf", path=str(tmp_path / "empty")), toy_model)
