"""DuckDB over the Parquet root: one view per table, and the ready queries users run.

DuckDB is opened in memory and only reads; tasks write Parquet (DuckDB allows one writer per database file).
Remote roots (s3://, ...) are read through fsspec, as DuckDB's httpfs extension is not available everywhere.
"""
from __future__ import annotations

import duckdb
import pyarrow as pa

from mapcap.storage.concept_queries import CONCEPT_QUERIES
from mapcap.storage.schemas import TABLES, schema_for
from mapcap.storage.layout import list_files, visible
from mapcap.storage.writer import filesystem


class QueryError(RuntimeError):
    """A query failed; the message names the SQL and what to check."""


def _protocol(fs) -> str:
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return "" if protocol in ("file", "local") else f"{protocol}://"


def _sql_list(paths: list[str]) -> str:
    return "[" + ", ".join("'" + p.replace("'", "''") + "'" for p in paths) + "]"


def connect(root: str) -> duckdb.DuckDBPyConnection:
    """In-memory DuckDB with a view per MapCap table over the files readers see under `<root>/<table>/run=*/`
    (storage/layout.py). The list is taken now: a compaction later does not change what this connection reads
    (open a new one after it). Every view has every column of the table's schema: a column that files written
    before it existed lack reads as null."""
    fs, base = filesystem(root)
    prefix = _protocol(fs)
    con = duckdb.connect(":memory:")
    if prefix:
        con.register_filesystem(fs)
    for table in TABLES:
        files = [prefix + f for f in visible(fs, list_files(fs, base, table))]
        con.register(f"_empty_{table}", schema_for(table).empty_table())
        sql = f"CREATE VIEW {table} AS SELECT * FROM _empty_{table}"  # no run wrote this table yet
        if files:
            sql += (f" UNION ALL BY NAME SELECT * FROM read_parquet({_sql_list(files)}, union_by_name=true, "
                    f"hive_partitioning=false)")
        try:
            con.execute(sql)
        except duckdb.Error as e:
            raise QueryError(f"could not open table {table!r} under {root}: {e}. A corrupt shard file can be "
                             f"found with `mapcap check --root {root}`; delete it and rerun that run.") from e
    return con


def _execute(con: duckdb.DuckDBPyConnection, sql: str, params=None) -> pa.Table:
    """Run SQL into an Arrow table (DuckDB ≥ 2 relations have to_arrow_table; 1.x fetch_arrow_table)."""
    rel = con.sql(sql, params=params or None)
    if rel is None:  # a statement without a result (CREATE, SET ...)
        return pa.table({})
    fetch = getattr(rel, "to_arrow_table", None) or rel.fetch_arrow_table
    return fetch()


def run_sql(con: duckdb.DuckDBPyConnection, sql: str, params: list | None = None) -> pa.Table:
    try:
        return _execute(con, sql, params)
    except duckdb.Error as e:
        raise QueryError(f"query failed: {e}\nSQL: {sql.strip()}") from e


# Ready queries. `$run` is the run id; 'latest' picks the newest run.
LATEST_RUN = "SELECT run_id FROM runs ORDER BY started_at DESC LIMIT 1"

