"""ClipCap: the authors' checkpoint format, generation (greedy / beam, batched, KV cache), the shipped toy model."""
import numpy as np
import pytest
import torch

from mapcap.tasks.captioners.base import CaptionerConfig, make_captioner
from mapcap.tasks.captioners.clipcap_model import ClipCapConfig, ClipCapModel, infer_config, load_clipcap, save_clipcap
from mapcap.toy import TOY_CLIPCAP
from mapcap.toy.train_captioner import build_tokenizer, caption_accuracy, sample_crops

TINY = dict(n_embd=32, n_layer=2, n_head=2, n_positions=24)
# the parameter names of Mokady et al.'s train.py (ClipCaptionModel), read from their code
AUTHORS_MLP_KEYS = {"clip_project.model.0.weight", "clip_project.model.0.bias", "clip_project.model.2.weight",
                    "clip_project.model.2.bias"}
AUTHORS_TRANSFORMER_LAYER_KEYS = {f"clip_project.transformer.layers.0.{k}" for k in (
    "norm1.weight", "norm1.bias", "attn.to_queries.weight", "attn.to_keys_values.weight", "attn.project.weight",
    "attn.project.bias", "norm2.weight", "norm2.bias", "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight",
    "mlp.fc2.bias")} | {"clip_project.linear.weight", "clip_project.linear.bias", "clip_project.prefix_const"}


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tok")
    build_tokenizer().save_pretrained(str(path))
    return path


def _tiny(mapping: str, vocab: int) -> ClipCapModel:
    torch.manual_seed(0)
    mapper = dict(clip_length=2, mapper_layers=1, normalize_prefix=True) if mapping == "transformer" else {}
    cfg = ClipCapConfig(prefix_length=3, prefix_size=16, mapping=mapping, vocab_size=vocab, eos_token_id=0,
                        **mapper, **TINY)
    return ClipCapModel(cfg).eval()


