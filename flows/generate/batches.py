"""Generate's unit of work on the task runner: a batch of pending requests, run as one named
task ("generate-batch-3") wherever the flow's task runner puts it (a thread, a Dask or a Ray
worker process). A batch answers its requests through the response cache, writes its own
shards and records its answers in the cache, so a lost worker loses at most the requests it
had in flight, and the next run of the stage adopts every shard the batches wrote (resume.py).

A batch that runs in another process opens the workspace itself from its environment
(STAIRS_HOME, STAIRS_CATALOG_URL, STAIRS_SHARDS_URL: the worker must see the same catalog and
shards) and reports where it ran, which the stage summary keeps per batch.
"""

from __future__ import annotations

import copy
import os
import socket
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from flows.generate.dispatch import dispatch
from flows.generate.rows import build_rows
from flows.generate.writer import ShardWriter
from flows.orchestration import endpoint_slots, step, worker_name
from flows.teachers.cache import ResponseCacheStore
from storage.catalog import Catalog
from storage.shards import ShardStore


@dataclass
class BatchJob:
    index: int
    requests: list  # flows.teachers.Request, pending (not answered by an adopted shard)
    teacher: Any  # the started teacher, or its for_batch() copy (picklable, nothing to start)
    template: Any
    teacher_name: str
    round_index: int
    stage: Any  # storage.tables.Stage the shards belong to
    parents: list  # corpus shards the rows come from
    batch_rows: int
    flush_seconds: float
    budget: Any  # TeacherSpec: max_requests / max_total_tokens (one batch when set)
    slots: int | None = None  # size of the endpoint's limit when first created
    student: Any = None  # the template's student template (disentangle), if any
    student_context: str = "passage"
    template_of: dict = field(default_factory=dict)  # request key -> (template, student): `also`
    spent: tuple = (0, 0)  # (requests, tokens) the budget paid before generate (teacher scoring)
    # Only when the batch runs in the flow's own process: never shipped to a worker.
    ws: Any = None
    progress: Any = None
    cancel: Any = None  # threading.Event the flow sets when it is stopped (Ctrl-C, an error)

    def __getstate__(self):
        state = dict(self.__dict__)
        state["ws"] = state["progress"] = state["cancel"] = None
        return state


@dataclass
class BatchResult:
    index: int
    requests: int
    rows_written: int = 0
    shards_written: int = 0
    cache_hits: int = 0
    cache_misses: int = 0
    cache_evicted: int = 0
    answered: int = 0
    unanswered: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_prompt_tokens: int = 0
    cached_completion_tokens: int = 0
    prompt_tokens_copied: int = 0  # Usage.prompt_tokens_copied
    errors: dict = field(default_factory=dict)
    budget_exhausted: bool = False
    sent: int = 0
    retries: int = 0
    transient_errors: dict = field(default_factory=dict)
    concurrency_min: int | None = None
    limit: str | None = None  # the endpoint limit whose slots the batch held
    host: str = ""
    pid: int = 0
    worker: str | None = None  # the Dask worker's or Ray node's name, when there is one
    started_at: float = 0.0  # epoch seconds
    seconds: float = 0.0
    rows_pid: int | None = None  # the row process that built and wrote its rows, if one did
    rows_cpu_s: float = 0.0  # its CPU seconds

    def where(self) -> dict:
        return {"batch": self.index, "requests": self.requests, "rows": self.rows_written,
                "host": self.host, "pid": self.pid, "rows_pid": self.rows_pid,
                "worker": self.worker,
                "limit": self.limit, "started_at": self.started_at, "seconds": self.seconds}


def split(requests: list, size: int) -> list[list]:
    return [requests[i:i + size] for i in range(0, len(requests), size)] or []


class _Quiet:
    """Progress for a batch in another process: the flow advances its bar per finished batch."""

    def advance(self, n: int = 1) -> None:
        pass


