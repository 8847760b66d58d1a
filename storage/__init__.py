"""The catalog (SQLModel: runs, rounds, stages, shards, models, metrics, response cache, lineage)
and the shard store (Arrow IPC files, written atomically, registered in the catalog)."""

from storage.catalog import Catalog
from storage.shards import ShardStore

__all__ = ["Catalog", "ShardStore"]
