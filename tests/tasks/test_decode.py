"""JPEGs decoded and preprocessed as tensor ops (the CUDA path, run here on CPU) match the PIL preprocess."""
import numpy as np
import pytest
import torch
from PIL import Image

from mapcap.tasks.data import load_image
from mapcap.tasks.decode import decode_jpegs, geometry, to_pixels
from mapcap.tasks.zeroshot import classify_pixels, text_classifier
from mapcap.toy.dataset import make_scene
from mapcap.toy.shapes import SHAPES


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Toy scenes as JPEGs of several sizes and orientations, a grey JPEG, a PNG and a truncated JPEG."""
    folder = tmp_path_factory.mktemp("jpegs")
    rng = np.random.default_rng(4)
    paths = []
    for k, size in enumerate([(500, 375), (375, 500), (640, 640), (97, 203), (1024, 683), (64, 64)]):
        img = Image.fromarray(make_scene(rng, shape=SHAPES[k % len(SHAPES)]).image).resize(size)
        paths.append(folder / f"{k}.jpg")
        img.save(paths[-1], quality=90)
    Image.open(paths[0]).convert("L").save(folder / "grey.jpg")
    Image.open(paths[0]).save(folder / "scene.png")
    (folder / "cut.jpg").write_bytes(paths[0].read_bytes()[:2000])
    return [str(p) for p in paths] + [str(folder / n) for n in ("grey.jpg", "scene.png", "cut.jpg")]


@pytest.mark.parametrize("model", ["toy", "ViT-B-16"])
def test_tensor_decode_matches_the_pil_preprocess(files, model, toy_model):
    import open_clip
    preprocess = toy_model.preprocess if model == "toy" else open_clip.create_model_and_transforms(model)[2]
    geo = geometry(preprocess)
    assert geo is not None
    out = decode_jpegs(files, geo, "cpu")
    assert set(out.misses) == {files[-2], files[-1]}  # the PNG and the truncated JPEG go to the PIL path
    for p, pix in out.pixels.items():
        img, iid = load_image(p)
        ref = preprocess(img)
        assert out.sizes[p] == img.size and out.ids[p] == iid and pix.shape == ref.shape
        # resampling differs a little between PIL and torch; in 8-bit steps of the normalised scale (~0.015)
        assert (pix - ref).abs().mean() < 0.02 and (pix - ref).abs().max() < 0.5, p


def test_tensor_decode_gives_the_same_predictions(files, toy_model):
    geo = geometry(toy_model.preprocess)
    out = decode_jpegs(files, geo, "cpu")
    paths = sorted(out.pixels)
    fast = torch.stack([out.pixels[p] for p in paths])
    slow = torch.stack([toy_model.preprocess(load_image(p)[0]) for p in paths])
    clf = text_classifier(toy_model, tuple(SHAPES), ("a photo of a {}.",))
    a, b = classify_pixels(toy_model, fast, clf), classify_pixels(toy_model, slow, clf)
    assert torch.equal(a[-1].argmax(-1), b[-1].argmax(-1)) and (a - b).abs().max() < 0.05


def test_same_size_images_resized_together_equal_one_at_a_time(files, toy_model, tmp_path):
    from torchvision.io import ImageReadMode, decode_jpeg

    geo = geometry(toy_model.preprocess)
    same = [str(tmp_path / f"{i}.jpg") for i in range(5)]
    for i, p in enumerate(same):  # five 500×375 scenes: one batch
        Image.fromarray(make_scene(np.random.default_rng(i), shape=SHAPES[i]).image).resize((500, 375)).save(p)
    out = decode_jpegs(same + files, geo, "cpu", workers=3)
    for p in same + [files[0], files[-3]]:
        alone = decode_jpeg(torch.frombuffer(bytearray(open(p, "rb").read()), dtype=torch.uint8),
                            mode=ImageReadMode.RGB, apply_exif_orientation=True)
        assert torch.allclose(out.pixels[p], to_pixels(alone, geo), atol=1e-6), p
    assert list(out.pixels) and set(out.misses) == {files[-2], files[-1]}


def test_the_next_batch_is_read_while_one_decodes(files, toy_model, monkeypatch):
    """Batched decoding reads (and hashes) the next batch's files in the threads meanwhile; results as in one
    batch."""
    import time

    from mapcap.tasks import decode
    geo = geometry(toy_model.preprocess)
    whole = decode_jpegs(files, geo, "cpu")
    monkeypatch.setattr(decode, "DECODE_BATCH", 2)
    started, real_load, real_decode = [], decode._load, decode._decode_loaded
    overlapped = []

    def load(path, *limits):
        started.append(path)
        return real_load(path, *limits)

    def decode_batch(paths, loaded, device):
        nxt = files[files.index(paths[-1]) + 1:][:2]
        deadline = time.monotonic() + 5
        while nxt and not set(nxt) <= set(started) and time.monotonic() < deadline:
            time.sleep(0.005)
        overlapped.append(set(nxt) <= set(started))
        return real_decode(paths, loaded, device)
    monkeypatch.setattr(decode, "_load", load)
    monkeypatch.setattr(decode, "_decode_loaded", decode_batch)
    out = decode_jpegs(files, geo, "cpu", workers=2)
    assert len(overlapped) == -(-len(files) // 2) and all(overlapped)
    assert out.ids == whole.ids and out.misses == whole.misses and out.sizes == whole.sizes
    assert all(torch.equal(out.pixels[p], whole.pixels[p]) for p in whole.pixels)


def test_a_preprocess_it_cannot_mirror_keeps_the_pil_path():
    from torchvision import transforms as T
    assert geometry(T.Compose([T.Resize((64, 64)), T.ToTensor()])) is None
    assert geometry(lambda img: img) is None


def test_a_shard_decoded_on_the_device_feeds_the_stages(files, toy_model, monkeypatch):
    """The CUDA branch of the stage context, with the decoder run on CPU: JPEG pixels cached for every stage,
    the PNG through PIL, the truncated JPEG a failure row."""
    import mapcap.tasks.pipeline.images as context
    from mapcap.tasks.data import Item
    from mapcap.tasks.pipeline.context import StageContext
    real = context.decode_jpegs
    monkeypatch.setattr(context, "decode_jpegs",
                        lambda paths, geo, device, workers, *lim: real(paths, geo, "cpu", workers, *lim))
    ctx = StageContext("memory://unused", "r", 0, [Item(p, "circle") for p in files], workers=2)
    ctx.begin("classify")
    got = ctx.decode_items(toy_model.preprocess, "cuda")
    assert [it.path for it, _, _ in got] == files
    assert [f["path"] for f in ctx.failures.rows] == [files[-1]]  # the truncated JPEG, also refused by PIL
    sizes = {it.path: size for it, _, size in got}
    assert sizes[files[-2]] == Image.open(files[-2]).size  # the PNG, decoded by PIL
    ids = {it.path: iid for it, iid, size in got if size is not None}
    pix = ctx.pixels_of(toy_model.preprocess, {ids[p]: p for p in files[:-1]})
    assert len(pix) == len(files) - 1
    cached = ctx.cache.get(("pixels", id(toy_model.preprocess), ids[files[0]]))
    assert pix[ids[files[0]]] is cached and ctx.cache.get(("path", files[0])) is None  # never through PIL


BOXES = [(200, 150, 260, 230), (0, 0, 90, 40), (430, 300, 500, 375), (10, 200, 480, 370), (-30, 5, 40, 60)]


@pytest.mark.parametrize("model", ["toy", "ViT-B-16"])
def test_crops_cut_as_tensors_match_the_pil_crops(files, model, toy_model):
    """Regions' square crops with context (filled with the mean colour where they leave the image), cut and
    resized as matrix products, then normalised together, match crop_region + the PIL preprocess, and the canvas
    + resize kernel they replace to within one 8-bit step."""
    import open_clip

    from mapcap.tasks.captioners.base import crop_region, square_box
    from mapcap.tasks.decode import normalise, resized_crops
    preprocess = toy_model.preprocess if model == "toy" else open_clip.create_model_and_transforms(model)[2]
    geo = geometry(preprocess)
    img, _ = load_image(files[0])  # 500×375
    rgb = torch.from_numpy(np.array(img)).permute(2, 0, 1)
    got = normalise(torch.stack(resized_crops(rgb, [square_box(b, 1.0) for b in BOXES], geo)), geo)  # (K, 3, S, S)
    step = 1 / 255 / min(geo.std) + 1e-4  # one 8-bit step, normalised
    for k, bbox in enumerate(BOXES):
        ref = preprocess(crop_region(img, bbox, 1.0))
        assert got[k].shape == ref.shape
        assert (got[k] - ref).abs().mean() < 0.02 and (got[k] - ref).abs().max() < 0.5, bbox
        canvas = torch.from_numpy(np.array(crop_region(img, bbox, 1.0))).permute(2, 0, 1)  # the PIL canvas
        direct = to_pixels(canvas, geo)  # resized by torch's kernel
        assert (got[k] - direct).abs().max() <= step, bbox
        assert (got[k] - direct).abs().mean() < 0.01 * step, bbox  # rounding flips only


def test_exif_orientation_is_applied_as_the_pil_path_applies_it(tmp_path):
    """nvjpeg ignores EXIF orientation (torchvision applies it on CPU only): the tensor path turns the images
    itself. Every orientation of a non-square picture against PIL's exif_transpose."""
    from mapcap.tasks.decode import decode_files
    rng = np.random.default_rng(8)
    base = Image.fromarray(make_scene(rng, shape=SHAPES[1]).image).resize((120, 80))
    paths = []
    for turn in range(1, 9):
        exif = Image.Exif()
        exif[0x0112] = turn
        paths.append(str(tmp_path / f"o{turn}.jpg"))
        base.save(paths[-1], quality=95, exif=exif.tobytes())
    out = decode_files(paths, "cpu")
    assert not out.misses
    for turn, p in enumerate(paths, start=1):
        ref = torch.from_numpy(np.array(load_image(p)[0])).permute(2, 0, 1)
        got = out.images[p]
        assert got.shape == ref.shape, turn  # 5-8 swap width and height
        assert (got.float() - ref.float()).abs().mean() < 2.0, turn  # the same picture, the same way up


