"""The report's section on textual concepts: description-based accuracy and mutual knowledge."""
from __future__ import annotations

import html

from mapcap.storage.query import format_table, named_query, run_sql
from mapcap.tasks.report.plots import mi_curves, property_scatter

MEASURES = {"mi": "mean MI (nats)", "auc": "mean AUC of the MI curve"}


def concepts_section(con, run: str, img) -> str:
    """HTML of the section; `img(png, alt)` inlines a figure."""
    by_class = named_query(con, "mutual_knowledge_by_class", run).to_pylist()
    desc = named_query(con, "descriptors_vs_names", run)
    parts = ['<h2 id="concepts">Textual concepts and mutual knowledge</h2>']
    if any(r["descriptors_accuracy"] is not None for r in desc.to_pylist()):
        parts += ["<h3>Description-based classification vs class-name templates</h3>",
                  f"<pre>{html.escape(format_table(desc))}</pre>"]
    if not by_class:
        return "".join(parts) + "<p>No concepts in this run (stage concepts, with a concept bank).</p>"
    stats = {MEASURES[r["measure"]]: r for r in named_query(con, "mutual_knowledge_vs_accuracy", run).to_pylist()}
    points = [{"property": MEASURES[m], "class_name": r["class_name"], "value": r[f"mean_{m}"],
               "accuracy": r["accuracy"]} for r in by_class for m in MEASURES]
    curves = run_sql(con, "SELECT label, mi_curve FROM mutual_knowledge WHERE run_id = $run",
                     {"run": run}).to_pylist()
    parts += ["<h3>Per-class mutual knowledge against accuracy</h3>",
              img(property_scatter(points, stats), "MI and AUC against accuracy"),
              "<h3>MI as visual concepts are removed</h3>", img(mi_curves(curves), "MI curves"),
              f"<pre>{html.escape(format_table(named_query(con, 'mutual_knowledge_by_class', run)))}</pre>",
              "<p>MI: the authors' estimator over shared descriptors (ln N·M·c for c shared); AUC: mean of the MI "
              "curve; deletion / insertion: mean predicted-class probability as the regions of the top concepts "
              "are removed / restored; AccDrop / AccInc: accuracy change after removing / keeping only the top "
              "concept's regions (definitions in tasks/concepts.py).</p>"]
    return "".join(parts)


def runs_figure(con) -> bytes:
    """PNG: mean MI and AUC of every run against its accuracy, with the correlations across runs."""
    runs = named_query(con, "mutual_knowledge_runs").to_pylist()
    stats = {MEASURES[r["measure"]]: r for r in named_query(con, "mutual_knowledge_runs_vs_accuracy").to_pylist()}
    points = [{"property": MEASURES[m], "class_name": r["run_id"], "value": r[f"mean_{m}"], "accuracy": r["accuracy"]}
              for r in runs for m in MEASURES]
    return property_scatter(points, stats)
