"""The shard store: Arrow IPC files that are never seen half-written.

A shard is written to a hidden temporary name in its final folder, flushed, fsynced and renamed
(rename is atomic on POSIX), then registered in the catalog with rows, bytes, checksum and schema.
A writer killed at any point leaves either nothing visible or a complete file; readers list shards
through the catalog, so an unregistered file is never read. `sweep()` removes leftovers.

Files use the Arrow IPC *file* format: Polars scans it lazily and pyarrow memory-maps it, so
both the LazyFrame and the Hugging Face Dataset views read it without copying.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from pathlib import Path
from typing import Iterable

import polars as pl
import pyarrow as pa
import pyarrow.ipc as ipc

from storage.catalog import Catalog
from storage.tables import Shard, Stage

TMP_PREFIX = ".tmp-"


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def to_arrow(data: pa.Table | pl.DataFrame | list[dict]) -> pa.Table:
    if isinstance(data, pa.Table):
        return data
    if isinstance(data, pl.DataFrame):
        # compat_level oldest: plain (large_)string/binary types every Arrow reader understands.
        return data.to_arrow(compat_level=pl.CompatLevel.oldest())
    return pa.Table.from_pylist(list(data))


class ShardStore:
    def __init__(self, catalog: Catalog, root: Path | None = None):
        from flows.settings import shards_root

        self.catalog = catalog
        self.root = Path(root) if root else shards_root()
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, shard: Shard) -> Path:
        return self.root / shard.path

    def write(self, data: pa.Table | pl.DataFrame | list[dict], *, stage: Stage, kind: str,
              parents: Iterable[Shard] = (), schema: pa.Schema | None = None) -> Shard:
        table = to_arrow(data)
        if schema is not None:
            table = table.cast(schema) if table.num_rows else schema.empty_table()
        stage_dir = f"{stage.name}" + (f"-r{stage.round_index}" if stage.round_index is not None else "")
        folder = self.root / stage.run_id / f"{stage.id:05d}-{stage_dir}"
        folder.mkdir(parents=True, exist_ok=True)
        final = folder / f"{kind}-{secrets.token_hex(4)}.arrow"
        tmp = folder / f"{TMP_PREFIX}{final.name}"
        with open(tmp, "wb") as raw:
            with ipc.new_file(raw, table.schema) as writer:
                writer.write_table(table, max_chunksize=64 * 1024)
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(tmp, final)
        _fsync_dir(folder)
        shard = Shard(run_id=stage.run_id, stage_id=stage.id, kind=kind,
                      path=str(final.relative_to(self.root)), rows=table.num_rows,
                      bytes=final.stat().st_size, checksum=sha256_file(final),
                      arrow_schema=json.dumps(_schema_dict(table.schema)))
        return self.catalog.register_shard(shard, list(parents))

    # -- reading ---------------------------------------------------------------------------
    def table(self, shards: Iterable[Shard]) -> pa.Table:
        """All shards as one Arrow table backed by memory maps (no copy of the data)."""
        tables = [ipc.open_file(pa.memory_map(str(self.path(s)))).read_all() for s in shards]
        if not tables:
            return pa.table({})
        return pa.concat_tables(tables, promote_options="default")

    def scan(self, shards: Iterable[Shard]) -> pl.LazyFrame:
        paths = [str(self.path(s)) for s in shards]
        if not paths:
            return pl.LazyFrame()
        return pl.scan_ipc(paths)

    def dataset(self, shards: Iterable[Shard]):
        """A Hugging Face `datasets.Dataset` over the memory-mapped shards, without a copy."""
        import datasets
        from datasets.table import InMemoryTable

        # InMemoryTable only names the wrapper: its buffers still point into the memory maps.
        return datasets.Dataset(InMemoryTable(self.table(shards)))

    def verify(self, shard: Shard) -> bool:
        path = self.path(shard)
        return path.exists() and sha256_file(path) == shard.checksum

    def sweep(self) -> list[Path]:
        """Delete temporary files left by writers that died mid-write; returns what it removed."""
        removed = []
        for tmp in self.root.rglob(f"{TMP_PREFIX}*"):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
        return removed


def _schema_dict(schema: pa.Schema) -> dict[str, str]:
    return {field.name: str(field.type) for field in schema}
