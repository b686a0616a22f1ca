"""Shards: a large sub-dataset split into partitions that runs (and GPUs) process on their own.

A registry entry with `shards: N` is N partitions, `NAME.shard0ofN` ... `NAME.shard{N-1}ofN`; a query belongs to
shard `int(sha256(query_id)[:16], 16) % N`, a hash of its id alone, so a query (and every repeat of its id) is
always in the same shard, whatever the file's order or the machine. A source line that is quarantined before
its query id is known belongs to shard 0, so that every quarantine row is stored once. Stages that need the
whole sub-dataset (the pruned collection's statistics, training's `subsets`) read every shard of it:
`dataset_of` / DATASET_SQL give a partition's sub-dataset (its own name when it is not a shard).
"""

from __future__ import annotations

import hashlib
import re

_SHARD = re.compile(r"^(?P<name>.+)\.shard(?P<index>\d+)of(?P<count>\d+)$")
# the sub-dataset of the `subset` column, in SQL
DATASET_SQL = r"regexp_replace(subset, '\.shard[0-9]+of[0-9]+$', '')"


def key(name: str, index: int, count: int) -> str:
    return f"{name}.shard{index}of{count}"


def keys(name: str, count: int | None) -> list[str]:
    """The partition keys of a registry entry: its name, or one key per shard."""
    return [key(name, i, count) for i in range(count)] if count else [name]


def parse(partition: str) -> tuple[str, int, int] | None:
    """(sub-dataset, shard index, shard count) of a shard's partition key; None for any other key."""
    m = _SHARD.match(partition)
    return (m["name"], int(m["index"]), int(m["count"])) if m else None


def dataset_of(partition: str) -> str:
    found = parse(partition)
    return found[0] if found else partition


def shard_of(query_id: str, count: int) -> int:
    return int(hashlib.sha256(query_id.encode("utf-8")).hexdigest()[:16], 16) % count