@pytest.mark.parametrize("mapping", ["mlp", "transformer"])
def test_authors_checkpoint_format_loads_with_old_gpt2_buffers(tmp_path, tokenizer_dir, mapping):
    tok = build_tokenizer()
    model = _tiny(mapping, len(tok))
    state = model.state_dict()
    assert (AUTHORS_MLP_KEYS if mapping == "mlp" else AUTHORS_TRANSFORMER_LAYER_KEYS) <= set(state)
    for i in range(TINY["n_layer"]):  # what transformers < 4.3x saved with every GPT-2
        state[f"gpt.transformer.h.{i}.attn.bias"] = torch.tril(torch.ones(1, 1, 24, 24))
        state[f"gpt.transformer.h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    torch.save(state, tmp_path / "coco_weights.pt")
    loaded, _ = load_clipcap(tmp_path / "coco_weights.pt", tokenizer_dir, n_head=2, eos_token_id=0)
    assert loaded.cfg == model.cfg
    emb, tokens = torch.randn(2, 16), torch.randint(len(tok), (2, 5))
    torch.testing.assert_close(loaded(emb, tokens), model(emb, tokens))


def test_checkpoint_errors_name_the_fix(tmp_path, tokenizer_dir):
    model = _tiny("mlp", 20)
    torch.save(model.state_dict(), tmp_path / "c.pt")
    with pytest.raises(ValueError, match="pass tokenizer=DIR"):
        load_clipcap(tmp_path / "c.pt")
    torch.save({"foo": torch.zeros(1)}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="not a ClipCap checkpoint"):
        load_clipcap(tmp_path / "bad.pt", tokenizer_dir)
    state = dict(model.state_dict(), **{"gpt.transformer.extra.weight": torch.zeros(1)})
    torch.save(state, tmp_path / "extra.pt")
    with pytest.raises(ValueError, match="unexpected"):
        load_clipcap(tmp_path / "extra.pt", tokenizer_dir, n_head=2)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_clipcap(tmp_path / "missing.pt", tokenizer_dir)


def test_infer_config_reads_gpt2_small_shapes():
    state = {"gpt.transformer.wte.weight": torch.empty(50257, 768), "gpt.transformer.wpe.weight": torch.empty(1024, 768),
             **{f"gpt.transformer.h.{i}.ln_1.weight": torch.empty(768) for i in range(12)},
             "clip_project.model.0.weight": torch.empty(3840, 512), "clip_project.model.2.weight": torch.empty(7680, 3840)}
    cfg = infer_config(state)
    assert (cfg.prefix_length, cfg.prefix_size, cfg.n_layer, cfg.n_head, cfg.mapping) == (10, 512, 12, 12, "mlp")


@pytest.mark.parametrize("mapping", ["mlp", "transformer"])
def test_generation_batched_equals_one_at_a_time_and_cache_changes_nothing(mapping):
    model = _tiny(mapping, 21)
    with torch.no_grad():  # larger weights: a random model then writes varied tokens instead of one repeated
        model.gpt.transformer.wte.weight.mul_(30)
    emb = torch.randn(4, 16)
    batched = model.generate(emb, [0], 0, max_tokens=6)
    single = [model.generate(emb[i:i + 1], [0], 0, max_tokens=6)[0] for i in range(4)]
    for i, row in enumerate(single):
        torch.testing.assert_close(batched[i, :len(row)], row)
    torch.testing.assert_close(model.generate(emb, [0], 0, max_tokens=6, use_cache=False), batched)
    beams = model.generate(emb, [0], 0, max_tokens=6, beams=3)
    assert beams.shape[0] == 4 and beams.shape[1] <= 6


@pytest.fixture(scope="module")
def heldout_crops():
    return sample_crops(120, seed=4242, jitter=False)  # scenes never seen in training (seed 0)


@pytest.mark.parametrize("beams", [1, 3])
def test_toy_clipcap_names_shape_and_colour_of_heldout_crops(toy_model, heldout_crops, beams):
    cap = make_captioner(CaptionerConfig("clipcap", beams=beams), toy_model)
    texts = cap.caption([c for c, *_ in heldout_crops])
    shape_acc, colour_acc = caption_accuracy(texts, [(s, c) for _, _, s, c in heldout_crops])
    assert shape_acc >= 0.9 and colour_acc >= 0.8, (shape_acc, colour_acc, texts[:5])


def test_shipped_toy_clipcap_is_small_and_round_trips(tmp_path, toy_model):
    size = sum(f.stat().st_size for f in TOY_CLIPCAP.iterdir())
    assert size <= 10e6, size
    model, tok = load_clipcap(TOY_CLIPCAP)
    assert model.cfg.clip_model == "MapCap-Toy-ViT" and tok.decode(tok("a red star")["input_ids"]) == "a red star"
    save_clipcap(model, tok, tmp_path / "copy", half=False)
    again, _ = load_clipcap(tmp_path / "copy")
    emb = torch.randn(2, model.cfg.prefix_size)
    torch.testing.assert_close(again(emb, torch.ones(2, 3, dtype=torch.long)),
                               model(emb, torch.ones(2, 3, dtype=torch.long)))


def test_clipcap_refuses_a_clip_of_the_wrong_width(tmp_path, toy_model):
    model = _tiny("mlp", len(build_tokenizer()))  # maps 16-d embeddings; the toy CLIP makes 64-d ones
    save_clipcap(model, build_tokenizer(), tmp_path / "cc")
    with pytest.raises(ValueError, match="16-d CLIP embeddings"):
        make_captioner(CaptionerConfig("clipcap", path=str(tmp_path / "cc")), toy_model)
    with pytest.raises(ValueError, match="needs captioner_path"):
        make_captioner(CaptionerConfig("hf"), toy_model)


def test_caption_accuracy_reads_the_first_object():
    assert caption_accuracy(["a red circle and a blue star", "a blue star"], [("circle", "red"), ("circle", "red")]) \
        == (0.5, 0.5)
    assert np.isclose(caption_accuracy(["an empty background"], [("circle", "red")])[0], 0.0)
