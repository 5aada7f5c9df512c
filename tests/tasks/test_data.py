import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mapcap.tasks.data import ImageLoadError, Item, image_id_of, load_image, read_dataset
from mapcap.tasks.pipeline.sharding import hash_shards, resumed_shard_count, shard_count


def _save(path, mode, fmt):
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8))
    img = rgb.convert(mode) if mode != "P" else rgb.convert("P", palette=Image.ADAPTIVE)
    img.save(path, format=fmt)


@pytest.mark.parametrize("mode,fmt,ext", [("RGB", "JPEG", "jpg"), ("L", "PNG", "png"), ("P", "PNG", "png"),
                                          ("RGBA", "PNG", "png"), ("CMYK", "JPEG", "jpg"), ("RGB", "WEBP", "webp"),
                                          ("LA", "PNG", "png"), ("I;16", "PNG", "png")])
def test_every_image_mode_loads_as_rgb(tmp_path, mode, fmt, ext):
    p = tmp_path / f"x.{ext}"
    _save(p, mode, fmt)
    img, iid = load_image(str(p))
    assert img.mode == "RGB" and img.size == (24, 20)
    assert iid == image_id_of(p.read_bytes()) and len(iid) == 16


def test_sixteen_bit_grey_keeps_its_top_eight_bits_in_either_byte_order(tmp_path):
    """A 16-bit grey image (a scientific camera's TIFF is often big-endian) maps 0..65535 onto 0..255: the
    big-endian one came out white (PIL clipped it on conversion)."""
    import numpy as np
    from mapcap.tasks.data import to_rgb
    ramp = (np.arange(40 * 30, dtype=np.int64).reshape(30, 40) * 54).astype(np.uint16)  # 0 .. 64,746
    want = (ramp // 256).astype(np.uint8)
    for mode, dtype in (("I;16", "<u2"), ("I;16B", ">u2"), ("I;16L", "<u2")):
        img = Image.frombuffer(mode, (40, 30), ramp.astype(dtype).tobytes(), "raw", mode, 0, 1)
        got = np.asarray(to_rgb(img))
        assert got.shape == (30, 40, 3) and (got == want[..., None]).all(), mode
    Image.frombuffer("I;16B", (40, 30), ramp.astype(">u2").tobytes(), "raw", "I;16B", 0, 1).save(tmp_path / "b.tif")
    assert (np.asarray(load_image(str(tmp_path / "b.tif"))[0])[..., 0] == want).all()


def test_transparent_pixels_become_white(tmp_path):
    p = tmp_path / "t.png"
    Image.new("RGBA", (10, 10), (255, 0, 0, 0)).save(p)
    img, _ = load_image(str(p))
    assert img.getpixel((5, 5)) == (255, 255, 255)


def test_rgb_images_are_not_copied_and_exif_orientation_is_applied():
    """An RGB image that needs no turn is the decoded image itself (copies of a 12-megapixel photo cost 25 ms);
    one whose EXIF orientation says "turn a quarter" comes back turned."""
    from mapcap.tasks.data import to_rgb
    img = Image.new("RGB", (40, 30), (10, 200, 30))
    assert to_rgb(img) is img
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    buf = io.BytesIO()
    img.save(buf, "JPEG", exif=exif.tobytes())
    turned = to_rgb(Image.open(buf))
    assert turned.size == (30, 40) and turned.mode == "RGB"


def test_bad_images_raise_a_clear_error(tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image at all")
    with pytest.raises(ImageLoadError, match="cannot decode .*bad.jpg") as first:
        load_image(str(bad))
    with pytest.raises(ImageLoadError) as again:
        load_image(str(bad))
    # the same words on every run (PIL's own message names a buffer's address), and the fix
    assert str(first.value) == str(again.value) and "0x" not in str(first.value)
    assert "19 bytes starting b'not an i'" in str(first.value) and "convert it" in str(first.value)
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    with pytest.raises(ImageLoadError, match=r"empty.jpg: the file is empty \(0 bytes\)"):
        load_image(str(empty))
    tiny = tmp_path / "tiny.png"
    Image.new("RGB", (3, 40)).save(tiny)
    with pytest.raises(ImageLoadError, match="3x40 px"):
        load_image(str(tiny))
    with pytest.raises(ImageLoadError, match="cannot read"):
        load_image(str(tmp_path / "missing.png"))


def test_imagefolder_and_manifests_give_the_same_dataset(tmp_path):
    for cls in ("cat", "dog"):
        (tmp_path / "imgs" / cls).mkdir(parents=True)
        for i in range(3):
            _save(tmp_path / "imgs" / cls / f"{i}.png", "RGB", "PNG")
    folder = read_dataset(str(tmp_path / "imgs"))
    assert folder.classes == ("cat", "dog") and len(folder.items) == 6
    lines = ["path,label"] + [f"imgs/{it.label}/{it.path.rsplit('/', 1)[1]},{it.label}" for it in folder.items]
    (tmp_path / "m.csv").write_text("\n".join(lines))
    assert read_dataset(str(tmp_path / "m.csv")).items == folder.items
    (tmp_path / "map.json").write_text(json.dumps({"cat": "tabby cat"}))
    mapped = read_dataset(str(tmp_path / "imgs"), str(tmp_path / "map.json"))
    assert mapped.classes == ("dog", "tabby cat")


def test_dataset_paths_are_resolved_through_links(tmp_path):
    from mapcap.storage.manifest import annotations, write_manifest

    real = tmp_path / "real"
    (real / "cat").mkdir(parents=True)
    _save(real / "cat" / "a.png", "RGB", "PNG")
    _save(real / "b.png", "RGB", "PNG")
    (tmp_path / "ds" / "dog").mkdir(parents=True)
    (tmp_path / "ds" / "cat").symlink_to(real / "cat")  # a linked class folder
    (tmp_path / "ds" / "dog" / "b.png").symlink_to(real / "b.png")  # a linked file
    (tmp_path / "ds" / "dog" / "c.png").write_bytes((real / "b.png").read_bytes())
    (tmp_path / "lnk").symlink_to(tmp_path / "ds")  # the dataset reached through a link
    got = sorted(it.path for it in read_dataset(str(tmp_path / "lnk")).items)
    assert got == sorted([str(real / "cat" / "a.png"), str(real / "b.png"), str(tmp_path / "ds" / "dog" / "c.png")])
    write_manifest(tmp_path / "ds" / "manifest.parquet", [{"path": "cat/a.png", "label": "cat"},
                                                          {"path": "dog/b.png", "label": "dog"},
                                                          {"path": "dog/../dog/c.png", "label": "dog"}])
    assert sorted(r["path"] for r in annotations(str(tmp_path / "lnk"), ("caption",))) == got


def test_bad_datasets_name_the_problem(tmp_path):
    (tmp_path / "ds" / "empty").mkdir(parents=True)
    (tmp_path / "ds" / "full").mkdir()
    _save(tmp_path / "ds" / "full" / "a.png", "RGB", "PNG")
    with pytest.raises(ValueError, match="empty holds no images"):
        read_dataset(str(tmp_path / "ds"))
    (tmp_path / "m.csv").write_text("file,cls\na.png,x\n")
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['label', 'path'\]"):
        read_dataset(str(tmp_path / "m.csv"))
    with pytest.raises(ValueError, match="neither a folder nor a manifest"):
        read_dataset(str(tmp_path / "nope"))


def test_shards_are_stable_when_images_are_added_or_removed():
    items = [Item(f"/x/{i:04d}.png", "a") for i in range(400)]
    n = shard_count(len(items), 50)
    shards = hash_shards(items, n)
    assert n == 8 and sum(map(len, shards)) == 400 and all(len(s) > 20 for s in shards)  # about 50 each
    assert hash_shards(list(reversed(items)), n) == shards  # the order given does not matter
    assert all(s == sorted(s, key=lambda it: it.path) for s in shards)
    grown = hash_shards(items + [Item("/x/new-1.png", "a"), Item("/x/new-2.png", "b")], n)
    changed = [i for i in range(n) if grown[i] != shards[i]]
    assert 1 <= len(changed) <= 2  # only the shards the new images fall into
    assert all(set(shards[i]) <= set(grown[i]) for i in changed)
    shrunk = hash_shards(items[1:], n)
    assert sum(shrunk[i] != shards[i] for i in range(n)) == 1
    with pytest.raises(ValueError):
        hash_shards(items, 0)


def test_gpu_runs_get_a_shard_count_the_shards_in_flight_divide():
    """Two shards in flight on a GPU: 10,000 images in 3 shards would leave the third to run alone."""
    assert [shard_count(10_000, 4096, k) for k in (1, 2)] == [3, 4]
    assert shard_count(8192, 4096, 2) == 2 and shard_count(3000, 4096, 2) == 2  # one shard splits in two...
    assert shard_count(1000, 4096, 2) == 1  # ... unless the halves would be too small to gain from overlapping
    assert shard_count(0, 4096, 2) == 1 and shard_count(48, 16, 1) == 3


def test_resuming_a_run_keeps_its_shard_count_and_refuses_sorted_path_runs():
    assert resumed_shard_count(None, "r") is None
    assert resumed_shard_count({"sharding": "path-hash-v1", "n_shards": 7}, "r") == 7
    with pytest.raises(ValueError, match=r"run 'old' was sharded by sorted path.*start a new run"):
        resumed_shard_count({"sharding": None, "n_shards": 3}, "old")


def test_hidden_and_system_entries_are_not_images_of_a_class(tmp_path):
    """A NAS's '@eaDir' thumbnails, Jupyter's checkpoints and macOS's '._' forks are not the class's photos."""
    root = tmp_path / "data"
    for cls in ("cat", "dog"):
        (root / cls).mkdir(parents=True)
        _save(root / cls / "a.png", "RGB", "PNG")
    (root / "cat" / "@eaDir" / "a.png").mkdir(parents=True)
    _save(root / "cat" / "@eaDir" / "a.png" / "SYNOPHOTO_THUMB_M.png", "RGB", "PNG")
    (root / "cat" / ".ipynb_checkpoints").mkdir()
    _save(root / "cat" / ".ipynb_checkpoints" / "a-checkpoint.png", "RGB", "PNG")
    (root / "cat" / "._a.png").write_bytes(b"\0\5\26\7 AppleDouble")
    (root / "@eaDir").mkdir()  # at the top too: not a class
    _save(root / "@eaDir" / "x.png", "RGB", "PNG")
    (root / "cat" / "more").mkdir()  # an ordinary sub-folder still counts
    _save(root / "cat" / "more" / "b.png", "RGB", "PNG")
    ds = read_dataset(str(root))
    assert ds.classes == ("cat", "dog")
    assert sorted(Path(it.path).relative_to(root).as_posix() for it in ds.items) == [
        "cat/a.png", "cat/more/b.png", "dog/a.png"]


def test_discovery_counts_what_it_leaves_out_and_keeps_one_row_per_file(tmp_path):
    from tests.hostile import small_png

    for d in ("cat", "dog"):
        (tmp_path / d).mkdir()
    small_png(tmp_path / "cat" / "a.png", (1, 2, 3))
    (tmp_path / "cat" / "link.png").symlink_to(tmp_path / "cat" / "a.png")  # the same file twice in one class
    (tmp_path / "dog" / "link.png").symlink_to(tmp_path / "cat" / "a.png")  # ... and in another
    small_png(tmp_path / "dog" / "b.png", (3, 2, 1))
    small_png(tmp_path / "loose.png", (9, 9, 9))  # no class
    (tmp_path / "manifest.parquet").write_bytes(b"")  # the dataset's own file: not counted
    (tmp_path / "dog" / "README").write_text("x")
    (tmp_path / "dog" / ".thumbs").mkdir()
    ds = read_dataset(str(tmp_path))
    assert [Path(it.path).name for it in ds.items] == ["a.png", "b.png"]
    assert dict(ds.skipped) == {"a second link to a listed file": 2, "images in the dataset root (no class)": 1,
                                "not an image's extension": 1, "hidden or system": 1}