def test_decoding_a_few_files_at_a_time_gives_the_same_pixels(files, toy_model, monkeypatch):
    """A shard's JPEGs are decoded DECODE_BATCH at a time (full-size photos of a whole shard would not fit)."""
    import mapcap.tasks.decode as decode
    geo = geometry(toy_model.preprocess)
    whole = decode_jpegs(files, geo, "cpu")
    monkeypatch.setattr(decode, "DECODE_BATCH", 2)
    parts = decode_jpegs(files, geo, "cpu")
    assert parts.pixels.keys() == whole.pixels.keys() and set(parts.misses) == set(whole.misses)
    assert parts.sizes == whole.sizes and parts.ids == whole.ids
    assert all(torch.allclose(parts.pixels[p], whole.pixels[p], atol=1e-6) for p in whole.pixels)


def test_large_jpegs_decode_at_a_reduced_scale_for_model_pixels_only(tmp_path, toy_model):
    """On the PIL path a JPEG needed only at model resolution is decoded at a reduced DCT scale (both sides ≥ twice
    the resize): the images table still gets the file's size (EXIF-turned), the pixels match a full decode's,
    and a stage that crops (ctx.images) gets the full image. A JPEG no larger than that decodes once, whole."""
    from mapcap.tasks.data import Item, full_size
    from mapcap.tasks.pipeline.context import StageContext, draft_size
    rng = np.random.default_rng(3)
    scene = Image.fromarray(make_scene(rng, shape=SHAPES[2]).image)
    exif = Image.Exif()
    exif[0x0112] = 6  # a quarter turn clockwise: the file's 1600×1200 is shown 1200×1600
    paths = [str(tmp_path / n) for n in ("big.jpg", "turned.jpg", "small.jpg")]
    scene.resize((1600, 1200), Image.BICUBIC).save(paths[0], quality=92)
    scene.resize((1600, 1200), Image.BICUBIC).save(paths[1], quality=92, exif=exif.tobytes())
    scene.resize((200, 150), Image.BICUBIC).save(paths[2], quality=92)
    pre = toy_model.preprocess
    draft = draft_size(pre)
    assert draft == 128  # the toy model resizes to 64
    ctx = StageContext("memory://unused", "r", 0, [Item(p, "square") for p in paths], workers=2)
    ctx.begin("classify")
    got = ctx.decode_items(pre)
    assert [size for _, _, size in got] == [(1600, 1200), (1200, 1600), (200, 150)]
    ids = {it.path: iid for it, iid, _ in got}
    reduced = ctx.cache.get(("draft", draft, paths[0]))[0]
    assert reduced.size == (200, 150) and full_size(reduced) == (1600, 1200)  # 1/8: both sides still ≥ 128
    assert ctx.cache.get(("path", paths[0])) is None  # not decoded whole (yet)
    assert ctx.cache.get(("path", paths[2])) is not None  # 200×150 is not reduced: cached as the full image
    pix = ctx.pixels_of(pre, {ids[p]: p for p in paths})
    for p in paths:
        ref = pre(load_image(p)[0])
        assert (pix[ids[p]] - ref).abs().mean() < 0.01 and (pix[ids[p]] - ref).abs().max() < 0.2, p
    whole = ctx.images({ids[p]: p for p in paths[:2]})
    assert [whole[ids[p]].size for p in paths[:2]] == [(1600, 1200), (1200, 1600)]
    assert not ctx.failures.rows


