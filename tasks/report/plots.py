"""The report's figures (matplotlib, Agg), each returned as PNG bytes to be inlined."""
from __future__ import annotations

import io
import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from PIL import Image  # noqa: E402
from mapcap.tasks.report.labels import place_labels


def _png(fig, laid_out: bool = False) -> bytes:
    """PNG bytes; `laid_out`: the figure ran tight_layout already (cropping again would draw it a second time)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches=None if laid_out else "tight")
    plt.close(fig)
    return buf.getvalue()


SHOWN_CLASSES = 20  # classes drawn at each end of the per-class bars of a dataset with many classes


def shown_classes(rows: list[dict], shown: int = SHOWN_CLASSES) -> tuple[list[dict | None], str]:
    """The per-class rows to draw, worst first, and the chart's title: every class, or with many classes (ImageNet's
    1,000 drew a 21,000-pixel-tall picture in 7 s) the `shown` worst and best with a None between them."""
    rows = sorted(rows, key=lambda r: (r["accuracy"], r["class_name"]))
    if len(rows) <= 2 * shown + 5:
        return rows, ""
    return rows[:shown] + [None] + rows[-shown:], (f"the {shown} worst and {shown} best of {len(rows)} classes "
                                                   "(all of them: mapcap classes)")


def accuracy_bars(rows: list[dict]) -> bytes:
    """Per-class accuracy, worst first, with each class's image count."""
    drawn, title = shown_classes(rows)
    fig, ax = plt.subplots(figsize=(7, 0.3 * len(drawn) + 1))
    names = [r["class_name"] if r else f"… {len(rows) - len(drawn) + 1} classes …" for r in drawn]
    ax.barh(names, [r["accuracy"] if r else 0.0 for r in drawn], color="#4c72b0")
    for i, r in enumerate(drawn):
        if r is None:
            continue
        ax.text(min(r["accuracy"], 0.98), i, f" {r['accuracy']:.2f} (n={r['n']})", va="center",
                ha="right" if r["accuracy"] > 0.5 else "left", color="white" if r["accuracy"] > 0.5 else "black",
                fontsize=8)
    ax.set_xlim(0, 1)
    ax.set_xlabel("accuracy (template ensemble)")
    if title:
        ax.set_title(title, fontsize=9)
    return _png(fig)


def template_bars(rows: list[dict]) -> bytes:
    """Accuracy per prompt template, the ensemble highlighted."""
    rows = sorted(rows, key=lambda r: r["accuracy"])
    fig, ax = plt.subplots(figsize=(7, 0.3 * len(rows) + 1))
    ax.barh([r["template"][:60] for r in rows], [r["accuracy"] for r in rows],
            color=["#dd8452" if r["template"] == "ensemble" else "#55a868" for r in rows])
    lo = min(r["accuracy"] for r in rows)
    ax.set_xlim(max(0.0, lo - 0.1), 1)
    ax.set_xlabel("accuracy")
    return _png(fig)


def topk_panels(items: list[tuple[Image.Image, dict]]) -> bytes:
    """Image and its top-k probability bars, one row per sampled image (true class in green, wrong in red)."""
    fig, axes = plt.subplots(len(items), 2, figsize=(7, 1.6 * len(items)), squeeze=False,
                             gridspec_kw={"width_ratios": [1, 2.2]})
    for (img, p), (ax_i, ax_b) in zip(items, axes):
        ax_i.imshow(img)
        ax_i.set_axis_off()
        ax_i.set_title(f"true: {p['label']}", fontsize=8)
        labels, probs = p["topk_labels"][::-1], p["topk_probs"][::-1]
        ax_b.barh(range(len(labels)), probs,
                  color=["#55a868" if lab == p["label"] else ("#c44e52" if lab == p["pred"] else "#8c8c8c")
                         for lab in labels])
        ax_b.set_yticks(range(len(labels)), labels, fontsize=8)
        ax_b.set_xlim(0, 1)
        ax_b.tick_params(axis="x", labelsize=7)
    return _png(fig)


def constant_properties(points: list[dict]) -> list[str]:
    """Properties with one value for every class: nothing to correlate (left out of the plots, said once)."""
    values: dict[str, set] = {}
    for p in points:
        values.setdefault(p["property"], set()).add(p["value"])
    return sorted(k for k, v in values.items() if len(v) < 2)


def unlabelled_note(names: list[str], width: int = 60) -> str:
    """'no room to label: a, b, c +N' in about `width` characters (a panel's width at the report's font)."""
    shown: list[str] = []
    for n in names:
        if len(", ".join(shown + [n])) > width - 25:
            break
        shown.append(n)
    rest = len(names) - len(shown)
    return "no room to label: " + ", ".join(shown) + (f" +{rest} more" if rest else "")


def property_scatter(points: list[dict], stats: dict[str, dict]) -> bytes:
    """Per-class accuracy against each summary property, one panel each, titled with r, ρ and the slope; labels
    never overlap (labels.py: a class without room is listed under its panel); constant properties left out."""
    constant = set(constant_properties(points))
    props = sorted({p["property"] for p in points} - constant)
    cols, nrows = 3, max(1, math.ceil(len(props) / 3))
    fig, axes = plt.subplots(nrows, cols, figsize=(10, 3.3 * nrows), squeeze=False)
    # a fixed grid of equal panels: margins set once instead of measuring every label (tight_layout was half the
    # report's time); room for the two-line titles, the tick labels and the unlabelled list
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.9 / (3.3 * nrows), top=1 - 0.75 / (3.3 * nrows),
                        hspace=0.75, wspace=0.25)
    for ax, prop in zip(axes.flat, props):
        pts = [p for p in points if p["property"] == prop]
        xs, ys = [p["value"] for p in pts], [p["accuracy"] for p in pts]
        ax.scatter(xs, ys, color="#4c72b0", s=14)
        s = stats.get(prop, {})
        fmt = (lambda v: "–" if v is None or v != v else f"{v:+.2f}")  # noqa: E731 (None and NaN print as –)
        ax.set_title(f"{prop}\nr {fmt(s.get('pearson'))}  ρ {fmt(s.get('spearman'))}  "
                     f"slope {fmt(s.get('slope'))}  n {s.get('n', len(pts))}", fontsize=8)
        ax.set_ylabel("accuracy", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.margins(0.15)
        left = place_labels(ax, xs, ys, [p["class_name"] for p in pts])
        if left:
            ax.text(0, -0.22, unlabelled_note(left), transform=ax.transAxes, fontsize=6, color="#555555", va="top")
    for ax in list(axes.flat)[len(props):]:
        ax.set_axis_off()
    if constant:
        fig.text(0.01, 0.005, "left out, the same for every class: " + ", ".join(sorted(constant)), fontsize=7,
                 color="#555555")
    return _png(fig, laid_out=True)


def mi_curves(rows: list[dict]) -> bytes:
    """Mean MI curve per class (visual concepts removed by importance), curves zero-padded to the longest."""
    by_class: dict[str, list[list[float]]] = {}
    for r in rows:
        by_class.setdefault(r["label"], []).append(list(r["mi_curve"]))
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    for cls, curves in sorted(by_class.items()):
        n = max(len(c) for c in curves)
        mean = [sum(c[i] if i < len(c) else 0.0 for c in curves) / len(curves) for i in range(n)]
        ax.plot(range(n), mean, marker="o", ms=3, label=cls)
    ax.set_xlabel("visual concepts removed (most important first)", fontsize=8)
    ax.set_ylabel("MI (nats)", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return _png(fig, laid_out=True)
