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


def test_the_report_of_many_classes_tables_their_worst_and_best(tmp_path):
    """A run over 60 classes (rows written straight into the results layout): the chart and both summary tables
    keep the 20 worst and 20 best classes and say how to list them all."""
    from mapcap.storage.writer import write_table
    from mapcap.tasks.report.html import build_report
    images, preds = [], []
    for c in range(60):
        for k in range(c % 4 + 1):  # class c: k of its images right
            iid, label = f"i{c:02d}{k}", f"class{c:02d}"
            right = k < (c * 7) % 5
            images.append({"run_id": "many", "image_id": iid, "path": f"/missing/{iid}.jpg", "label": label,
                           "shard": 0, "width": 10, "height": 10})
            preds.append({"run_id": "many", "image_id": iid, "shard": 0, "template": "ensemble", "label": label,
                          "pred": label if right else "class00", "correct": right, "pred_prob": 0.5,
                          "label_prob": 0.5 if right else 0.1, "label_rank": 1 if right else 2,
                          "topk_labels": [label], "topk_probs": [0.5]})
    from datetime import datetime, timezone
    write_table(str(tmp_path), "runs", "many", "run", [{"run_id": "many", "status": "finished",
                                                        "started_at": datetime.now(timezone.utc), "model": "ViT-B-16"}])
    write_table(str(tmp_path), "images", "many", "shard-00000", images)
    write_table(str(tmp_path), "predictions", "many", "shard-00000", preds)
    _, page = build_report(str(tmp_path), "many", explained=0, sampled=0)
    summaries = page.split('id="summaries"')[1].split('id="trends"')[0]
    assert "The 20 worst and 20 best of 60 classes" in summaries and "mapcap summaries --root" in summaries
    named = {c for c in range(60) if f"<td>class{c:02d}</td>" in summaries}
    assert len(named) == 40
