"""Stable shards: each image goes to the bucket a hash of its path picks, among a shard count fixed when the run
is first planned. Adding or removing images changes only the shards they fall into, so resuming a run after the
dataset grew redoes only those shards (and, with reuse by content, only the new images in them).
"""
from __future__ import annotations

import hashlib
import math

from mapcap.tasks.data import Item

SCHEME = "path-hash-v1"  # stored in the runs row; a run planned another way cannot be resumed with this one


def shard_count(n_images: int, shard_size: int) -> int:
    """Buckets for a new run: about `shard_size` images each (at least one bucket)."""
    if shard_size < 1:
        raise ValueError(f"shard_size must be ≥ 1, got {shard_size}")
    return max(1, math.ceil(n_images / shard_size))


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
    """Is the image in a `share` sample? Decided by its content id alone: the same for any sharding, rerun or
    grown dataset, so a sampled stage's rows stay reusable (tasks/stages/reuse.py)."""
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
