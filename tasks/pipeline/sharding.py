"""Stable shards: each image goes to the bucket a hash of its path picks, among a shard count fixed when the run
is first planned. Adding or removing images changes only the shards they fall into, so resuming a run after the
dataset grew redoes only those shards (and, with reuse by content, only the new images in them).
"""
from __future__ import annotations

import hashlib
import math

from mapcap.tasks.data import Item

SCHEME = "path-hash-v1"  # stored in the runs row; a run planned another way cannot be resumed with this one


# Shards in flight at once (the flow's thread-pool runner; Ray replaces it): while one holds the model (its passes
# take the model's lock), the other decodes, crops and segments (on a GPU machine, the CPU work of one shard overlaps
# the GPU work of the next). More only adds shards that wait for the model and hold decoded images in memory.
SHARDS_IN_FLIGHT = 2
MIN_SPLIT_SHARD = 512  # a run is split into SHARDS_IN_FLIGHT shards only if each gets at least this many images


def shard_count(n_images: int, shard_size: int, in_flight: int = 1) -> int:
    """Buckets for a new run: about `shard_size` images each (at least one bucket). With `in_flight` > 1 (a GPU
    run) the count is rounded up to a multiple of it once each bucket would still hold MIN_SPLIT_SHARD images:
    10,000 images in 3 shards with 2 in flight leave the third to run alone, the GPU idle through its CPU work
    (decode, segmentation, crops); in 4, the shards pair up to the end."""
    if shard_size < 1:
        raise ValueError(f"shard_size must be ≥ 1, got {shard_size}")
    n = max(1, math.ceil(n_images / shard_size))
    if in_flight > 1 and n_images >= in_flight * MIN_SPLIT_SHARD:
        n = math.ceil(n / in_flight) * in_flight
    return n


def bucket_of(path: str, n_shards: int) -> int:
    """The shard of an image: its path's SHA-256 modulo the shard count (independent of every other image)."""
    return int(hashlib.sha256(path.encode()).hexdigest()[:16], 16) % n_shards


def hash_shards(items: tuple[Item, ...] | list[Item], n_shards: int) -> list[list[Item]]:
    """`n_shards` shards (some may be empty), each in path order; the same paths always land in the same shard."""
    if n_shards < 1:
        raise ValueError(f"n_shards must be ≥ 1, got {n_shards}")
    shards: list[list[Item]] = [[] for _ in range(n_shards)]
    for item in sorted(items, key=lambda it: it.path):
        shards[bucket_of(item.path, n_shards)].append(item)
    return shards


def sampled(image_id: str, share: float) -> bool:
    """Is the image in a `share` sample? Decided by its image id alone (its file's path and bytes): the same for
    any sharding, rerun or grown dataset, so a sampled stage's rows stay reusable (tasks/pipeline/reuse.py)."""
    return share >= 1.0 or int(image_id[:8], 16) / 16 ** 8 < share


def resumed_shard_count(row: dict | None, run_id: str) -> int | None:
    """The shard count a stored run was planned with (None for a new run); a clear error for a run sharded by
    sorted path (before stable shards), whose shard files a hash plan would mix up."""
    if row is None:
        return None
    if row.get("sharding") != SCHEME:
        raise ValueError(
            f"run {run_id!r} was sharded by sorted path (sharding {row.get('sharding')!r}, before stable shards), "
            f"so it cannot be resumed with '{SCHEME}' shards: start a new run (another --run-name, or none); "
            f"its images are reused by content from runs with the same stage configs, not from this old one")
    return int(row["n_shards"])