@step(name="generate-batch")
def run_batch(job: BatchJob) -> BatchResult:
    from flows.workspace import Workspace

    started, started_at = time.monotonic(), time.time()
    ws = job.ws or Workspace.attach()
    result = BatchResult(index=job.index, requests=len(job.requests), host=socket.gethostname(),
                         pid=os.getpid(), worker=worker_name(), started_at=started_at)
    def cache_and_writer(catalog, store) -> tuple[ResponseCacheStore, ShardWriter]:
        # Answers go to a journal as they arrive and into the catalog a shard at a time
        # (flows/teachers/journal.py): one commit per arrival was 13% of the loop's samples.
        cache = ResponseCacheStore(catalog, journal=True)
        return cache, ShardWriter(store, job.stage, job.parents, batch_rows=job.batch_rows,
                                  flush_seconds=job.flush_seconds, before_write=cache.fold)

    cache, writer = cache_and_writer(ws.catalog, ws.store)
    teacher = job.teacher

    def rows_of(req, reply):
        own, own_student = job.template_of.get(req.key, (job.template, job.student))
        return build_rows(source=req.tag, request=req, reply=reply, template=own,
                          teacher_name=job.teacher_name, round_index=job.round_index,
                          student=own_student, student_context=job.student_context)

    def rows_elsewhere():
        """In the row process: this batch's cache and writer, on a catalog connection of its
        own (the parent's must not be used across a fork)."""
        catalog = Catalog(ws.catalog.url)
        return cache_and_writer(catalog, ShardStore(catalog, ws.store.root))

    cancelled = job.cancel.is_set if job.cancel is not None else None
    # A teacher shared by the flow's batches (one after another) keeps counting: this batch
    # reports what it added.
    before = copy.deepcopy(teacher.usage)
    endpoint = getattr(teacher, "endpoint_for_limit", None)
    try:
        if endpoint is None:  # in-process teachers: their own process is the limit
            tally = dispatch(requests=job.requests, teacher=teacher, cache=cache,
                             writer=writer, build_rows=rows_of,
                             progress=job.progress or _Quiet(), budget_spec=job.budget,
                             start_teacher=False, cancelled=cancelled, spent=job.spent)
        else:
            # An HTTP teacher in the flow's own process, shards on this machine: rows may be
            # built in a row process (flows/generate/rowproc.py). Not on a cluster worker
            # (Dask's and Ray's are daemonic processes) nor over object storage (its client
            # was not tried across a fork).
            local = job.ws is not None and ws.store.fs is None
            want = teacher.concurrency
            with endpoint_slots(endpoint, slots=job.slots or want, occupy=want) as held:
                result.limit = held.name if held else None
                if held is not None:
                    teacher.concurrency = held.occupied  # never more in flight than held
                tally = dispatch(requests=job.requests, teacher=teacher, cache=cache,
                                 writer=writer, build_rows=rows_of,
                                 progress=job.progress or _Quiet(), budget_spec=job.budget,
                                 start_teacher=False, cancelled=cancelled, spent=job.spent,
                                 rows_elsewhere=rows_elsewhere if local else None)
    finally:
        # Runs on success, errors and Ctrl-C alike: whatever was answered becomes a shard, and
        # every answer reaches the catalog (or stays in a journal the next lookup folds).
        try:
            writer.flush()
        finally:
            cache.close()
            if job.ws is None:
                ws.catalog.engine.dispose()
    usage = teacher.usage
    result.rows_written = writer.rows_written + tally.rows_written_elsewhere
    result.shards_written = writer.shards + tally.shards_elsewhere
    result.rows_pid, result.rows_cpu_s = tally.rows_pid, tally.rows_cpu_s
    result.sent = usage.requests - before.requests
    result.retries = usage.retries - before.retries
    result.prompt_tokens_copied = usage.prompt_tokens_copied - before.prompt_tokens_copied
    errors = Counter(usage.errors)
    errors.subtract(before.errors)
    result.transient_errors = {k: n for k, n in errors.items() if n}
    result.concurrency_min = usage.concurrency_min
    for name in ("cache_hits", "cache_misses", "cache_evicted", "answered", "unanswered",
                 "prompt_tokens", "completion_tokens", "cached_prompt_tokens",
                 "cached_completion_tokens", "budget_exhausted"):
        setattr(result, name, getattr(tally, name))
    result.errors = dict(tally.errors)
    result.seconds = round(time.monotonic() - started, 3)
    return result


def total(results: list[BatchResult]) -> dict:
    """The batches' counts added up, as the stage summary reports them."""
    out: dict[str, Any] = {}
    for name in ("rows_written", "shards_written", "cache_hits", "cache_misses",
                 "cache_evicted", "answered", "unanswered", "prompt_tokens",
                 "completion_tokens", "cached_prompt_tokens", "cached_completion_tokens",
                 "prompt_tokens_copied", "sent", "retries"):
        out[name] = sum(getattr(r, name) for r in results)
    errors, transient = Counter(), Counter()
    for r in results:
        errors.update(r.errors)
        transient.update(r.transient_errors)
    out["errors"] = errors
    out["transient_errors"] = dict(transient)
    lows = [r.concurrency_min for r in results if r.concurrency_min is not None]
    out["concurrency_min"] = min(lows) if lows else None
    out["budget_exhausted"] = any(r.budget_exhausted for r in results)
    return out
