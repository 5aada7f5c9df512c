"""The run report: one self-contained HTML file (figures and images inlined as data URIs).

Sections: per-class accuracy, template comparison, top-k probability bars for sampled images, heatmap
overlays with region boxes and captions (misclassified images first), per-class summaries, accuracy
against each summary property with its correlations, and textual concepts (description-based accuracy,
mutual knowledge against accuracy), and the images a stage could not use. Data comes through storage/ (named
queries).
"""
from __future__ import annotations

import base64
import html
import io
import os
from collections import defaultdict
from datetime import datetime, timezone

import numpy as np
from PIL import Image

from mapcap.storage.query import connect, format_table, named_query, predictions_for, resolve_run, rows_for_images
from mapcap.storage.writer import write_file
from mapcap.tasks.data import ImageLoadError, load_image
from mapcap.tasks.pipeline.plan import result_notes
from mapcap.tasks.report.overlay import overlay_row
from mapcap.tasks.report.concepts import concepts_section
from mapcap.tasks.report.plots import (SHOWN_CLASSES, accuracy_bars, property_scatter, shown_classes, template_bars,
                                      topk_panels)

SECTIONS = ("accuracy", "templates", "topk", "explanations", "caption-quality", "summaries", "trends", "concepts",
            "failures")
QUALITY_COLUMNS = ["captioner", "captioned", "n", "bleu_1", "bleu_4", "cider_d", "clipscore", "ref_clipscore"]
# Counts images that failed to decode and script errors into <body data-...> for headless checks.
CHECK_JS = """<script>
window.mapcapErrors = 0;
window.addEventListener('error', () => { window.mapcapErrors += 1; }, true);
window.addEventListener('load', () => {
  const imgs = Array.from(document.images);
  document.body.dataset.images = imgs.length;
  document.body.dataset.broken = imgs.filter(i => !(i.complete && i.naturalWidth > 0)).length;
  document.body.dataset.errors = window.mapcapErrors;
  // what a reader at this window's width cannot see: the page scrolling sideways, figures cut at the right
  document.body.dataset.overflow = Math.max(0, document.documentElement.scrollWidth - window.innerWidth);
  document.body.dataset.clipped = imgs.filter(i => i.getBoundingClientRect().right > window.innerWidth + 1).length;
});
</script>"""
CSS = """body{font-family:sans-serif;margin:2em;max-width:1100px;color:#222}h2{border-bottom:1px solid #ccc}
img{max-width:100%;height:auto}.banner{border:1px solid #c44e52;padding:6px 10px;background:#fdf2f2}
table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ddd;padding:3px 6px;vertical-align:top}
.card{display:inline-block;width:520px;margin:6px;vertical-align:top;font-size:13px}.wrong{color:#c44e52}
.ok{color:#55a868}pre{font-size:12px;background:#f6f6f6;padding:8px;overflow-x:auto}"""


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


def _img(data: bytes, alt: str, width: int | None = None) -> str:
    w = f' width="{width}"' if width else ""
    return f'<img alt="{html.escape(alt)}"{w} src="{data_uri(data)}">'


def png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def _table(rows: list[dict], cols: list[str]) -> str:
    def cell(v):
        return "" if v is None else (f"{v:.3f}" if isinstance(v, float) else html.escape(str(v)))
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{cell(r.get(c))}</td>" for c in cols) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


THUMB = 320  # pixels on the longer side of the report's pictures (drawn at 160-320 px)


def _decode(path: str) -> Image.Image | None:
    """The image at most THUMB pixels on a side: JPEGs decoded at a reduced scale, all shrunk before they are
    drawn (matplotlib drawing three 12-megapixel photos took 6.5 s of a 24-photo run's 8 s report)."""
    try:
        image = load_image(path, draft=THUMB)[0]
    except ImageLoadError:
        return None  # the failures table already records it; the report just leaves the picture out
    image.thumbnail((THUMB, THUMB))
    return image


def file_size(image_row: dict | None) -> tuple[int, int] | None:
    """(W, H) of the image as classified (its regions' coordinates), from its `images` row."""
    return (image_row["width"], image_row["height"]) if image_row and image_row["width"] else None


