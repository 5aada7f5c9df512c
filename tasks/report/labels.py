"""Point labels that never overlap: each label takes the first free spot of a few around its point (free of the
labels placed before it and of the panel's edge); a label with no free spot is left off the plot and listed
instead, so a crowded panel stays readable at any size."""
from __future__ import annotations

from matplotlib.axes import Axes

OFFSETS = ((4, 3), (4, -10), (-4, 3), (-4, -10), (4, 12), (-4, 12), (4, -19), (-4, -19))  # points, around the dot
CHAR_W, LINE_H = 0.6, 1.2  # a label's box in font sizes: width per character, height
DOT = 3.0  # a dot's half-width in points: labels keep off every dot


def place_labels(ax: Axes, xs: list[float], ys: list[float], names: list[str], fontsize: float = 7) -> list[str]:
    """Annotate the points without overlaps; returns the names left unlabelled (for a note beside the plot)."""
    fig = ax.figure
    ax.autoscale_view()  # the data limits, hence where each point lands in pixels, before labels are placed
    to_px = fig.dpi / 72  # points -> pixels
    box = ax.get_window_extent()
    dots = [tuple(ax.transData.transform((x, y))) for x, y in zip(xs, ys)]
    r = DOT * to_px
    placed: list[tuple[float, float, float, float]] = [(x - r, y - r, x + r, y + r) for x, y in dots]  # no label on a dot
    left = []
    # the most distinctive points first: those far from the others get their labels before the crowd does
    order = sorted(range(len(names)), key=lambda i: -min((abs(dots[i][0] - dots[j][0]) + abs(dots[i][1] - dots[j][1])
                                                          for j in range(len(dots)) if j != i), default=0))
    for i in order:
        w, h = CHAR_W * fontsize * len(names[i]) * to_px, LINE_H * fontsize * to_px
        for dx, dy in OFFSETS:
            x0 = dots[i][0] + dx * to_px - (w if dx < 0 else 0)
            y0 = dots[i][1] + dy * to_px
            rect = (x0, y0, x0 + w, y0 + h)
            inside = box.x0 <= rect[0] and rect[2] <= box.x1 and box.y0 <= rect[1] and rect[3] <= box.y1
            if inside and not any(_overlap(rect, r) for r in placed):
                placed.append(rect)
                ax.annotate(names[i], (xs[i], ys[i]), xytext=(dx, dy), textcoords="offset points", fontsize=fontsize,
                            ha="right" if dx < 0 else "left")
                break
        else:
            left.append(names[i])
    return sorted(left)


def _overlap(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]
