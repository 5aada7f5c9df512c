"""Frames for crops (tasks/frames.py): decoded once, as coarse as the crops allow, and crops cut from them as
from the full image."""
import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from mapcap.tasks import data as data_mod
from mapcap.tasks.captioners.base import crop_region
from mapcap.tasks.frames import crop_boxes, frame_draft, frames, scale_box
from mapcap.tasks.pipeline import images as context_mod  # where the shard's images are decoded
from mapcap.tasks.pipeline.context import StageContext

PRE = T.Compose([T.Resize(224, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(224), T.ToTensor(),
                 T.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))])


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    """A 2400×1800 JPEG with detail at several scales."""
    rng = np.random.default_rng(0)
    small = (rng.random((45, 60, 3)) * 255).astype(np.uint8)
    img = Image.fromarray(small).resize((2400, 1800), Image.BICUBIC)
    path = tmp_path_factory.mktemp("frames") / "photo.jpg"
    img.save(path, quality=92)
    return data_mod.image_id_of(path.read_bytes()), str(path)


def test_the_draft_is_as_coarse_as_the_smallest_crop_allows():
    size = (4000, 3000)
    assert frame_draft(size, [(0, 0, 3000, 3000)], 448) == 448  # classify's frame (1/4) is enough
    assert frame_draft(size, [(0, 0, 3000, 3000), (0, 0, 1200, 1200)], 448) == 1500  # 1/2: 600 px crops
    assert frame_draft(size, [(0, 0, 600, 600)], 448) is None  # only the full image keeps 448 px
    assert frame_draft((500, 375), [(0, 0, 100, 100)], 448) is None
    assert frame_draft((500, 375), [], 448) == 448  # no reduction possible: PIL decodes it whole
    assert frame_draft(size, [], None) is None  # a preprocess of unknown geometry: full images


def test_crops_from_a_frame_match_the_full_image_path(photo):
    iid, photo = photo
    """Each crop from the reduced frame, preprocessed, is within 0.002 mean (0..1 pixels) of the crop cut from the
    full image, as the classify stage's draft is."""
    full = Image.open(photo).convert("RGB")
    bboxes = [(300, 200, 1100, 900), (1500, 1000, 2300, 1700), (-100, 1200, 700, 1900)]
    boxes = crop_boxes(bboxes, 1.0)
    ctx = StageContext("memory://unused", "r", 0, [], workers=2)
    frame = frames(ctx, {iid: photo}, {iid: full.size}, {iid: boxes}, 448)[iid]
    assert frame.width < full.width and data_mod.full_size(frame) == full.size
    for b in bboxes:
        a = PRE(crop_region(full, b, 1.0))
        c = PRE(crop_region(frame, scale_box(b, frame), 1.0))
        assert (a - c).abs().mean().item() / 2 < 0.002  # normalised to [-1, 1]: half is 0..1 units


def test_a_frame_the_shard_decoded_is_not_decoded_again(photo, monkeypatch):
    iid, photo = photo
    ctx = StageContext("memory://unused", "r", 0, [], workers=2)
    size = Image.open(photo).size
    ctx.images({iid: photo}, 448)  # as the classify stage decodes for model pixels
    calls = []
    real = context_mod.load_image
    monkeypatch.setattr(context_mod, "load_image", lambda *a: calls.append(a) or real(*a))
    got = frames(ctx, {iid: photo}, {iid: size}, {iid: crop_boxes([(0, 0, 1800, 1800)], 1.0)}, 448)
    assert calls == [] and min(got[iid].size) >= 448
    frames(ctx, {iid: photo}, {iid: size}, {iid: crop_boxes([(0, 0, 400, 400)], 1.0)}, 448)
    assert len(calls) == 1  # a small region needs a finer frame: decoded once more, at the scale it needs
    assert torch.is_tensor(PRE(got[iid]))
