"""Versioned Arrow schemas of every MapCap table, and the metadata keys stored in each Parquet file."""
from __future__ import annotations

import pyarrow as pa

SCHEMA_VERSION = "1"  # bump when a column changes meaning or type; stored in every file
META_SCHEMA_VERSION = b"mapcap.schema_version"
META_TABLE = b"mapcap.table"
META_CONFIG = b"mapcap.config"  # resolved stage config (JSON)
META_CONFIG_HASH = b"mapcap.config_hash"  # what makes a shard complete: same inputs, config and code version
META_VERSIONS = b"mapcap.versions"  # library versions (JSON)
META_REUSE = b"mapcap.reuse"  # {"hash": config hash without the shard's inputs, "keys": [[image_id, label]...]}
META_PARTS = b"mapcap.parts"  # a compacted file: {"parts": [{name, offset, rows}]} (storage/layout.py)

_ts = pa.timestamp("us", tz="UTC")

SCHEMAS: dict[str, pa.Schema] = {
    "runs": pa.schema([
        ("run_id", pa.string()), ("status", pa.string()),  # 'running' | 'finished' | 'failed' | 'stopped'
        ("started_at", _ts), ("finished_at", _ts), ("duration_s", pa.float64()),
        ("dataset", pa.string()), ("model", pa.string()), ("pretrained", pa.string()),
        ("templates", pa.list_(pa.string())), ("n_classes", pa.int32()), ("n_shards", pa.int32()),
        ("n_images", pa.int64()), ("n_predicted", pa.int64()), ("n_failures", pa.int64()),
        ("n_shards_skipped", pa.int32()), ("failed_shards", pa.list_(pa.int32())),
        ("params_json", pa.string()), ("code_version", pa.string()), ("versions_json", pa.string()),
        ("config_json", pa.string()),  # resolved config of every stage that ran: {stage: config} (JSON)
        ("stages_json", pa.string()),  # per stage: ran / reused / skipped and why, rows, failures, seconds
        ("sharding", pa.string()),  # how images were cut into shards (tasks/pipeline/sharding.py); null: by sorted path
        ("nodes", pa.list_(pa.string())),  # where its shards ran: Ray node ids, or host names
        ("updated_at", _ts),  # when the row was last written: every HEARTBEAT_SECONDS while the run is running
        ("n_shards_done", pa.int32()),  # shards finished so far (all of them once finished)
        ("n_skipped", pa.int64()),  # dataset entries discovery left out on purpose (hidden, loose in the root ...)
        ("skipped_json", pa.string()),  # ... by reason: {why: how many} (JSON); null in runs before this column
    ]),
    "images": pa.schema([
        ("run_id", pa.string()), ("image_id", pa.string()), ("path", pa.string()), ("label", pa.string()),
        ("shard", pa.int32()), ("width", pa.int32()), ("height", pa.int32()),
        ("content_id", pa.string()),  # SHA-256 of the bytes (16 hex): byte-identical files share it; null in runs
        # before files had ids of their own (their image_id was it) and for files that could not be read
    ]),
    "predictions": pa.schema([
        ("run_id", pa.string()), ("image_id", pa.string()), ("shard", pa.int32()),
        ("template", pa.string()),  # the template text, or 'ensemble'
        ("label", pa.string()), ("pred", pa.string()), ("correct", pa.bool_()),
        ("pred_prob", pa.float32()), ("label_prob", pa.float32()), ("label_rank", pa.int32()),
        ("topk_labels", pa.list_(pa.string())), ("topk_probs", pa.list_(pa.float32())),
    ]),
    "failures": pa.schema([
        ("run_id", pa.string()), ("image_id", pa.string()), ("path", pa.string()), ("shard", pa.int32()),
        ("stage", pa.string()), ("error_type", pa.string()), ("error", pa.string()),
    ]),
    "relevancy": pa.schema([
        ("run_id", pa.string()), ("image_id", pa.string()), ("shard", pa.int32()),
        ("target", pa.string()),  # 'pred' | 'label'
        ("class_name", pa.string()), ("method", pa.string()),  # 'chefer' | 'gradient' | 'random' | ...
        ("start_layer", pa.int32()),  # first block used (chefer; -1 = last block); null for other methods
        ("grid", pa.int32()), ("map", pa.list_(pa.float32())),  # raw map, row-major grid × grid
        ("peak", pa.int32()), ("entropy", pa.float32()), ("top10_mass", pa.float32()),
    ]),
    "regions": pa.schema([
        ("run_id", pa.string()), ("image_id", pa.string()), ("shard", pa.int32()), ("target", pa.string()),
        ("class_name", pa.string()), ("method", pa.string()), ("start_layer", pa.int32()),
        ("region_id", pa.int32()),  # rank by relevancy mass, 0 = most
        ("bbox", pa.list_(pa.int32())),  # x0, y0, x1, y1 in image pixels (x1, y1 exclusive)
        ("area", pa.int64()), ("centroid_x", pa.float32()), ("centroid_y", pa.float32()),
        ("mean_relevancy", pa.float32()), ("mass", pa.float32()), ("mass_share", pa.float32()),
        ("mask_rle", pa.list_(pa.int32())),  # row-major run lengths over the box, starting with a False run:
        # the box at the working size mask_size when that is set, else (earlier runs) the bbox in image pixels;
        # tasks/masks.py scales them to image pixels (region_pixels)
        ("mask_size", pa.list_(pa.int32())),  # (w, h) the map was segmented at; null: mask_rle in image pixels
        ("image_size", pa.list_(pa.int32())),  # (W, H) of the image, which bbox, area and centroid are in
        ("on_object", pa.bool_()),  # at least half of it on the true object (datasets with object masks), else null
    ]),
    "captions": pa.schema([
        ("run_id", pa.string()), ("image_id", pa.string()), ("shard", pa.int32()),
        ("target", pa.string()),  # 'pred' | 'label' for regions, 'image' for the whole image
        ("method", pa.string()), ("start_layer", pa.int32()),  # the map the region came from (null: image)
        ("region_id", pa.int32()),  # -1 = the whole image
        ("captioner", pa.string()), ("text", pa.string()),
        ("clipscore", pa.float32()), ("ref_clipscore", pa.float32()),  # RefCLIPScore where references exist
    ]),
    "class_summaries": pa.schema([
        ("run_id", pa.string()), ("class_name", pa.string()),
        ("subset", pa.string()),  # 'all' | 'correct' | 'wrong' (images of the class, by the ensemble prediction)
        ("captioner", pa.string()), ("n_images", pa.int64()), ("accuracy", pa.float64()),
        ("summary", pa.list_(pa.string())), ("summary_text", pa.string()),  # MMR-picked captions, '; '-joined
        ("n_captions", pa.int64()), ("n_distinct", pa.int64()),
        ("diversity", pa.float64()),  # mean pairwise cosine distance of the caption embeddings
        ("class_similarity", pa.float64()),  # cos(caption centroid, "a photo of a <class>.")
        ("class_mention_share", pa.float64()),  # captions naming the class or a synonym
        ("other_class_share", pa.float64()),  # captions naming another class and not this one
        ("mean_clipscore", pa.float64()),
        ("mass_outside_top", pa.float64()),  # mean relevancy mass share outside each map's top region
        ("on_object_share", pa.float64()),  # regions at least half on the true object (datasets with masks)
    ]),
    "concepts": pa.schema([
        ("run_id", pa.string()), ("image_id", pa.string()), ("shard", pa.int32()),
        ("source", pa.string()),  # 'image' | 'region' (visual concepts) | 'language' (of the predicted class)
        ("region_id", pa.int32()),  # the region's rank for 'region'; -1 otherwise
        ("class_name", pa.string()),  # 'language': the predicted class; null otherwise
        ("rank", pa.int32()),  # 0 = most similar
        ("descriptor", pa.string()), ("similarity", pa.float32()),  # cosine, concept prompt vs crop / class
        ("of_label", pa.bool_()), ("of_pred", pa.bool_()),  # a descriptor of the true / predicted class
    ]),
    "mutual_knowledge": pa.schema([
        ("run_id", pa.string()), ("image_id", pa.string()), ("shard", pa.int32()),
        ("label", pa.string()), ("pred", pa.string()), ("correct", pa.bool_()),
        ("method", pa.string()),  # whose regions are the image's parts
        ("n_regions", pa.int32()), ("n_visual", pa.int32()), ("n_language", pa.int32()), ("n_shared", pa.int32()),
        ("visual", pa.list_(pa.string())),  # distinct visual concepts, by importance
        ("language", pa.list_(pa.string())),  # language concepts of the predicted class, by similarity
        ("shared", pa.list_(pa.string())),  # visual concepts that are also language concepts
        ("top_visual", pa.string()), ("top_visual_of_label", pa.bool_()),  # is it a descriptor of the true class
        ("mi", pa.float64()),  # nats, the authors' estimator (tasks/concepts.py)
        ("mi_curve", pa.list_(pa.float32())),  # MI as visual concepts are removed by importance: N + 1 points
        ("auc", pa.float64()),  # mean of mi_curve
        ("deletion_curve", pa.list_(pa.float32())), ("insertion_curve", pa.list_(pa.float32())),
        ("deletion", pa.float64()), ("insertion", pa.float64()),  # means of the curves (predicted class prob.)
        ("correct_after_drop", pa.bool_()),  # still right without the top concept's regions (AccDrop)
        ("correct_after_insert", pa.bool_()),  # right with only the top concept's regions (AccInc)
        ("correct_empty", pa.bool_()),  # right on the mean-colour image (AccInc's baseline)
    ]),
    "faithfulness": pa.schema([
        ("run_id", pa.string()), ("image_id", pa.string()), ("shard", pa.int32()),
        ("method", pa.string()), ("start_layer", pa.int32()),  # the map variant scored (its predicted-class map)
        ("metric", pa.string()),  # positive/negative/deletion/insertion_auc, pointing_grid/pixel, discrimination
        ("value", pa.float64()),  # this image's value (pointing: 0 or 1); `evaluations` holds the run's means
    ]),
    "evaluations": pa.schema([
        ("run_id", pa.string()), ("method", pa.string()), ("start_layer", pa.int32()),
        ("metric", pa.string()), ("value", pa.float64()), ("n", pa.int64()),
        ("captioner", pa.string()),  # caption-quality rows (null: a map method's row); method null: whole images
    ]),
}
TABLES = tuple(SCHEMAS)


def schema_for(table: str) -> pa.Schema:
    try:
        return SCHEMAS[table]
    except KeyError as e:
        raise ValueError(f"unknown table {table!r}; MapCap tables are {TABLES}") from e
