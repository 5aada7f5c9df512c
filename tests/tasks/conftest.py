"""Fixtures shared by the stage tests."""
import shutil

import pytest

from mapcap.tasks.data import read_dataset


@pytest.fixture(scope="module")
def tiny(toy_dir, tmp_path_factory):
    """Five toy images (one per class for five classes) copied to a private folder, plus one broken file."""
    ds = read_dataset(str(toy_dir))
    folder = tmp_path_factory.mktemp("tiny")
    items = []
    for cls in ds.classes[:5]:
        it = next(i for i in ds.items if i.label == cls)
        dst = folder / f"{cls}.png"
        shutil.copy(it.path, dst)
        items.append(type(it)(str(dst), cls))
    bad = folder / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return ds.classes, items + [type(items[0])(str(bad), ds.classes[0])]
