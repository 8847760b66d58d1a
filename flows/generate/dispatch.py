"""The request loop of a generate run: answer cached requests from the cache, send the rest to
the teacher, and for every answer (in arrival order) build its rows, record it in the cache
(only when its rows can be written) and hand the rows to the shard writer. Budgets stop the
sending, never the recording."""

from __future__ import annotations

import gc
from collections import Counter
from dataclasses import dataclass, field

from flows.generate.rows import check_rows
from flows.teachers.aio import run_coroutine
from flows.teachers.base import Reply
from flows.teachers.replies import bad, check

LOOP_GC_THRESHOLD = 20_000  # allocations between young collections in the request loop


@dataclass
class Tally:
    cache_hits: int = 0
    cache_misses: int = 0
    cache_evicted: int = 0  # cached answers that could not become rows: deleted, asked again
    answered: int = 0  # requests whose rows were written (hits + teacher answers)
    unanswered: int = 0  # failed after all retries: a later run sends them again
    prompt_tokens: int = 0  # tokens paid for in this run (cache hits are free)
    completion_tokens: int = 0
    cached_prompt_tokens: int = 0
    cached_completion_tokens: int = 0
    errors: Counter = field(default_factory=Counter)  # named row errors
    budget_exhausted: bool = False


class Budget:
    """teacher.max_requests / max_total_tokens, less what the run already spent on this teacher
    before the stage (`spent`: requests, tokens; the staircase's teacher scoring)."""

    def __init__(self, max_requests: int | None, max_tokens: int | None, tally: Tally, usage,
                 spent: tuple[int, int] = (0, 0)):
        self.max_requests, self.max_tokens = max_requests, max_tokens
        self.tally, self.usage, self.spent = tally, usage, spent

    def reached(self) -> bool:
        requests = self.spent[0] + self.usage.requests
        tokens = self.spent[1] + self.tally.prompt_tokens + self.tally.completion_tokens
        over = ((self.max_requests is not None and requests >= self.max_requests)
                or (self.max_tokens is not None and tokens >= self.max_tokens))
        if over:
            self.tally.budget_exhausted = True
        return over


def dispatch(*, requests, teacher, cache, writer, build_rows, progress, budget_spec,
             start_teacher: bool = True, cancelled=None, check_rows=check_rows,
             spent: tuple[int, int] = (0, 0)) -> Tally:
    """start_teacher=False: the caller started the teacher (a generate batch: the flow starts
    it once for all its batches). `cancelled()` True: send nothing new (the flow was stopped);
    what is in flight is still recorded. `check_rows` raises when rows do not fit the writer's
    schema (generated rows by default; the review passes write their own kinds). `spent`:
    (requests, tokens) the budget already paid for before this call (scoring the teacher)."""
    tally = Tally()
    answers = cache.lookup([r.key for r in requests])

    def rows_for(req, reply) -> tuple[list[dict], Reply | None]:
        """The answer's rows, and the answer (normalised) to cache, or None: only an answer
        whose rows parse and fit the shard schema is cached. Anything else becomes one row with
        a named error (`bad_reply: ...`) instead of an exception every later run would hit."""
        reply = check(reply)
        try:
            rows = build_rows(req, reply)
            check_rows(rows)
        except Exception as e:  # any failure on one answer's content: that answer's row only
            reply = bad(f"cannot be written: {type(e).__name__}: {e}"[:300],
                        reply.prompt_tokens, reply.completion_tokens)
            rows = build_rows(req, reply)
        return rows, (reply if reply.error is None else None)

    def record(batch, *, cached: bool) -> None:
        """(request, answer, rows) of a batch of answers, in arrival order, to the shard
        writer; progress moves once per batch (per answer it cost more than the rows)."""
        for _req, reply, rows in batch:
            if reply.transient:
                tally.unanswered += 1  # transient failure that outlived its retries: not a row
                tally.errors["request_failed (not written)"] += 1
                continue
            tokens = rows[0]["prompt_tokens"], rows[0]["completion_tokens"]
            if cached:
                tally.cached_prompt_tokens += tokens[0]
                tally.cached_completion_tokens += tokens[1]
            else:
                tally.prompt_tokens += tokens[0]
                tally.completion_tokens += tokens[1]
            for row in rows:
                if row["error"] is not None:
                    tally.errors[row["error"].split(":")[0]] += 1
            writer.add(rows)
            tally.answered += 1
        progress.advance(len(batch))

    misses, hits, unusable = [], [], []
    for req in requests:
        if req.key in answers:
            rows, usable = rows_for(req, answers[req.key])
            if usable is not None:
                hits.append((req, answers[req.key], rows))
                continue
            unusable.append(req.key)  # an older version cached it unchecked: ask again
        misses.append(req)
    cache.evict(unusable)
    tally.cache_evicted = len(unusable)
    tally.cache_hits, tally.cache_misses = len(hits), len(misses)
    record(hits, cached=True)
    if misses:
        budget = Budget(budget_spec.max_requests, budget_spec.max_total_tokens, tally,
                        teacher.usage, spent)
        stop = budget.reached if cancelled is None else (
            lambda: cancelled() or budget.reached())
        body = lambda: _send(teacher, misses, rows_for, record, stop, cache)  # noqa: E731
        with_teacher(teacher, body) if start_teacher else body()
    return tally


def with_teacher(teacher, body) -> None:
    from flows.teachers import running

    with running(teacher):
        body()


def _send(teacher, misses, rows_for, record, stop, cache) -> None:
    async def loop():
        async for answers in teacher.stream(misses, stop=stop):
            built = [(req, reply, *(rows_for(req, reply) if not reply.transient
                                    else ([], None))) for req, reply in answers]
            # Cache first (what will be written, nothing else): from here on a crash costs
            # nothing for these answers. The stream sends nothing new until this returns, so a
            # kill -9 re-sends at most `concurrency` requests (those in flight). On this thread:
            # handing the batches to a cache thread cost more CPU in GIL hand-offs than the
            # commits it moved (1.7-1.9 s against 1.4-1.5 s of CPU per 4,000 answers, alternate
            # runs). A generate batch's cache journals them (one write) instead of committing.
            cache.put(teacher.backend, teacher.identity,
                      [(req.key, usable) for req, _, _, usable in built if usable is not None])
            record([(req, reply, rows) for req, reply, rows, _ in built], cached=False)

    # The process holds ~180k objects before the first request (Prefect, pydantic, SQLAlchemy,
    # Arrow, the planned requests), and every full garbage collection walks them all: two per
    # 4,000 answers, ~85 ms each on the loaded test machine. Frozen, they are left out of
    # collections until the loop ends; what the loop itself allocates is collected as usual,
    # in young collections 30x rarer than the default 700 allocations apart: at 20 ms latency
    # ~55 of them took 17-18 ms of the loop's CPU per 4,000 answers (gc.callbacks), and the
    # bench's loop ran 1.7 points closer to the bare loop's rate with them spread out (medians
    # of 5 alternating runs: 0.857 against 0.873 s).
    gc.freeze()
    threshold = gc.get_threshold()
    gc.set_threshold(LOOP_GC_THRESHOLD, *threshold[1:])
    try:
        run_coroutine(loop())
    finally:
        gc.set_threshold(*threshold)
        gc.unfreeze()
