"""Batched shard writer: rows collect in memory and land as a "generated" shard every
`batch_rows` rows or `flush_seconds`, and on close (also after Ctrl-C or an error). Answers that
were not yet flushed when a process is killed are still in the response cache, so the next
attempt rebuilds them without asking the teacher again.

Shards are written by one background thread, in order: a write (Arrow file, fsync, rename,
catalog row) takes ~50-150 ms here, during which the request loop keeps answering. `before_write`
runs in that thread before each shard (generate folds its journaled answers into the response
cache there, so the catalog holds a shard's answers before the shard itself).

A writer that falls MAX_PENDING_WRITES shards behind makes the loop wait for the oldest, so
rows cannot pile up in memory when the disk or the CPU is slower than the teacher.
"""

from __future__ import annotations

import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor

import pyarrow as pa

from flows.generate.rows import GENERATED_SCHEMA

# Shard writes queued at most; the next one waits for the oldest (backpressure on the loop).
MAX_PENDING_WRITES = 4


def warm_up(schema: pa.Schema = GENERATED_SCHEMA) -> None:
    """Pay pyarrow's one-off start-up before the request loop: its first conversion of Python
    rows imports pandas (0.2 s in a fresh process here). Left to the first shard, that import
    ran in the writer thread holding the GIL and stalled the loop's answers for 25 ms of a
    4,000-request, 0.9 s run (bench/teacher_throughput.py --regime cpu)."""
    pa.Table.from_pylist([], schema)


class ShardWriter:
    def __init__(self, store, stage, parents, *, batch_rows: int, flush_seconds: float,
                 schema: pa.Schema = GENERATED_SCHEMA, kind: str = "generated",
                 before_write=None):
        self.store, self.stage, self.parents = store, stage, list(parents)
        self.before_write = before_write
        self.schema, self.kind = schema, kind
        self.batch_rows, self.flush_seconds = batch_rows, flush_seconds
        self.buffer: list[dict] = []
        self.rows_written = 0
        self.shards = 0
        self._last = time.monotonic()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="stairs-shards")
        self._pending: deque[Future] = deque()

    def add(self, rows: list[dict]) -> None:
        self.buffer.extend(rows)
        if (len(self.buffer) >= self.batch_rows
                or time.monotonic() - self._last >= self.flush_seconds):
            self._submit()

    def _submit(self) -> None:
        self._last = time.monotonic()
        self._collect(at_most=MAX_PENDING_WRITES - 1)
        if self.buffer:
            rows, self.buffer = self.buffer, []
            self._pending.append(self._pool.submit(self._write, rows))

    def _write(self, rows: list[dict]) -> int:
        if self.before_write is not None:
            self.before_write()
        table = pa.Table.from_pylist(rows, self.schema)
        self.store.write(table, stage=self.stage, kind=self.kind, parents=self.parents)
        return len(rows)

    def _collect(self, *, at_most: int | None = None) -> None:
        """Count finished writes, oldest first (one thread writes them in order); with
        `at_most`, first wait until no more than that many are pending. A failure is re-raised
        and stays pending, so every later call raises it too (a full disk stops the run)."""
        pending = self._pending
        while pending and (pending[0].done() or (at_most is not None
                                                 and len(pending) > at_most)):
            self.rows_written += pending[0].result()
            pending.popleft()
            self.shards += 1

    def wait(self) -> None:
        """Wait for the writes handed to the writer thread (what is buffered stays buffered)."""
        self._collect(at_most=0)

    def flush(self) -> None:
        """Write what is buffered and wait for every write: after this, all rows are shards."""
        self._submit()
        try:
            self._collect(at_most=0)
        finally:
            self._pool.shutdown(wait=True)
