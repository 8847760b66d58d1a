"""The shard store: Arrow IPC files that are never seen half-written.

A shard is written to a hidden temporary name in its final folder, flushed, fsynced and renamed
(rename is atomic on POSIX), then registered in the catalog with rows, bytes, checksum and schema.
A writer killed at any point leaves either nothing visible or a complete file; readers list shards
through the catalog, so an unregistered file is never read. `sweep()` removes leftovers.

Files use the Arrow IPC *file* format: Polars scans it lazily and pyarrow memory-maps it, so
both the LazyFrame and the Hugging Face Dataset views read it without copying.

Shards can also live on any fsspec filesystem (`STAIRS_SHARDS_URL=s3://bucket/stairs/shards`,
`gs://...`, `memory://...`; the filesystem's package, e.g. s3fs, must be installed). There the
same guarantee holds differently: the file is written and checksummed in a local spool, uploaded
under the hidden temporary name, then moved to its final name. On object stores an object only
becomes visible once its upload or server-side copy completes, so the final name is never
half-written; a killed writer leaves at most a temporary object, which `sweep()` removes. Reads
from a remote store load the shard into memory (no memory map over the network). The catalog
keeps paths relative to the root, so the same catalog works wherever the root points.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import tempfile
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


class _HashingFile:
    """A binary file that also hashes and counts what is written through it: the checksum of a
    shard comes from the bytes on their way to disk, not from reading the file back (that
    read-back was a third of a 500-row generated shard's store time here)."""

    def __init__(self, raw):
        self.raw, self.sha256, self.size = raw, hashlib.sha256(), 0
        self.closed = False

    def write(self, data) -> int:
        self.sha256.update(data)
        self.size += len(data)
        return self.raw.write(data)

    def tell(self) -> int:
        return self.size

    def flush(self) -> None:
        self.raw.flush()

    def close(self) -> None:
        # pyarrow closes its sink when the IPC writer closes; the real file stays open here so
        # the caller can fsync it.
        self.closed = True


def _write_ipc(raw, table: pa.Table) -> tuple[int, str]:
    """Write `table` as an Arrow IPC file to the open binary file `raw`: (bytes, sha256)."""
    sink = _HashingFile(raw)
    with ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table, max_chunksize=64 * 1024)
    return sink.size, sink.sha256.hexdigest()


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


def remote_fs(root: str | Path):
    """(fsspec filesystem, path) for a URL that is not a local folder; None for local roots."""
    if "://" not in str(root):
        return None
    import fsspec

    fs, path = fsspec.core.url_to_fs(str(root))
    if "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)):
        return None
    return fs, path.rstrip("/")


