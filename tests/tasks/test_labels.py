"""Trend plots stay readable: point labels never overlap each other or a dot, every class is labelled or listed,
and a property that is the same for every class is left out (and said)."""
import io
import itertools
import random

import matplotlib
import pytest

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from PIL import Image  # noqa: E402

from mapcap.tasks.report.labels import place_labels  # noqa: E402
from mapcap.tasks.report.plots import constant_properties, property_scatter  # noqa: E402


@pytest.mark.parametrize("n", [8, 40, 120])
def test_labels_never_overlap_and_every_name_is_placed_or_listed(n):
    rng = random.Random(n)
    xs, ys = [rng.random() for _ in range(n)], [rng.random() for _ in range(n)]
    names = [f"class_{i:03d}" for i in range(n)]
    fig, ax = plt.subplots(figsize=(3.3, 2.6))
    ax.scatter(xs, ys, s=14)
    ax.margins(0.15)
    left = place_labels(ax, xs, ys, names)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    boxes = [t.get_window_extent(renderer) for t in ax.texts]
    assert sorted([t.get_text() for t in ax.texts] + left) == names
    for a, b in itertools.combinations(boxes, 2):
        assert not a.overlaps(b), (a, b)
    dots = ax.transData.transform(list(zip(xs, ys)))
    for box in boxes:
        assert not any(box.contains(x, y) for x, y in dots)
    if n == 8:
        assert left == []  # a few classes all get their names
    plt.close(fig)


def test_a_constant_property_is_left_out_and_said():
    pts = [{"property": p, "class_name": f"c{i}", "value": 1.0 if p == "flat" else i / 7, "accuracy": i / 9}
           for p in ("flat", "diversity") for i in range(8)]
    assert constant_properties(pts) == ["flat"]
    png = property_scatter(pts, {})
    assert Image.open(io.BytesIO(png)).size[0] > 0
