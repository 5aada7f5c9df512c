"""Relevancy against the toy world's ground truth: pointing game, class discrimination, perturbation AUCs.

    python -m mapcap.toy.evaluate            # prints the table quoted in the README
    python -m mapcap.toy.evaluate --figure docs/toy_relevancy.png
"""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from mapcap.tasks.zeroshot import text_classifier
from mapcap.tasks.metrics.faithfulness import map_aucs, mass_share, pointing_grid, pointing_pixel, shared_images
from mapcap.tasks.models import LoadedModel
from mapcap.tasks.relevancy.methods import relevancy_maps
from mapcap.tasks.segment import SegmentConfig, region_iou, segment_map
from mapcap.tasks.templates import resolve_templates
from mapcap.toy.dataset import make_scene
from mapcap.toy.shapes import SHAPES

VARIANTS = (("chefer", 0), ("chefer", -1), ("legrad", -2), ("grad_eclip", None), ("gradient", None),
            ("random", None))  # every method the toy ViT supports


def _pixels(lm: LoadedModel, scenes) -> torch.Tensor:
    return torch.stack([lm.preprocess(Image.fromarray(s.image)) for s in scenes])


def evaluate_toy_relevancy(lm: LoadedModel, n_single: int = 64, n_pair: int = 48, seed: int = 2024,
                           variants=VARIANTS, templates: str = "simple", steps: int | None = None) -> list[dict]:
    """Rows (method, start_layer, metric, value, n) for every map variant."""
    rng = np.random.default_rng(seed)
    classes = SHAPES
    emb = text_classifier(lm, classes, resolve_templates(templates))[-1]  # (C, D)
    singles = [make_scene(rng, "single", SHAPES[i % len(SHAPES)]) for i in range(n_single)]
    pairs = [make_scene(rng, "pair", SHAPES[i % len(SHAPES)]) for i in range(n_pair)]
    pix = _pixels(lm, singles)
    label = torch.tensor([classes.index(s.label) for s in singles])
    with torch.no_grad():
        img = torch.nn.functional.normalize(lm.model.encode_image(pix.to(lm.spec.device)).float(), dim=-1)
        pred = (img @ emb.T).argmax(-1).cpu()
    correct = (pred == label).numpy()
    ppix = _pixels(lm, pairs)
    shared = shared_images(lm, pix, emb)  # the defaults: black for positive/negative, RISE's substrates
    rows = []
    for method, start in variants:
        maps = relevancy_maps(lm, method, pix, emb[label], start)  # true-class maps (B, g, g)
        grid_hits = [pointing_grid(m.numpy(), s.masks[0]) for m, s, ok in zip(maps, singles, correct) if ok]
        pix_hits = [pointing_pixel(m.numpy(), s.masks[0]) for m, s, ok in zip(maps, singles, correct) if ok]
        ious = []
        for m, s, ok in zip(maps, singles, correct):  # the top region's IoU with the object
            if ok:
                regions = segment_map(m.numpy(), s.masks[0].shape[::-1], SegmentConfig())
                ious.append(region_iou(regions[0], s.masks[0]) if regions else 0.0)
        pmaps = relevancy_maps(lm, method, pix, emb[pred], start)  # predicted-class maps for perturbation
        scores = map_aucs(lm, pix, pmaps, emb, pred, label, shared, steps)  # per image; RISE one step per cell
        shares = []
        for k in (0, 1):  # each object's class map: share of mass on its own object
            cls = torch.tensor([classes.index(s.objects[k].shape) for s in pairs])
            m2 = relevancy_maps(lm, method, ppix, emb[cls], start)
            shares += [mass_share(m.numpy(), s.masks[k], s.masks[1 - k]) for m, s in zip(m2, pairs)]
        n = int(correct.sum())
        rows += [
            {"method": method, "start_layer": start, "metric": "pointing_grid", "value": float(np.mean(grid_hits)), "n": n},
            {"method": method, "start_layer": start, "metric": "pointing_pixel", "value": float(np.mean(pix_hits)), "n": n},
            {"method": method, "start_layer": start, "metric": "region_iou_median", "value": float(np.median(ious)),
             "n": n},
            {"method": method, "start_layer": start, "metric": "region_iou_ge_0.5",
             "value": float(np.mean(np.array(ious) >= 0.5)), "n": n},
            {"method": method, "start_layer": start, "metric": "discrimination", "value": float(np.mean(shares)),
             "n": len(shares)},
        ] + [{"method": method, "start_layer": start, "metric": k, "value": float(v.mean()), "n": len(singles)}
             for k, v in scores.items()]
    return rows


def figure(lm: LoadedModel, path: str, seed: int = 5) -> None:
    """A grid of overlays: rows of toy scenes (two single, two pairs), columns of methods, for the README."""
    from mapcap.tasks.report.overlay import overlay_row

    rng = np.random.default_rng(seed)
    scenes = [make_scene(rng, "single", "star"), make_scene(rng, "single", "ring"),
              make_scene(rng, "pair", "triangle"), make_scene(rng, "pair", "cross")]
    emb = text_classifier(lm, SHAPES, resolve_templates("simple"))[-1]
    rows = []
    for s in scenes:
        pix = _pixels(lm, [s])
        cls = torch.tensor([SHAPES.index(s.label)])
        maps = [relevancy_maps(lm, m, pix, emb[cls], st)[0].numpy() for m, st in VARIANTS]
        titles = [f"{m}" + ("" if st is None else f"@{st}") for m, st in VARIANTS]
        img = Image.fromarray(s.image)
        rows.append(overlay_row(img, [None] + maps, [f"{s.label} (true class)"] + titles, tile=128))
    canvas = Image.new("RGB", (rows[0].width, sum(r.height for r in rows)), "white")
    for i, r in enumerate(rows):
        canvas.paste(r, (0, i * r.height))
    canvas.save(path)


def main() -> None:
    from mapcap.storage.query import format_table
    import pyarrow as pa
    from mapcap.tasks.models import load_model, resolve_spec

    import sys

    lm = load_model(resolve_spec("toy", "toy", "cpu", "fp32"))
    if len(sys.argv) > 2 and sys.argv[1] == "--figure":
        figure(lm, sys.argv[2])
        return
    rows = evaluate_toy_relevancy(lm)
    table = {}
    for r in rows:
        key = f"{r['method']}" + ("" if r["start_layer"] is None else f" (start {r['start_layer']})")
        table.setdefault(key, {"method": key})[r["metric"]] = r["value"]
    print(format_table(pa.Table.from_pylist(list(table.values()))))


if __name__ == "__main__":
    main()