def _where(caption: dict) -> str:
    return "image" if caption["region_id"] < 0 else f"{caption['target']} region {caption['region_id']}"


def explained_images(con, run: str, preds: list[dict], limit: int,
                     variant: tuple[str, int | None] = ("chefer", None)) -> list[dict]:
    """Per chosen image (mistakes first, then by confidence): its overlay row (image, predicted-class map with
    its regions, true-class map) as PNG bytes, its captions, and its concepts (None without the concepts stage):
    visual concepts by importance, those shared with the predicted class's language concepts, MI and AUC."""
    chosen = sorted(preds, key=lambda p: (p["correct"], -p["pred_prob"], p["image_id"]))[:limit]
    ids = [p["image_id"] for p in chosen]
    files = {r["image_id"]: r for r in rows_for_images(con, "images", run, ids)}
    paths = {i: r["path"] for i, r in files.items()}
    method, start = variant  # the run's primary map (start None: the method's first stored start layer)
    rel = [r for r in rows_for_images(con, "relevancy", run, ids) if r["method"] == method]
    start = start if start is not None or not rel else min((r["start_layer"] for r in rel),
                                                           key=lambda s: (s is None, s or 0))
    mine = lambda r: r["method"] == method and r["start_layer"] == start  # noqa: E731
    maps = {(r["image_id"], r["target"]): r for r in rel if mine(r)}
    regions, captions = defaultdict(list), defaultdict(list)
    for r in rows_for_images(con, "regions", run, ids):
        if mine(r) and r["target"] == "pred":
            regions[r["image_id"]].append(r)
    for c in rows_for_images(con, "captions", run, ids):
        captions[c["image_id"]].append(c)
    concepts = {m["image_id"]: {k: m[k] for k in ("visual", "language", "shared", "mi", "auc")}
                for m in rows_for_images(con, "mutual_knowledge", run, ids)}
    out = []
    for p in chosen:
        image = _decode(paths.get(p["image_id"], ""))
        if image is None:
            continue
        grid = {t: np.asarray(m["map"], np.float32).reshape(m["grid"], m["grid"])
                for (iid, t), m in maps.items() if iid == p["image_id"]}
        boxes = [[], [tuple(r["bbox"]) for r in regions[p["image_id"]]], []]
        row = overlay_row(image, [None, grid.get("pred"), grid.get("label")],
                          ["image", f"pred: {p['pred']}", f"true: {p['label']}"], tile=160, boxes=boxes,
                          size=file_size(files.get(p["image_id"])))
        caps = sorted(captions[p["image_id"]], key=lambda c: (c["captioner"], c["target"], c["region_id"]))
        out.append({**p, "png": png_bytes(row), "concepts": concepts.get(p["image_id"]), "captions": [
            {"captioner": c["captioner"], "where": _where(c), "text": c["text"], "clipscore": c["clipscore"]}
            for c in caps]})
    return out


def explanation_cards(con, run: str, preds: list[dict], limit: int,
                      variant: tuple[str, int | None] = ("chefer", None)) -> str:
    """The report's cards: overlays and captions of the explained images."""
    cards = []
    for e in explained_images(con, run, preds, limit, variant):
        lines = "".join(f"<li>{html.escape(c['captioner'])} · {c['where']}: <b>{html.escape(c['text'])}</b> "
                        f"(CLIPScore {c['clipscore']:.2f})</li>" for c in e["captions"])
        if e["concepts"]:
            k = e["concepts"]
            lines += (f'<li class="concepts">visual concepts: <b>{html.escape(", ".join(k["visual"]))}</b>; shared with '
                      f'{html.escape(e["pred"])}: {html.escape(", ".join(k["shared"]) or "none")} '
                      f'(MI {k["mi"]:.2f}, AUC {k["auc"]:.2f})</li>')
        verdict = "ok" if e["correct"] else "wrong"
        cards.append(f'<div class="card">{_img(e["png"], "overlay " + e["image_id"])}<br>'
                     f'<span class="{verdict}">{html.escape(e["label"])} → {html.escape(e["pred"])} '
                     f'({e["pred_prob"]:.2f})</span><ul>{lines}</ul></div>')
    return "".join(cards) or "<p>No relevancy maps in this run (stages relevancy, regions, captions).</p>"