class ShardStore:
    def __init__(self, catalog: Catalog, root: Path | str | None = None):
        from flows.settings import shards_location

        self.catalog = catalog
        location = root if root else shards_location()
        remote = remote_fs(location)
        self.fs = remote[0] if remote else None
        if remote:
            self.root = remote[1]
            self.fs.makedirs(self.root, exist_ok=True)
        else:
            if str(location).startswith("file://"):
                import fsspec

                location = fsspec.core.url_to_fs(str(location))[1]
            self.root = Path(location)
            self.root.mkdir(parents=True, exist_ok=True)

    @property
    def remote(self) -> bool:
        return self.fs is not None

    def path(self, shard: Shard) -> Path | str:
        """A local Path, or the shard's full URL on a remote filesystem."""
        if self.remote:
            return self.fs.unstrip_protocol(f"{self.root}/{shard.path}")
        return self.root / shard.path

    def write(self, data: pa.Table | pl.DataFrame | list[dict], *, stage: Stage, kind: str,
              parents: Iterable[Shard] = (), schema: pa.Schema | None = None) -> Shard:
        table = to_arrow(data)
        if schema is not None:
            table = table.cast(schema) if table.num_rows else schema.empty_table()
        stage_dir = stage_folder(stage.name, stage.round_index)
        if self.remote:
            return self._write_remote(table, stage=stage, kind=kind, parents=parents,
                                      relative=f"{stage.run_id}/{stage.id:05d}-{stage_dir}")
        folder = self.root / stage.run_id / f"{stage.id:05d}-{stage_dir}"
        folder.mkdir(parents=True, exist_ok=True)
        final = folder / f"{kind}-{secrets.token_hex(4)}.arrow"
        tmp = folder / f"{TMP_PREFIX}{final.name}"
        with open(tmp, "wb") as raw:
            size, checksum = _write_ipc(raw, table)
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(tmp, final)
        _fsync_dir(folder)
        shard = Shard(run_id=stage.run_id, stage_id=stage.id, kind=kind,
                      path=str(final.relative_to(self.root)), rows=table.num_rows,
                      bytes=size, checksum=checksum,
                      arrow_schema=json.dumps(_schema_dict(table.schema)))
        return self.catalog.register_shard(shard, list(parents))

    def _write_remote(self, table: pa.Table, *, stage: Stage, kind: str,
                      parents: Iterable[Shard], relative: str) -> Shard:
        name = f"{kind}-{secrets.token_hex(4)}.arrow"
        folder = f"{self.root}/{relative}"
        tmp, final = f"{folder}/{TMP_PREFIX}{name}", f"{folder}/{name}"
        with tempfile.TemporaryDirectory(prefix="stairs-spool-") as spool_dir:
            spool = Path(spool_dir) / name
            with open(spool, "wb") as raw:
                size, checksum = _write_ipc(raw, table)
            self.fs.makedirs(folder, exist_ok=True)
            self.fs.put_file(str(spool), tmp)
        if self.fs.size(tmp) != size:
            self.fs.rm_file(tmp)
            raise OSError(f"upload of shard {final} is incomplete ({self.fs.size(tmp)} of "
                          f"{size} bytes)")
        self.fs.mv(tmp, final)
        shard = Shard(run_id=stage.run_id, stage_id=stage.id, kind=kind,
                      path=f"{relative}/{name}", rows=table.num_rows, bytes=size,
                      checksum=checksum, arrow_schema=json.dumps(_schema_dict(table.schema)))
        return self.catalog.register_shard(shard, list(parents))

    # -- reading ---------------------------------------------------------------------------
    def _read(self, shard: Shard) -> pa.Table:
        if self.remote:
            with self.fs.open(f"{self.root}/{shard.path}", "rb") as f:
                return ipc.open_file(pa.BufferReader(f.read())).read_all()
        return ipc.open_file(pa.memory_map(str(self.path(shard)))).read_all()

    def table(self, shards: Iterable[Shard]) -> pa.Table:
        """All shards as one Arrow table backed by memory maps (no copy of the data); read into
        memory from a remote store."""
        tables = [self._read(s) for s in shards]
        if not tables:
            return pa.table({})
        return pa.concat_tables(tables, promote_options="default")

    def scan(self, shards: Iterable[Shard]) -> pl.LazyFrame:
        shards = list(shards)
        if not shards:
            return pl.LazyFrame()
        if self.remote:
            return pl.from_arrow(self.table(shards)).lazy()
        return pl.scan_ipc([str(self.path(s)) for s in shards])

    def dataset(self, shards: Iterable[Shard]):
        """A Hugging Face `datasets.Dataset` over the memory-mapped shards, without a copy."""
        import datasets
        from datasets.table import InMemoryTable

        # InMemoryTable only names the wrapper: its buffers still point into the memory maps.
        return datasets.Dataset(InMemoryTable(self.table(shards)))

    def verify(self, shard: Shard) -> bool:
        if self.remote:
            key = f"{self.root}/{shard.path}"
            if not self.fs.exists(key):
                return False
            h = hashlib.sha256()
            with self.fs.open(key, "rb") as f:
                while block := f.read(1 << 20):
                    h.update(block)
            return h.hexdigest() == shard.checksum
        path = self.path(shard)
        return path.exists() and sha256_file(path) == shard.checksum

    def sweep(self, run_id: str | None = None, stage: str | None = None) -> list[Path | str]:
        """Delete what writers that died left behind; returns what it removed.

        With no arguments: temporary files anywhere. With a run and a stage folder name
        (stage_folder()): that stage's earlier folders in that run (`<run>/<id>-<stage>/`), the
        stage's own prefix, swept when the stage starts: temporary files, and shard files the
        catalog never registered (renamed, then killed before their catalog row; their rows
        come back from the response cache or are recomputed). The run lock keeps every other
        process out of the run, so nothing there is still being written."""
        if run_id is None:
            return [self._remove(f) for f in self._files("") if _name(f).startswith(TMP_PREFIX)]
        registered = {s.path for s in self.catalog.run_shards(run_id)}
        removed = []
        for f in self._files(run_id):
            relative = self._relative(f)
            folder = relative.rsplit("/", 2)[-2] if relative.count("/") >= 2 else ""
            if not folder.endswith(f"-{stage}"):
                continue
            name = _name(f)
            if name.startswith(TMP_PREFIX) or (name.endswith(".arrow")
                                               and relative not in registered):
                removed.append(self._remove(f))
        return removed

    def _files(self, under: str) -> list[Path | str]:
        if self.remote:
            folder = f"{self.root}/{under}".rstrip("/")
            return list(self.fs.find(folder)) if self.fs.exists(folder) else []
        folder = self.root / under
        return [p for p in folder.rglob("*") if p.is_file()] if folder.is_dir() else []

    def _relative(self, f: Path | str) -> str:
        if self.remote:
            return str(f)[len(self.root) + 1:]
        return Path(f).relative_to(self.root).as_posix()

    def _remove(self, f: Path | str) -> Path | str:
        if self.remote:
            self.fs.rm_file(f)
        else:
            Path(f).unlink(missing_ok=True)
        return f


def stage_folder(name: str, round_index: int | None) -> str:
    """The part of a stage's shard folder after its id: `generate-r0`, `ingest`."""
    return name + (f"-r{round_index}" if round_index is not None else "")


def _name(f: Path | str) -> str:
    return str(f).rsplit("/", 1)[-1]


def _schema_dict(schema: pa.Schema) -> dict[str, str]:
    return {field.name: str(field.type) for field in schema}
