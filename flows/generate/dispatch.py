"""The request loop of a generate run: answer cached requests from the cache, send the rest to
the teacher, and for every answer (in arrival order) build its rows, record it in the cache
(only when its rows can be written) and hand the rows to the shard writer. Budgets stop the
sending, never the recording."""

from __future__ import annotations

import gc
from collections import Counter
from contextlib import aclosing
from dataclasses import dataclass, field

from flows.generate.rowproc import RowProcess, worth_a_row_process
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
    # Written by a row process (flows/generate/rowproc.py) rather than the caller's writer.
    rows_written_elsewhere: int = 0
    shards_elsewhere: int = 0
    rows_pid: int | None = None  # that process
    rows_cpu_s: float = 0.0  # and the CPU it used (the caller's process_time() leaves it out)

    def add_rows_process(self, counts: dict) -> None:
        """What the row process did with the answers it was handed. The tokens it counted
        replace the running count made for the budget as the answers were handed over (the
        same answers, as their rows record them)."""
        self.answered += counts["answered"]
        self.unanswered += counts["unanswered"]
        self.prompt_tokens, self.completion_tokens = (counts["prompt_tokens"],
                                                      counts["completion_tokens"])
        self.errors.update(counts["errors"])
        self.rows_written_elsewhere += counts["rows_written"]
        self.shards_elsewhere += counts["shards"]
        self.rows_pid = counts["pid"]
        self.rows_cpu_s += counts["cpu_s"]


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
             spent: tuple[int, int] = (0, 0), rows_elsewhere=None) -> Tally:
    """start_teacher=False: the caller started the teacher (a generate batch: the flow starts
    it once for all its batches). `cancelled()` True: send nothing new (the flow was stopped);
    what is in flight is still recorded. `check_rows` raises when rows do not fit the writer's
    schema (generated rows by default; the review passes write their own kinds). `spent`:
    (requests, tokens) the budget already paid for before this call (scoring the teacher).
    `rows_elsewhere`: a function giving a fresh (cache, writer) pair, or None: when given and
    enough requests must be sent, the teacher's answers become rows in a row process
    (flows/generate/rowproc.py) instead of in the request loop."""
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

    recorder = Recorder(rows_for, cache, writer, tally, progress, teacher)
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
    recorder.record(hits, cached=True)
    if misses:
        budget = Budget(budget_spec.max_requests, budget_spec.max_total_tokens, tally,
                        teacher.usage, spent)
        stop = budget.reached if cancelled is None else (
            lambda: cancelled() or budget.reached())

        def body():
            if rows_elsewhere is None or not worth_a_row_process(len(misses)):
                return _send(teacher, misses, recorder.take, stop)
            writer.wait()  # nothing of this process mid-write when it forks
            rows = RowProcess(misses, lambda: Recorder(rows_for, *rows_elsewhere(), Tally(),
                                                       None, teacher))
            try:
                _send(teacher, misses, lambda answers: rows.send(answers, tally, progress),
                      stop)
            finally:
                counts = rows.close()  # also after Ctrl-C: it writes what it was handed
            if counts is not None:
                tally.add_rows_process(counts)

        with_teacher(teacher, body) if start_teacher else body()
    return tally


class Recorder:
    """Where answers go once they arrive: their rows are built, the answers are recorded in the
    response cache, then the rows go to the shard writer, all counted in `tally`."""

    def __init__(self, rows_for, cache, writer, tally: Tally, progress, teacher):
        self.rows_for, self.cache, self.writer = rows_for, cache, writer
        self.tally, self.progress, self.teacher = tally, progress, teacher

    def take(self, answers) -> None:
        """(request, reply) pairs that arrived together from the teacher."""
        rows_for = self.rows_for
        built = [(req, reply, *(rows_for(req, reply) if not reply.transient
                                else ([], None))) for req, reply in answers]
        # Cache first (what will be written, nothing else): from here on a crash costs
        # nothing for these answers. In the request loop's process the stream sends nothing
        # new until this returns, so a kill -9 re-sends at most `concurrency` requests (those
        # in flight); a row process bounds what it was handed instead (rowproc.WINDOW). There:
        # handing the batches to a cache thread cost more CPU in GIL hand-offs than the
        # commits it moved (1.7-1.9 s against 1.4-1.5 s of CPU per 4,000 answers, alternate
        # runs). A generate batch's cache journals them (one write) instead of committing.
        self.cache.put(self.teacher.backend, self.teacher.identity,
                       [(req.key, usable) for req, _, _, usable in built if usable is not None])
        self.record([(req, reply, rows) for req, reply, rows, _ in built], cached=False)

    def record(self, batch, *, cached: bool) -> None:
        """(request, answer, rows) of a batch of answers, in arrival order, to the shard
        writer; progress moves once per batch (per answer it cost more than the rows)."""
        tally = self.tally
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
            self.writer.add(rows)
            tally.answered += 1
        if self.progress is not None:
            self.progress.advance(len(batch))


def with_teacher(teacher, body) -> None:
    from flows.teachers import running

    with running(teacher):
        body()


def _send(teacher, misses, take, stop) -> None:
    async def loop():
        # aclosing: when take() raises, the stream's own cleanup (cancel what is in flight,
        # close the HTTP session) runs now, not at the event loop's shutdown.
        async with aclosing(teacher.stream(misses, stop=stop)) as stream:
            async for answers in stream:
                take(answers)

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