QUERIES: dict[str, str] = {
    "per_class_accuracy": """
        SELECT label AS class_name, count(*) AS n, avg(correct::INT) AS accuracy,
               avg(label_prob) AS mean_label_prob
        FROM predictions WHERE run_id = $run AND template = 'ensemble'
        GROUP BY label ORDER BY accuracy, class_name""",
    "confusion_pairs": """
        SELECT label AS class_name, pred AS predicted_as, count(*) AS n
        FROM predictions WHERE run_id = $run AND template = 'ensemble' AND NOT correct
        GROUP BY label, pred ORDER BY n DESC, class_name, predicted_as""",
    "per_template_accuracy": """
        SELECT template, count(*) AS n, avg(correct::INT) AS accuracy, avg(label_prob) AS mean_label_prob
        FROM predictions WHERE run_id = $run
        GROUP BY template ORDER BY accuracy DESC, template""",
    "runs_compared": """
        SELECT r.run_id,
               -- a running row not rewritten for 5 heartbeats (60 s each): its process was killed or lost
               CASE WHEN r.status = 'running' AND r.updated_at < now() - INTERVAL 5 MINUTE THEN 'lost'
                    ELSE r.status END AS status,
               r.started_at, r.model, r.pretrained, r.dataset, r.n_images, r.n_failures,
               p.accuracy, r.duration_s, r.n_shards_done || '/' || r.n_shards AS shards, r.updated_at
        FROM runs r LEFT JOIN (
            SELECT run_id, avg(correct::INT) AS accuracy FROM predictions WHERE template = 'ensemble'
            GROUP BY run_id) p USING (run_id)
        ORDER BY r.started_at""",
    "evaluations": """
        SELECT method, start_layer,
               max(value) FILTER (metric = 'pointing_grid') AS pointing_grid,
               max(value) FILTER (metric = 'pointing_pixel') AS pointing_pixel,
               max(value) FILTER (metric = 'positive_auc') AS positive_auc,
               max(value) FILTER (metric = 'negative_auc') AS negative_auc,
               max(value) FILTER (metric = 'deletion_auc') AS deletion_auc,
               max(value) FILTER (metric = 'insertion_auc') AS insertion_auc,
               max(value) FILTER (metric = 'discrimination') AS discrimination, max(n) AS n
        FROM evaluations WHERE run_id = $run AND captioner IS NULL GROUP BY ALL ORDER BY method, start_layer""",
    "caption_quality": """
        SELECT captioner,
               CASE WHEN method IS NULL THEN 'image'
                    ELSE 'true-class top region (' || method || coalesce(' @' || start_layer, '') || ')' END
                   AS captioned,
               max(n) AS n,
               max(value) FILTER (metric = 'bleu_1') AS bleu_1, max(value) FILTER (metric = 'bleu_4') AS bleu_4,
               max(value) FILTER (metric = 'cider_d') AS cider_d,
               max(value) FILTER (metric = 'clipscore') AS clipscore,
               max(value) FILTER (metric = 'ref_clipscore') AS ref_clipscore
        FROM evaluations WHERE run_id = $run AND captioner IS NOT NULL
        GROUP BY captioner, method, start_layer ORDER BY method NULLS FIRST, captioner""",
    "class_captions": """
        SELECT p.label AS class_name, c.captioner, c.text AS top_caption, count(*) AS n,
               avg(c.clipscore) AS mean_clipscore
        FROM captions c JOIN predictions p USING (run_id, image_id)
        WHERE c.run_id = $run AND p.template = 'ensemble' AND c.region_id = 0 AND c.target = 'label'
        GROUP BY p.label, c.captioner, c.text QUALIFY row_number() OVER (PARTITION BY p.label, c.captioner ORDER BY count(*) DESC,
                                                c.text) = 1
        ORDER BY class_name, c.captioner""",
    "per_class_table": """
        WITH acc AS (SELECT label AS class_name, count(*) AS n, avg(correct::INT) AS accuracy
                     FROM predictions WHERE run_id = $run AND template = 'ensemble' GROUP BY label),
             conf AS (SELECT class_name, arg_max(pred, n) AS top_confusion, max(n) AS n_confused
                      FROM (SELECT label AS class_name, pred, count(*) AS n FROM predictions
                            WHERE run_id = $run AND template = 'ensemble' AND NOT correct GROUP BY label, pred)
                      GROUP BY class_name)
        SELECT acc.class_name, acc.n, acc.accuracy, conf.top_confusion, conf.n_confused, s.captioner,
               s.summary_text AS summary, s.n_captions, s.n_distinct, s.diversity, s.class_similarity,
               s.class_mention_share, s.other_class_share, s.mean_clipscore, s.mass_outside_top, s.on_object_share
        FROM acc LEFT JOIN conf USING (class_name)
        LEFT JOIN (SELECT * FROM class_summaries WHERE run_id = $run AND subset = 'all') s USING (class_name)
        ORDER BY acc.accuracy, acc.class_name, s.captioner""",
    "class_summaries": """
        SELECT class_name, subset, captioner, n_images, accuracy, summary_text AS summary, n_captions,
               class_mention_share, other_class_share
        FROM class_summaries WHERE run_id = $run ORDER BY class_name, captioner, subset""",
    "property_points": """
        SELECT captioner, property, class_name, value, accuracy FROM (
            UNPIVOT (SELECT class_name, captioner, accuracy, n_distinct::DOUBLE AS n_distinct, diversity,
                            class_similarity, class_mention_share, other_class_share, mean_clipscore,
                            mass_outside_top, on_object_share
                     FROM class_summaries WHERE run_id = $run AND subset = 'all')
            ON n_distinct, diversity, class_similarity, class_mention_share, other_class_share, mean_clipscore,
               mass_outside_top, on_object_share INTO NAME property VALUE value)
        ORDER BY captioner, property, class_name""",
    "accuracy_vs_property": """
        WITH pts AS (
            SELECT captioner, property, class_name, value, accuracy FROM (
                UNPIVOT (SELECT class_name, captioner, accuracy, n_distinct::DOUBLE AS n_distinct, diversity,
                                class_similarity, class_mention_share, other_class_share, mean_clipscore,
                                mass_outside_top, on_object_share
                         FROM class_summaries WHERE run_id = $run AND subset = 'all' AND accuracy IS NOT NULL)
                ON n_distinct, diversity, class_similarity, class_mention_share, other_class_share, mean_clipscore,
                   mass_outside_top, on_object_share INTO NAME property VALUE value)),
             rn AS (SELECT *, row_number() OVER (PARTITION BY captioner, property ORDER BY accuracy) AS rna,
                              row_number() OVER (PARTITION BY captioner, property ORDER BY value) AS rnv FROM pts),
             rk AS (SELECT *, avg(rna) OVER (PARTITION BY captioner, property, accuracy) AS ra,
                              avg(rnv) OVER (PARTITION BY captioner, property, value) AS rv FROM rn)
        SELECT captioner, property, count(*) AS n, corr(accuracy, value) AS pearson, corr(ra, rv) AS spearman,
               regr_slope(accuracy, value) AS slope, regr_intercept(accuracy, value) AS intercept
        FROM rk GROUP BY captioner, property
        HAVING count(DISTINCT value) > 1  -- a property the same for every class correlates with nothing
        ORDER BY captioner, abs(corr(accuracy, value)) DESC NULLS LAST, property""",
    "templates_across_runs": """
        SELECT r.model, r.pretrained, p.template, count(DISTINCT p.run_id) AS runs, count(*) AS n,
               avg(p.correct::INT) AS accuracy, avg(p.label_prob) AS mean_label_prob
        FROM predictions p JOIN runs r USING (run_id)
        GROUP BY r.model, r.pretrained, p.template ORDER BY r.model, r.pretrained, accuracy DESC, p.template""",
    "models_across_runs": """
        SELECT r.dataset, r.model, r.pretrained, count(DISTINCT r.run_id) AS runs, avg(p.accuracy) AS accuracy,
               min(p.accuracy) AS min_accuracy, max(p.accuracy) AS max_accuracy, max(r.started_at) AS last_run
        FROM runs r JOIN (SELECT run_id, avg(correct::INT) AS accuracy FROM predictions
                          WHERE template = 'ensemble' GROUP BY run_id) p USING (run_id)
        GROUP BY r.dataset, r.model, r.pretrained ORDER BY r.dataset, accuracy DESC""",
    "accuracy_over_time": """
        SELECT r.dataset, r.model, r.pretrained, r.run_id, r.started_at, p.n, p.accuracy,
               p.accuracy - lag(p.accuracy) OVER (PARTITION BY r.dataset, r.model, r.pretrained
                                                  ORDER BY r.started_at) AS change
        FROM runs r JOIN (SELECT run_id, count(*) AS n, avg(correct::INT) AS accuracy FROM predictions
                          WHERE template = 'ensemble' GROUP BY run_id) p USING (run_id)
        WHERE r.status = 'finished'
        ORDER BY r.dataset, r.model, r.pretrained, r.started_at""",
    "image_paths": """SELECT image_id, path FROM images WHERE run_id = $run ORDER BY image_id""",
    "run_model": """SELECT model, pretrained FROM runs WHERE run_id = $run ORDER BY started_at DESC LIMIT 1""",
    "failure_counts": """
        SELECT stage, error_type, count(*) AS n, min(path) AS example FROM failures WHERE run_id = $run
        GROUP BY stage, error_type ORDER BY n DESC, stage, error_type""",
    "failure_list": """
        SELECT stage, path, error_type, error FROM failures WHERE run_id = $run ORDER BY stage, path LIMIT 200""",
    "run_datasets": """SELECT DISTINCT dataset FROM runs WHERE dataset IS NOT NULL ORDER BY 1""",
    "duplicate_files": """
        SELECT coalesce(sum(n), 0)::BIGINT AS n_identical, coalesce(sum(n - 1), 0)::BIGINT AS n_duplicates,
               count(*) AS n_groups
        FROM (SELECT content_id, count(*) AS n FROM images WHERE run_id = $run AND content_id IS NOT NULL
              GROUP BY content_id HAVING count(*) > 1)""",
    "row_counts": """
        SELECT (SELECT count(*) FROM images WHERE run_id = $run) AS images,
               (SELECT count(*) FROM predictions WHERE run_id = $run AND template = 'ensemble') AS predicted,
               (SELECT count(*) FROM failures WHERE run_id = $run AND stage IN ('classify', 'load')) AS failed""",
}

