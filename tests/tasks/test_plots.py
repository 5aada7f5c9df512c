"""The report's charts stay readable for datasets with many classes."""
import io

from PIL import Image

from mapcap.tasks.report.plots import accuracy_bars, shown_classes


def _rows(n: int) -> list[dict]:
    return [{"class_name": f"c{i:04d}", "accuracy": (i * 37 % n) / n, "n": 10} for i in range(n)]


def test_many_classes_draw_the_worst_and_the_best_only():
    few, title = shown_classes(_rows(8))
    assert len(few) == 8 and title == "" and [r["accuracy"] for r in few] == sorted(r["accuracy"] for r in few)
    many, title = shown_classes(_rows(1000), shown=20)
    assert len(many) == 41 and many[20] is None and "20 worst and 20 best of 1000 classes" in title
    accs = [r["accuracy"] for r in many if r]
    assert accs[:20] == [i / 1000 for i in range(20)] and accs[20:] == [i / 1000 for i in range(980, 1000)]
    height = Image.open(io.BytesIO(accuracy_bars(_rows(1000)))).size[1]
    assert height < 1500  # ImageNet's 1,000 classes drew a 20,917-pixel-tall chart
