import open_clip
import pytest
import torch

from mapcap.tasks.models import load_model, resolve_spec
from mapcap.toy import TOY_CHECKPOINT, TOY_MODEL_NAME


def test_unknown_names_and_tags_list_what_exists():
    with pytest.raises(ValueError, match=r"unknown open_clip model 'ViT-B-99'.*ViT-B-16"):
        resolve_spec("ViT-B-99", "")
    with pytest.raises(ValueError, match=r"'no-such-tag' is neither a local checkpoint file nor a tag.*openai"):
        resolve_spec("ViT-B-32", "no-such-tag")
    with pytest.raises(ValueError, match="no CUDA GPU"):
        resolve_spec("toy", "toy", device="cuda") if not torch.cuda.is_available() else (_ for _ in ()).throw(
            ValueError("no CUDA GPU (skipped on GPU machines)"))


def test_defaults_resolve_to_the_shipped_toy_checkpoint_on_cpu_fp32():
    spec = resolve_spec("toy", "toy", "auto", "auto")
    assert spec.name == TOY_MODEL_NAME and spec.pretrained == str(TOY_CHECKPOINT)
    if not torch.cuda.is_available():
        assert (spec.device, spec.precision) == ("cpu", "fp32")
    assert TOY_CHECKPOINT.stat().st_size <= 10 * 2**20  # ships in the repo: ≤ 10 MB


def test_toy_loads_through_open_clips_own_local_checkpoint_path(toy_model):
    ref, _, _ = open_clip.create_model_and_transforms(TOY_MODEL_NAME, pretrained=str(TOY_CHECKPOINT))
    for (k, a), (_, b) in zip(toy_model.model.state_dict().items(), ref.state_dict().items()):
        assert torch.equal(a, b), k
    assert load_model(toy_model.spec) is toy_model  # one load per process


def test_random_weights_for_any_vit_config():
    spec = resolve_spec("ViT-B-32", "", "cpu", "fp32")
    assert spec.pretrained == ""


def test_in_batches_halves_the_batch_on_cuda_oom_and_loses_nothing():
    import torch

    from mapcap.tasks.models import in_batches
    calls = []

    def fn(i, j):
        calls.append(j - i)
        if j - i > 3:
            raise torch.cuda.OutOfMemoryError("simulated")
        return torch.arange(i, j)

    assert in_batches(10, 16, fn).tolist() == list(range(10))
    assert calls[:3] == [10, 8, 4] and max(calls[3:]) <= 2  # 16 → 8 → 4 → 2, then on at 2
    with pytest.raises(torch.cuda.OutOfMemoryError):
        in_batches(3, 1, lambda i, j: (_ for _ in ()).throw(torch.cuda.OutOfMemoryError("always")))


def test_a_compiled_image_tower_gives_the_eager_embeddings_with_one_graph(monkeypatch, request, toy_model):
    """ModelSpec.compile: encode_pixels through torch.compile equals the eager tower, for batch sizes that differ
    (one graph: the batch dimension is dynamic; a batch of one runs as a pair). Traced with aot_eager here:
    Dynamo's capture and guards as with inductor, without inductor's C++ build (minutes on 2 cores)."""
    import dataclasses

    import torch._dynamo

    from mapcap.tasks import models
    from mapcap.tasks.cache import forget
    from mapcap.tasks.models import encode_pixels
    monkeypatch.setattr(models, "COMPILE_BACKEND", "aot_eager")
    spec = dataclasses.replace(toy_model.spec, compile=True)
    lm = load_model(spec)  # a model of its own, dropped after the test
    request.addfinalizer(lambda: forget(lambda k: k == ("clip", spec)))
    assert lm.tower is not None and lm.model is not toy_model.model
    x = torch.randn(7, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    first = encode_pixels(lm, x, False)
    monkeypatch.setattr(torch._dynamo.config, "error_on_recompile", True)  # a second graph would raise
    for n in (7, 3, 5, 1):
        assert torch.allclose(encode_pixels(lm, x[:n], False), encode_pixels(toy_model, x[:n], False), atol=1e-5), n
    assert torch.allclose(first, encode_pixels(toy_model, x, False), atol=1e-5)


def test_compile_stays_out_of_stored_configs_while_off():
    """A field added to ModelSpec leaves the configs (and hashes) of results made before it unchanged."""
    from mapcap.tasks.models import ModelSpec
    from mapcap.tasks.provenance import config_json, from_jsonable, to_jsonable
    off, on = ModelSpec("m", "", "cpu", "fp32"), ModelSpec("m", "", "cpu", "fp32", compile=True)
    assert config_json(off) == '{"device": "cpu", "name": "m", "precision": "fp32", "pretrained": ""}'
    assert to_jsonable(on)["compile"] is True
    assert from_jsonable(ModelSpec, to_jsonable(off)) == off and from_jsonable(ModelSpec, to_jsonable(on)) == on


@pytest.mark.parametrize("name,source", [("ViT-B-16-SigLIP", "timm/ViT-B-16-SigLIP"), ("ViT-B-16-SigLIP2", "timm/ViT-B-16-SigLIP2")])
def test_a_tokenizer_that_cannot_be_had_offline_stops_at_once_with_the_fix(monkeypatch, tmp_path, name, source):
    """SigLIP's tokenizers come from the Hugging Face hub (or the web) on first use; offline, with an empty cache,
    the model stops before it is built, in one line that names the model and what to do (the hub client's own
    retries took ~50 s)."""
    import socket
    import time

    from mapcap.tasks.models import create_clip

    def offline(*_a, **_k):
        raise OSError("Network is unreachable")

    monkeypatch.setenv("HF_HOME", str(tmp_path))  # nothing cached
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(socket, "create_connection", offline)
    t = time.perf_counter()
    with pytest.raises(ValueError, match=f"the tokenizer of '{name}' .*{source}.*not available on this machine.*"
                                         f"copy its cache \\(HF_HOME\\) here") as e:
        create_clip(name)
    assert time.perf_counter() - t < 5 and "\n" not in str(e.value)