def test_a_truncated_jpeg_goes_to_pil_before_any_gpu_decoder_sees_it(files, tmp_path, monkeypatch):
    """Whether a cut file becomes a failure row is decided on the host (no end-of-image marker: the PIL path,
    which fails it), not by a device decoder that may fill the missing rows; a trailer after the marker is fine."""
    import mapcap.tasks.decode as decode
    from mapcap.tasks.decode import complete, decode_files
    whole = open(files[0], "rb").read()
    assert complete(whole) and not complete(whole[:2000]) and not complete(whole[:-1])
    (tmp_path / "trailer.jpg").write_bytes(whole + b"\0" * 4096 + b"maker note")
    (tmp_path / "long-trailer.jpg").write_bytes(whole + b"\0" * (decode.TRAILER + 1))
    seen = []
    real = decode.decode_jpeg
    monkeypatch.setattr(decode, "decode_jpeg", lambda datas, **kw: seen.append(len(datas)) or real(datas, **kw))
    frames = decode_files([files[0], files[-1], str(tmp_path / "trailer.jpg"), str(tmp_path / "long-trailer.jpg")],
                          "cpu")
    assert seen == [2]  # one batch of the two whole files: the cut one never reached the decoder
    assert set(frames.images) == {files[0], str(tmp_path / "trailer.jpg")}
    assert set(frames.misses) == {files[-1], str(tmp_path / "long-trailer.jpg")}  # PIL decides those
    assert torch.equal(frames.images[files[0]], frames.images[str(tmp_path / "trailer.jpg")])


