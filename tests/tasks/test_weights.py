"""Pretrained weights are made sure of at planning: found in the cache without the network, or the run stops
before any shard with the tag and the fix (offline, each shard used to spend ~46 s in the hub's retries)."""
import huggingface_hub.constants as hf_constants
import open_clip
import pytest
from PIL import Image

from mapcap.tasks.pipeline.plan import plan_run
from mapcap.tasks.weights import cached_weights, ensure_weights, hub_files

REPO = "timm/vit_base_patch16_clip_224.openai"  # ViT-B-16 / openai on the hub


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No network and an empty hub cache of our own: every hub call answers from tmp_path/hub at once."""
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    return tmp_path / "hub"


def _cache(hub_dir, repo: str, name: str) -> str:
    """A file laid out as the hub client caches it (blob under a snapshot named by refs/main)."""
    folder = hub_dir / f"models--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True, exist_ok=True)
    (folder / "refs" / "main").write_text("abc123")
    path = folder / "snapshots" / "abc123" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"weights")
    return str(path)


def test_hub_files_follow_open_clips_order():
    import open_clip
    assert hub_files(open_clip.get_pretrained_cfg("ViT-B-16", "openai")) == (
        REPO, ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"])
    assert hub_files({"hf_hub": "org/model/weights.pth"}) == ("org/model", ["weights.safetensors", "weights.pth"])
    assert hub_files({"url": "https://example.org/x.pt"}) is None


def test_cached_weights_are_found_without_the_network(offline, tmp_path):
    assert cached_weights({"hf_hub": REPO + "/"}) is None
    bin_path = _cache(offline, REPO, "open_clip_pytorch_model.bin")
    openai = open_clip.get_pretrained_cfg("ViT-B-16", "openai")
    assert ensure_weights("ViT-B-16", "openai", openai) == bin_path
    safe = _cache(offline, REPO, "open_clip_model.safetensors")  # open_clip prefers it: so does the check
    assert ensure_weights("ViT-B-16", "openai", openai) == safe
    url_cache = tmp_path / "clip"
    url_cache.mkdir()
    cfg = {"url": "https://openaipublic.azureedge.net/clip/models/abc/ViT-B-16.pt"}
    assert cached_weights(cfg, str(url_cache)) is None
    (url_cache / "ViT-B-16.pt").write_bytes(b"w")
    assert cached_weights(cfg, str(url_cache)) == str(url_cache / "ViT-B-16.pt")


def test_unreachable_weights_stop_planning_before_any_shard(offline, tmp_path):
    for cls in ("cat", "dog"):
        (tmp_path / "data" / cls).mkdir(parents=True)
        Image.new("RGB", (32, 32), (200, 10, 10)).save(tmp_path / "data" / cls / "a.png")
    # unreachable hub: found by the 3 s probe (no client retries); reachable but failing: the client's error
    with pytest.raises(ValueError, match=r"'ViT-B-16' with pretrained='openai' are not in the local cache,? and "
                                         r"(they cannot|could not) be downloaded from the hub repo timm/.*"
                                         r"--pretrained /path"):
        plan_run(str(tmp_path / "data"), None, "ViT-B-16", "openai", "simple", None, "cpu", "fp32", None)
    import shutil

    from open_clip import pretrained as oc

    from mapcap.toy import TOY_CHECKPOINT, TOY_MODEL_NAME
    plan_run(str(tmp_path / "data"), None, "toy", "toy", "simple", None, "cpu", "fp32", None)  # registers the toy
    cfg = {"hf_hub": "mapcap/toy-clip/", "url": "", "mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25),
           "interpolation": "bicubic", "resize_mode": "shortest"}
    oc._PRETRAINED[TOY_MODEL_NAME] = {"faketag": cfg}
    try:
        with pytest.raises(ValueError, match="not in the local cache"):
            plan_run(str(tmp_path / "data"), None, TOY_MODEL_NAME, "faketag", "simple", None, "cpu", "fp32", None)
        shutil.copy(TOY_CHECKPOINT, _cache(offline, "mapcap/toy-clip", "open_clip_pytorch_model.bin"))
        plan = plan_run(str(tmp_path / "data"), None, TOY_MODEL_NAME, "faketag", "simple", None, "cpu", "fp32", None)
        assert plan.model.pretrained == "faketag" and sum(len(s) for s in plan.shards) == 2  # once cached, it runs
    finally:
        del oc._PRETRAINED[TOY_MODEL_NAME]


def test_a_checkpoint_that_does_not_load_stops_planning(tmp_path):
    """A corrupt file or one of another architecture fails at planning with the fix, not in every shard."""
    from mapcap.toy import TOY_CHECKPOINT
    for cls in ("cat", "dog"):
        (tmp_path / "data" / cls).mkdir(parents=True)
        Image.new("RGB", (32, 32)).save(tmp_path / "data" / cls / "a.png")
    bad = tmp_path / "cut.pt"
    bad.write_bytes(TOY_CHECKPOINT.read_bytes()[:5000])
    with pytest.raises(ValueError, match=r"could not build 'MapCap-Toy-ViT' with pretrained=.*cut.pt.*checkpoint is "
                                         r"whole"):
        plan_run(str(tmp_path / "data"), None, "toy", str(bad), "simple", None, "cpu", "fp32", None)
    with pytest.raises(ValueError, match=r"could not build 'ViT-B-32' with pretrained=.*toy_clip.pt"):
        plan_run(str(tmp_path / "data"), None, "ViT-B-32", str(TOY_CHECKPOINT), "simple", None, "cpu", "fp32", None)


def test_a_cached_tag_builds_from_its_file_as_the_tag_was_trained(offline, monkeypatch):
    """A tag with cached weights is built from the file without asking the hub, with the tag's preprocessing and
    its QuickGELU (open_clip 3.3 gives ViT-B-16 'openai' weights the standard GELU and only warns): the same
    model and preprocess as open_clip's own build of the tag with QuickGELU forced."""
    import shutil

    import open_clip
    import torch
    from open_clip import pretrained as oc

    from mapcap.tasks.models import create_clip
    from mapcap.toy import TOY_CHECKPOINT, TOY_MODEL_NAME
    cfg = {"hf_hub": "mapcap/toy-clip/", "url": "", "mean": (0.5, 0.4, 0.3), "std": (0.2, 0.25, 0.3),
           "interpolation": "bilinear", "resize_mode": "shortest", "quick_gelu": True}
    create_clip(TOY_MODEL_NAME, str(TOY_CHECKPOINT))  # registers the toy config (plugins)
    monkeypatch.setitem(oc._PRETRAINED, TOY_MODEL_NAME, {"faketag": cfg})
    shutil.copy(TOY_CHECKPOINT, _cache(offline, "mapcap/toy-clip", "open_clip_pytorch_model.bin"))
    ref, _, ref_pre = open_clip.create_model_and_transforms(TOY_MODEL_NAME, pretrained="faketag",
                                                            force_quick_gelu=True)  # from the cache, offline
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)

    def ask_hub(*args, **kwargs):
        raise AssertionError("asked the hub")
    monkeypatch.setattr(oc, "hf_hub_download", ask_hub)
    model, preprocess, _ = create_clip(TOY_MODEL_NAME, "faketag")
    assert str(preprocess) == str(ref_pre) and "bilinear" in str(preprocess) and "0.4" in str(preprocess)
    assert type(model.visual.transformer.resblocks[0].mlp.gelu).__name__ == "QuickGELU"
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model.eval().encode_image(x), ref.eval().encode_image(x))
    monkeypatch.setitem(oc._PRETRAINED, TOY_MODEL_NAME, {"faketag": {**cfg, "quick_gelu": False}})
    plain, _, _ = create_clip(TOY_MODEL_NAME, "faketag")
    assert type(plain.visual.transformer.resblocks[0].mlp.gelu).__name__ == "GELU"


def test_hf_hub_offline_is_honoured_without_a_network_probe(monkeypatch):
    """HF_HUB_OFFLINE says no download can work: the error says so at once, without the hub client's retries."""
    import socket
    import time

    from mapcap.tasks.weights import reachable

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: pytest.fail("probed the network"))
    t0 = time.perf_counter()
    assert reachable("huggingface.co") == "HF_HUB_OFFLINE is set" and time.perf_counter() - t0 < 1