QUERIES.update(CONCEPT_QUERIES)


def resolve_run(con: duckdb.DuckDBPyConnection, run: str) -> str:
    """A run id as given, or the newest run for 'latest'; a clear error for an unknown run."""
    if run == "latest":
        rows = run_sql(con, LATEST_RUN).column("run_id").to_pylist()
        if not rows:
            raise QueryError("no runs under this root yet; run `mapcap demo` or `mapcap run DATASET` first")
        return rows[0]
    known = run_sql(con, "SELECT DISTINCT run_id FROM runs ORDER BY 1").column("run_id").to_pylist()
    if run not in known:
        raise QueryError(f"unknown run {run!r}; runs under this root: {known or 'none'}")
    return run


def named_query(con: duckdb.DuckDBPyConnection, name: str, run: str | None = None) -> pa.Table:
    if name not in QUERIES:
        raise QueryError(f"unknown query {name!r}; ready queries are {sorted(QUERIES)}")
    sql = QUERIES[name]
    params = {"run": resolve_run(con, run or "latest")} if "$run" in sql else None
    try:
        return _execute(con, sql, params)
    except duckdb.Error as e:
        raise QueryError(f"query {name!r} failed: {e}") from e


def rows_for_images(con: duckdb.DuckDBPyConnection, table: str, run: str, image_ids: list[str]) -> list[dict]:
    """Every row of `table` for these images of a run (the report reads a few images, not whole runs)."""
    if table not in TABLES:
        raise QueryError(f"unknown table {table!r}; MapCap tables are {TABLES}")
    return run_sql(con, f"SELECT * FROM {table} WHERE run_id = ? AND list_contains(?, image_id)",
                   [run, image_ids]).to_pylist()


