"""The end-of-run summary read back through DuckDB (what the flow shows as a Prefect artifact)."""
from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from mapcap.storage.query import connect, format_markdown, named_query


def run_summary(root: str, run_id: str) -> dict:
    con = connect(root)
    per_class = named_query(con, "per_class_accuracy", run_id)
    counts = named_query(con, "row_counts", run_id).to_pylist()[0]
    templates = named_query(con, "per_template_accuracy", run_id)
    ens = [r for r in templates.to_pylist() if r["template"] == "ensemble"]
    md = (f"# MapCap run `{run_id}`\n\nresults root: `{root}`\n\n"
          f"images {counts['images']}, predicted {counts['predicted']}, failed {counts['failed']}\n\n"
          f"## Per-class accuracy (template ensemble)\n\n{format_markdown(per_class)}\n\n"
          f"## Per-template accuracy\n\n{format_markdown(templates)}\n")
    table = [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items() if v is not None}
             for row in named_query(con, "per_class_table", run_id).to_pylist()]
    return {"markdown": md, "accuracy": ens[0]["accuracy"] if ens else None, "n_failures": counts["failed"],
            "counts": counts, "per_class_table": table}


@task(name="run-summary", cache_policy=NO_CACHE)
def run_summary_task(root: str, run_id: str) -> dict:
    return run_summary(root, run_id)