def caption_quality_section(rows: list[dict]) -> str:
    """Per captioner: BLEU and CIDEr-D against the references, and the mean (Ref)CLIPScore of the same captions."""
    if not rows:
        return "<p>No captions of images with reference captions (stage caption_quality).</p>"
    return ("<p>Corpus BLEU and CIDEr-D as coco-caption computes them (lower-cased words, punctuation dropped); "
            "CLIPScore and RefCLIPScore as Hessel et al.'s code computes them.</p>" + _table(rows, QUALITY_COLUMNS))


METHOD_COLUMNS = ["method", "start_layer", "pointing_grid", "pointing_pixel", "discrimination", "deletion_auc",
                  "insertion_auc", "positive_auc", "negative_auc", "n"]


def methods_section(rows: list[dict]) -> str:
    """Every relevancy method the model's tower supports, scored on the same sample: which to trust here."""
    if not rows:
        return "<p>No evaluation of the maps in this run (stages faithfulness, evaluate).</p>"
    best = []
    for col, lower, what in (("deletion_auc", True, "deletion AUC"), ("discrimination", False, "discrimination"),
                             ("pointing_grid", False, "pointing")):
        scored = [r for r in rows if r.get(col) is not None and r["method"] != "random"]
        if scored:
            r = (min if lower else max)(scored, key=lambda r: r[col])
            at = "" if r["start_layer"] is None else f" (start {r['start_layer']})"
            best.append(f"{what}: <b>{html.escape(r['method'])}{at}</b> {r[col]:.3f}")
    return ("<p>Each method's maps of the same sampled images, against ground truth where the dataset has object "
            "masks (pointing, discrimination: higher is better) and under perturbation (deletion, positive AUC: "
            "lower is better). Best " + "; ".join(best) + ".</p>" + _table(rows, METHOD_COLUMNS))


def failures_section(counts: list[dict], rows: list[dict], n_images: int, root: str, run: str) -> str:
    """What the run could not use, by stage and error, then the files themselves (the first 200): a user's own
    data holds unreadable files, and a report that counts only the images it shows hides them."""
    if not counts:
        return f"<p>None: every stage used every one of the {n_images} images.</p>"
    total = sum(c["n"] for c in counts)
    command = f"mapcap sql --root {root} \"SELECT * FROM failures WHERE run_id = '{run}'\""
    more = f" (the first {len(rows)} of {total})" if total > len(rows) else ""
    return (f"<p>{total} failure row(s) of {n_images} images; each names the stage that could not use the image "
            f"(<code>{html.escape(command)}</code> lists them all).</p>"
            + _table(counts, ["stage", "error_type", "n", "example"]) + f"<h3>The files{more}</h3>"
            + _table(rows, ["stage", "path", "error_type", "error"]))


