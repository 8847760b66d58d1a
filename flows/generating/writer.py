"""Batched shard writer: rows collect in memory and land as a "generated" shard every
`batch_rows` rows or `flush_seconds`, and on close (also after Ctrl-C or an error). Answers that
were not yet flushed when a process is killed are still in the response cache, so the next
attempt rebuilds them without asking the teacher again."""

from __future__ import annotations

import time

import pyarrow as pa

from flows.generating.rows import GENERATED_SCHEMA


class ShardWriter:
    def __init__(self, store, stage, parents, *, batch_rows: int, flush_seconds: float):
        self.store, self.stage, self.parents = store, stage, list(parents)
        self.batch_rows, self.flush_seconds = batch_rows, flush_seconds
        self.buffer: list[dict] = []
        self.rows_written = 0
        self.shards = 0
        self._last = time.monotonic()

    def add(self, rows: list[dict]) -> None:
        self.buffer.extend(rows)
        if (len(self.buffer) >= self.batch_rows
                or time.monotonic() - self._last >= self.flush_seconds):
            self.flush()

    def flush(self) -> None:
        self._last = time.monotonic()
        if not self.buffer:
            return
        table = pa.Table.from_pylist(self.buffer, GENERATED_SCHEMA)
        self.store.write(table, stage=self.stage, kind="generated", parents=self.parents)
        self.rows_written += len(self.buffer)
        self.shards += 1
        self.buffer = []
