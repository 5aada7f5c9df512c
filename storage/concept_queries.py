"""Ready DuckDB queries over the concepts stage's tables (`concepts`, `mutual_knowledge`) and the
description-based rows of `predictions` (template 'descriptors'); merged into storage.query.QUERIES.

Mutual knowledge over a class or a run comes two ways: `mean_auc`, the mean of the images' own AUCs (each the
mean of its MI curve), and `curve_auc`, the authors' dataset-level figure (Sammani & Deligiannis, `get_mean_scores`
then `get_statistics`): the images' curves zero-padded to the longest, averaged point by point, and the AUC (the
mean of its points) of that mean curve. They agree only when every image has as many visual concepts."""

# the authors' AUC of the zero-padded mean curve: sum of every point / (images × longest curve)
_CURVE_AUC = "sum(list_sum({p}mi_curve)) / (count(*) * max(len({p}mi_curve))) AS curve_auc"

_PER_CLASS_MK = """
    SELECT label AS class_name, count(*) AS n, avg(correct::INT) AS accuracy, avg(mi) AS mean_mi,
           avg(auc) AS mean_auc, """ + _CURVE_AUC.format(p="") + """,
           avg(n_shared) AS mean_shared, avg(deletion) AS deletion, avg(insertion) AS insertion,
           avg(correct::INT) - avg(correct_after_drop::INT) AS acc_drop,
           avg(correct_after_insert::INT) - avg(correct_empty::INT) AS acc_inc,
           avg(top_visual_of_label::INT) FILTER (correct) AS top_visual_true
    FROM mutual_knowledge WHERE run_id = $run GROUP BY label"""

# Spearman's rho as the Pearson correlation of tie-averaged ranks
_CORRELATE = """
    pts AS (SELECT {group} AS grp, measure, value, accuracy FROM (
                UNPIVOT ({points}) ON mean_mi, mean_auc INTO NAME measure VALUE value)),
    rn AS (SELECT *, row_number() OVER (PARTITION BY measure ORDER BY accuracy) AS rna,
                     row_number() OVER (PARTITION BY measure ORDER BY value) AS rnv FROM pts),
    rk AS (SELECT *, avg(rna) OVER (PARTITION BY measure, accuracy) AS ra,
                     avg(rnv) OVER (PARTITION BY measure, value) AS rv FROM rn)
    SELECT replace(measure, 'mean_', '') AS measure, count(*) AS n, corr(accuracy, value) AS pearson,
           corr(ra, rv) AS spearman, regr_slope(accuracy, value) AS slope
    FROM rk GROUP BY measure ORDER BY measure"""

_PER_RUN_MK = """
    SELECT m.run_id, r.model, r.pretrained, r.started_at, count(*) AS n, avg(m.correct::INT) AS accuracy,
           avg(m.mi) AS mean_mi, avg(m.auc) AS mean_auc, """ + _CURVE_AUC.format(p="m.") + """,
           avg(m.deletion) AS deletion, avg(m.insertion) AS insertion,
           avg(m.correct::INT) - avg(m.correct_after_drop::INT) AS acc_drop,
           avg(m.correct_after_insert::INT) - avg(m.correct_empty::INT) AS acc_inc
    FROM mutual_knowledge m JOIN runs r USING (run_id) GROUP BY ALL"""

CONCEPT_QUERIES: dict[str, str] = {
    # accuracy with class-name templates (their ensemble) vs description-based classification, per class + all
    "descriptors_vs_names": """
        WITH acc AS (
            SELECT coalesce(label, '(all)') AS class_name, count(*) FILTER (template = 'ensemble') AS n,
                   avg(correct::INT) FILTER (template = 'ensemble') AS names_accuracy,
                   avg(correct::INT) FILTER (template = 'descriptors') AS descriptors_accuracy
            FROM predictions WHERE run_id = $run GROUP BY GROUPING SETS ((label), ()))
        SELECT *, descriptors_accuracy - names_accuracy AS gain FROM acc
        ORDER BY class_name = '(all)', gain, class_name""",
    # per class: mutual knowledge, faithfulness of the concept explanations, top visual concept
    "mutual_knowledge_by_class": f"""
        WITH per AS ({_PER_CLASS_MK}),
             top AS (SELECT label AS class_name, mode(top_visual) AS usual_top_visual
                     FROM mutual_knowledge WHERE run_id = $run AND correct GROUP BY label)
        SELECT per.*, top.usual_top_visual FROM per LEFT JOIN top USING (class_name)
        ORDER BY accuracy, class_name""",
    # across the run's classes: does mutual knowledge rise with accuracy?
    "mutual_knowledge_vs_accuracy": f"WITH per AS ({_PER_CLASS_MK}), "
                                    + _CORRELATE.format(group="class_name", points="SELECT * FROM per"),
    # one row per run (model, time): accuracy, mean MI and AUC, faithfulness
    "mutual_knowledge_runs": _PER_RUN_MK + " ORDER BY r.started_at",
    # across runs (models, checkpoints, dates): does mutual knowledge rise with accuracy?
    "mutual_knowledge_runs_vs_accuracy": f"WITH per AS ({_PER_RUN_MK}), "
                                         + _CORRELATE.format(group="run_id", points="SELECT * FROM per"),
    # each class's top visual concepts (the most important per image) and whether they are its descriptors
    "visual_concepts": """
        SELECT label AS class_name, top_visual AS descriptor, top_visual_of_label AS of_class, count(*) AS n_images,
               avg(correct::INT) AS accuracy
        FROM mutual_knowledge WHERE run_id = $run
        GROUP BY ALL ORDER BY class_name, n_images DESC, descriptor""",
    # the language concepts of each class (descriptors nearest its text embedding)
    "language_concepts": """
        SELECT DISTINCT class_name, rank, descriptor, similarity, of_pred AS of_class
        FROM concepts WHERE run_id = $run AND source = 'language' ORDER BY class_name, rank""",
}