def predictions_for(con: duckdb.DuckDBPyConnection, run: str, template: str = "ensemble",
                    class_name: str | None = None, correct: bool | None = None) -> list[dict]:
    """One template's predictions of a run, optionally of one class and only right or only wrong ones."""
    sql = """SELECT image_id, label, pred, correct, pred_prob, label_prob, topk_labels, topk_probs
             FROM predictions WHERE run_id = ? AND template = ?
               AND (?::VARCHAR IS NULL OR label = ?) AND (?::BOOLEAN IS NULL OR correct = ?)
             ORDER BY image_id"""
    return run_sql(con, sql, [run, template, class_name, class_name, correct, correct]).to_pylist()


def format_table(table: pa.Table, max_rows: int = 200, ends: int | None = None) -> str:
    """A plain-text table for terminals and logs: the first `max_rows` rows, or with `ends` the first and the last
    `ends` rows of a longer table (a table ordered worst first then shows the worst and the best)."""
    cols, n = table.column_names, table.num_rows
    cut = ends is not None and n > 2 * ends + 1
    parts = [table.slice(0, ends), table.slice(n - ends)] if cut else [table.slice(0, max_rows)]
    rows = [[_fmt(v) for v in r.values()] for part in parts for r in part.to_pylist()]
    widths = [max([len(c)] + [len(r[i]) for r in rows]) for i, c in enumerate(cols)]
    line = "  ".join(c.ljust(w) for c, w in zip(cols, widths))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(v.ljust(w) for v, w in zip(r, widths)) for r in rows]
    if cut:
        out.insert(2 + ends, f"... {n - 2 * ends} more rows ...")
    elif n > max_rows:
        out.append(f"... {n - max_rows} more rows")
    return "\n".join(out)


def format_markdown(table: pa.Table) -> str:
    cols = table.column_names
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    out += ["| " + " | ".join(_fmt(v) for v in r.values()) + " |" for r in table.to_pylist()]
    return "\n".join(out)


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4f}"
    if v is None:
        return ""
    return str(v)