def build_report(root: str, run: str = "latest", explained: int = 12, sampled: int = 6,
                 variant: tuple[str, int | None] = ("chefer", None)) -> tuple[str, str]:
    """(run id, HTML) of the report for a run."""
    con = connect(root)
    run = resolve_run(con, run)
    per_class = named_query(con, "per_class_accuracy", run).to_pylist()
    templates = named_query(con, "per_template_accuracy", run).to_pylist()
    table = named_query(con, "per_class_table", run).to_pylist()
    stats_rows = named_query(con, "accuracy_vs_property", run).to_pylist()
    points = named_query(con, "property_points", run).to_pylist()
    subsets = named_query(con, "class_summaries", run).to_pylist()
    preds = predictions_for(con, run)
    paths = {r["image_id"]: r["path"] for r in named_query(con, "image_paths", run).to_pylist()}
    rng = np.random.default_rng(0)
    wrong, right = [p for p in preds if not p["correct"]], [p for p in preds if p["correct"]]
    sample = [wrong[i] for i in rng.permutation(len(wrong))[:sampled // 2]]
    sample += [right[i] for i in rng.permutation(len(right))[:sampled - len(sample)]]
    topk = [(img, p) for p in sample if (img := _decode(paths.get(p["image_id"], ""))) is not None]
    captioner = points[0]["captioner"] if points else None
    stats = {r["property"]: r for r in stats_rows if r["captioner"] == captioner}
    acc = np.mean([p["correct"] for p in preds]) if preds else float("nan")
    counts = named_query(con, "row_counts", run).to_pylist()[0]
    shown, title = shown_classes(per_class)  # many classes: the tables keep the worst and the best, as the chart
    if title:
        keep = {r["class_name"] for r in shown if r}
        table, subsets = [r for r in table if r["class_name"] in keep], [r for r in subsets if r["class_name"] in keep]
    every = html.escape(f"mapcap summaries --root {root} {run}")
    few = (f"<p>The {SHOWN_CLASSES} worst and {SHOWN_CLASSES} best of {len(per_class)} classes, as in the chart; "
           f"<code>{every}</code> lists every class.</p>" if title else "")
    model = named_query(con, "run_model", run).to_pylist()
    notes = result_notes(model[0]["model"], model[0]["pretrained"], [r["class_name"] for r in per_class]) \
        if model else []
    parts = [f"<h1>MapCap run <code>{html.escape(run)}</code></h1>",
             f"<p>{counts['images']} images, {len(preds)} classified ({counts['failed']} could not be read: "
             f'<a href="#failures">failures</a>), ensemble accuracy {acc:.3f}. Written '
             f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC from <code>{html.escape(root)}</code>.</p>",
             "".join(f'<p class="wrong banner"><b>Note:</b> {html.escape(n)}</p>' for n in notes),
             '<h2 id="accuracy">Per-class accuracy</h2>',
             _img(accuracy_bars(per_class), "per-class accuracy") if per_class else "<p>No predictions.</p>",
             '<h2 id="templates">Prompt templates</h2>',
             _img(template_bars(templates), "template accuracy") if templates else "<p>No templates.</p>",
             '<h2 id="topk">Top-k probabilities of sampled images</h2>',
             _img(topk_panels(topk), "top-k probabilities") if topk else "<p>No images could be read.</p>",
             '<h2 id="explanations">What CLIP looked at (misclassified first)</h2>',
             explanation_cards(con, run, preds, explained, variant),
             '<h2 id="methods">Relevancy methods compared</h2>',
             methods_section(named_query(con, "evaluations", run).to_pylist()),
             '<h2 id="caption-quality">Captions against the reference captions</h2>',
             caption_quality_section(named_query(con, "caption_quality", run).to_pylist()),
             '<h2 id="summaries">Per-class summaries</h2>', few,
             _table(table, ["class_name", "n", "accuracy", "top_confusion", "captioner", "summary",
                            "class_mention_share", "other_class_share", "on_object_share"]),
             "<h3>Correct vs misclassified</h3>",
             _table(subsets, ["class_name", "subset", "captioner", "n_images", "accuracy", "summary"]),
             '<h2 id="trends">Accuracy against summary properties</h2>',
             (_img(property_scatter([p for p in points if p["captioner"] == captioner], stats),
                   "accuracy vs properties") if points else "<p>No class summaries (stage summarize).</p>"),
             f"<pre>{html.escape(format_table(named_query(con, 'accuracy_vs_property', run)))}</pre>",
             concepts_section(con, run, _img),
             '<h2 id="failures">Images a stage could not use</h2>',
             failures_section(named_query(con, "failure_counts", run).to_pylist(),
                              named_query(con, "failure_list", run).to_pylist(), counts["images"], root, run)]
    doc = (f"<!doctype html><html><head><meta charset='utf-8'><title>MapCap {html.escape(run)}</title>"
           f"<style>{CSS}</style>{CHECK_JS}</head><body>{''.join(parts)}</body></html>")
    return run, doc


def report_path(run_id: str) -> str:
    """Where a run's report lies, relative to the results root."""
    return f"reports/{run_id}.html"


def write_report(root: str, run: str = "latest", out: str | None = None) -> str:
    """Write the report to `out`, or to <root>/reports/<run>.html; returns where."""
    run_id, doc = build_report(root, run)
    if out:
        folder, name = os.path.split(os.path.abspath(out)) if "://" not in out else out.rsplit("/", 1)
        return write_file(folder, name, doc.encode())
    return write_file(root, report_path(run_id), doc.encode())