def test_a_file_the_decoder_refuses_costs_a_few_halvings_not_a_decode_per_file(files, tmp_path, monkeypatch):
    """A GPU decoder refusing one file of a batch fails the batch; the halves are decoded again down to that file
    (a miss: the PIL path takes it), every other file decoded as in one batch."""
    import math
    import shutil

    import mapcap.tasks.decode as decode
    from mapcap.tasks.decode import decode_files
    paths = []
    for k in range(32):
        paths.append(str(tmp_path / f"{k}.jpg"))
        shutil.copy(files[4] if k == 7 else files[k % 4], paths[-1])
    refused = open(files[4], "rb").read()  # stands for a file nvjpeg refuses (CMYK, an odd sampling)
    calls, real = [], decode.decode_jpeg

    def picky(datas, **kw):
        calls.append(len(datas))
        if any(bytes(d.numpy()) == refused for d in datas):
            raise RuntimeError("nvjpeg: unsupported")
        return real(datas, **kw)
    plain = decode_files(paths, "cpu")
    monkeypatch.setattr(decode, "decode_jpeg", picky)
    frames = decode_files(paths, "cpu")
    assert frames.misses == [paths[7]] and set(frames.images) == set(paths) - {paths[7]}
    assert all(torch.equal(frames.images[p], plain.images[p]) for p in frames.images)
    assert len(calls) == 1 + 2 * math.log2(len(paths))  # 11; one file at a time after the batch failed: 33
