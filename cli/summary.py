"""What `mapcap run` and `mapcap demo` print when the flow returns: the run's figures read back through DuckDB."""
from __future__ import annotations

from typing import Any

CAPTION_QUALITY_TITLE = "captions against the reference captions (BLEU and CIDEr-D as coco-caption computes them)"
PER_CLASS_ENDS = 10  # a run's summary prints this many classes at each end of its per-class tables


def print_table(table, ends: int | None = None) -> None:
    from mapcap.storage.query import format_table

    print(format_table(table, ends=ends))


def plural(n: int, one: str, many: str) -> str:
    """`1 group`, `2 groups`: the count with the word that agrees with it."""
    return f"{n} {one if n == 1 else many}"


def duplicates_line(dups: dict[str, int]) -> str:
    """The summary's line on byte-identical files (a row of the `duplicate_files` query with identical files)."""
    groups, copies = dups["n_groups"], dups["n_duplicates"]
    beyond = "the first" if groups == 1 else "the first of each"
    return (f"{plural(dups['n_identical'], 'file is', 'files are')} byte-identical to another "
            f"({plural(groups, 'group', 'groups')}, {plural(copies, 'copy', 'copies')} beyond {beyond}); each "
            f"counts as an image of its own")


def print_run_summary(root: str, result: dict[str, Any]) -> None:
    """Counts, skipped stages, what could not be read, per-class and per-template accuracy, captions, map
    evaluations, description-based accuracy and mutual knowledge; long per-class tables by their two ends."""
    from mapcap.storage.query import connect, named_query

    con, run = connect(root), result["run_id"]
    print(f"run {run}: {result['n_images']} images, {result['n_failures']} failed, "
          f"accuracy (template ensemble) {result['accuracy']:.4f}, {result['shards_skipped']} shard(s) skipped")
    print(f"results: {root}" + (f"\nreport: {result['report']}" if result.get("report") else ""))
    dups = named_query(con, "duplicate_files", run).to_pylist()[0]
    if dups["n_identical"]:
        print(duplicates_line(dups))
    for note in result.get("notes", []):
        print(f"note: {note}")
    by_reason: dict[str, list[str]] = {}  # each reason once (no concept bank turns two features off)
    for what, why in result.get("skipped_stages", []):
        by_reason.setdefault(why, []).append(what)
    for why, whats in by_reason.items():
        print(f"skipped {', '.join(whats)}: {why}")
    failures = named_query(con, "failure_counts", run)
    if failures.num_rows:
        print(f"\nimages a stage could not use (each with its error: mapcap sql --root {root} "
              f"\"SELECT path, stage, error FROM failures WHERE run_id = '{run}'\"):")
        print_table(failures)
    per_class = named_query(con, "per_class_accuracy", run)
    every = f"; all {per_class.num_rows}: mapcap classes --root {root} {run}" \
        if per_class.num_rows > 2 * PER_CLASS_ENDS + 1 else ""
    print(f"\nper-class accuracy, worst first (DuckDB over the Parquet results{every}):")
    print_table(per_class, PER_CLASS_ENDS)
    print("\nper-template accuracy:")
    print_table(named_query(con, "per_template_accuracy", run))
    captions = named_query(con, "class_captions", run)
    if captions.num_rows:
        print("\nmost frequent caption of the true class's top region, per class:")
        print_table(captions, PER_CLASS_ENDS)
    quality = named_query(con, "caption_quality", run)
    if quality.num_rows:
        print(f"\n{CAPTION_QUALITY_TITLE}:")
        print_table(quality)
    evaluation = named_query(con, "evaluations", run)
    if evaluation.num_rows:
        print("\nrelevancy maps against ground truth and perturbation (AUC: positive/deletion lower is better):")
        print_table(evaluation)
    desc = [r for r in named_query(con, "descriptors_vs_names", run).to_pylist()
            if r["class_name"] == "(all)" and r["descriptors_accuracy"] is not None]
    if desc:
        print(f"\ndescription-based classification: accuracy {desc[0]['descriptors_accuracy']:.4f} "
              f"(class-name templates {desc[0]['names_accuracy']:.4f}); per class: mapcap concepts --root {root}")
    mk = named_query(con, "mutual_knowledge_vs_accuracy", run)
    if mk.num_rows:
        print("\nmutual knowledge of the two encoders against per-class accuracy:")
        print_table(mk)
    print(f"\nmore: mapcap sql --root {root} \"SELECT * FROM predictions LIMIT 5\"")
