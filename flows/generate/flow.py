"""Generate flow: a teacher rewrites each train row of the corpus, through the curriculum's
prompt template, into rationale-rich rows ("generated" shards, schema in
flows/generate/rows.py).

    stairs generate curricula/quickstart.yaml

It pays for nothing twice: every answer goes to the response cache the moment it arrives (keyed
by content, shared by all runs), a rerun of unchanged work reuses the finished stage, and a run
killed at any moment resumes by adopting the shards it wrote and re-asking only what was in
flight. Bad teacher output becomes a row with a named error; failures that outlive their retries
are left for the next run. The stage summary counts cache hits/misses, tokens, cost and errors.

In a round of a curriculum across rounds (staircase.schedule) the stage asks about the round's
problems (flows/climb.py). With `rationalize` (generate.rationalize, or the round's schedule
entry) it asks again (`rationalize_samples` times) about each problem none of its samples
solved, with the gold answer as a hint (STaR's rationalization, counted as rationalize_*).
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from contextlib import nullcontext

from prefect import flow
from prefect.context import FlowRunContext
from prefect.task_runners import ThreadPoolTaskRunner

from flows.answers import answers_match
from flows.climb import ids_digest, round_sources, with_sampling
from flows.generate.batches import BatchJob, run_batch, split, total
from flows.generate.progress import Progress
from flows.generate.resume import adopt, earlier_attempts
from flows.generate.review import Pass, run_pass
from flows.generate.writer import warm_up
from flows.orchestration import in_flow_run, map_step, step, task_runner
from flows.params import StageParams
from flows.prompting.hints import RATIONALIZE_TEMPLATE
from flows.results import GenerateResult
from flows.spec import Curriculum, TeacherSpec
from flows.teachers import Request, Sampling, make_teacher, request_key, running
from flows.teachers.base import messages_json
from flows.teachers.cache import ResponseCacheStore
from flows.workspace import Workspace


def corpus_shards(spec: Curriculum, ws: Workspace, run_id: str):
    """The run's latest ingest output (ingesting first when there is none)."""
    stage = ws.latest_stage("ingest", run_id=run_id)
    if stage is None:
        from flows.ingest import ingest

        ingest(spec, ws, run_id)
        stage = ws.latest_stage("ingest", run_id=run_id)
    return stage, ws.shards(stage, "corpus")


def sampling_for(teacher: TeacherSpec, template) -> Sampling:
    schema = template.json_schema if teacher.structured_output else None
    return Sampling(teacher.temperature, teacher.top_p, teacher.max_tokens, teacher.seed,
                    teacher.top_logprobs, schema)


def plan(sources: list[dict], template, identity: str, sampling: Sampling,
         samples: int, few_shot: bool = True) -> list[Request]:
    """Render every row before any request: a template that fails on a row fails the run here,
    naming the row, with nothing sent."""
    requests = []
    per_sample = [sampling.for_sample(i) for i in range(samples)]  # shared: see Sampling.as_json
    for row in sources:
        messages = template.render(row, few_shot=few_shot)
        encoded = messages_json(messages)  # once for every sample's key and row
        for i, s in enumerate(per_sample):
            key = request_key(identity, messages, s, i, encoded_messages=encoded)
            requests.append(Request(key, messages, s, i, row, messages_json=encoded))
    return requests


# Version of the rows this code writes (columns, what `prompt` holds): part of the fingerprint,
# so a finished stage written by an older version is never reused as this one's (its answers
# are still in the response cache: nothing is paid again).
ROWS_VERSION = 2


def fingerprint(ingest_stage, template, teacher, spec: Curriculum,
                tspec: TeacherSpec | None = None, student=None, passes=(), also=(),
                scheduled: dict | None = None) -> str:
    """What the stage's rows depend on: corpus, template text (and its student template),
    teacher identity and sampling, row limit, the review passes, with a schedule the round's
    problems, and with rationalization its template. Not concurrency or rate limits, which change
    speed, not answers."""
    t = tspec or spec.teacher
    # "scheduled" only when set, so curricula without a schedule or rationalization keep the
    # fingerprints they had before those existed.
    blob = json.dumps({**({"scheduled": scheduled} if scheduled else {}),
                       "corpus": ingest_stage.fingerprint, "template": template.content_hash,
                       "teacher": teacher.identity, "samples": t.samples,
                       "few_shot": t.few_shot,
                       "sampling": sampling_for(t, template).as_dict(),
                       "max_rows": spec.generate.max_rows, "rows_version": ROWS_VERSION,
                       "student": student.content_hash if student is not None else None,
                       "student_context": spec.generate.student_context,
                       "passes": {p.name: p.identity() for p in passes},
                       "also": [t.content_hash for t in also]}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def review_passes(spec: Curriculum, teacher, tspec: TeacherSpec) -> list[Pass]:
    """The curriculum's verify and judge passes; each asks the writer unless it names its own
    teacher."""
    from flows.prompting.check import prompts_dir_of
    from flows.prompting.template import load_template

    passes = []
    g = spec.generate
    for name, cfg, samples in (("verify", g.verify, g.verify.samples if g.verify else 0),
                               ("judge", g.judge, 1)):
        if cfg is None:
            continue
        own = cfg.teacher
        passes.append(Pass(name, load_template(cfg.template, prompts_dir_of(spec)),
                           make_teacher(own, base_dir=spec.base_dir) if own else teacher,
                           own or tspec, samples))
    return passes


def _reusable(ws: Workspace, run_id: str, round_index: int, fp: str):
    done = ws.catalog.find_stage("generate", fp)
    if done is None or not ws.summary(done).get("complete"):
        return None  # a budget-stopped or partial stage is resumed, never reused as final
    return ws.reuse(run_id, "generate", fp, round_index=round_index)


def _cost(spec: TeacherSpec, prompt: int, completion: int) -> float | None:
    if spec.cost is None:
        return None
    return round((prompt * spec.cost.prompt_per_million
                  + completion * spec.cost.completion_per_million) / 1e6, 6)


def generate(spec: Curriculum, ws: Workspace, run_id: str, *, round_index: int = 0,
             teacher=None, progress_bar: bool | None = None) -> GenerateResult:
    """Run (resume, or reuse) the generate stage of one round; returns its summary. `teacher` is
    a TeacherSpec or a made teacher (the staircase passes last round's student); default: the
    curriculum's."""
    from flows.prompting.check import generate_template, prompts_dir_of, student_template
    from flows.prompting.template import load_template

    template = generate_template(spec)
    student = student_template(spec) if template.student else None
    also = [load_template(name, prompts_dir_of(spec)) for name in spec.generate.also]
    tspec = teacher if isinstance(teacher, TeacherSpec) else getattr(teacher, "spec",
                                                                      spec.teacher)
    if teacher is None:  # a stage run on its own: a scheduled round's sampling still holds
        tspec = with_sampling(tspec, spec.staircase.round_entry(round_index))
    if teacher is None or isinstance(teacher, TeacherSpec):
        teacher = make_teacher(tspec, base_dir=spec.base_dir)
    # Rows carry only the template's hash; its text goes to the catalog so that version can be
    # shown or restored after the file is edited (`stairs prompts history`).
    for t in [template, *also]:
        ws.catalog.save_template_text(t.name, t.content_hash, t.source)
    ingest_stage, shards = corpus_shards(spec, ws, run_id)
    passes = review_passes(spec, teacher, tspec)
    sources = ws.store.table(shards).to_pylist() if shards else []
    entry = spec.staircase.round_entry(round_index)
    scheduled, rationalizer, by_level = None, None, {}
    if entry is None:
        sources = sources[:spec.generate.max_rows]
    else:
        # A curriculum across rounds: this round's levels, new and replayed (flows/climb.py).
        sources, by_level = round_sources(spec, sources, round_index)
    hints = spec.generate if entry is None else entry  # who says whether to rationalize
    if hints.rationalize:
        rationalizer = load_template(RATIONALIZE_TEMPLATE, prompts_dir_of(spec))
        ws.catalog.save_template_text(rationalizer.name, rationalizer.content_hash,
                                      rationalizer.source)
    if entry is not None or rationalizer is not None:
        # Keys only a schedule or rationalization adds, so other curricula keep their
        # fingerprints.
        scheduled = {"rationalize": rationalizer.content_hash if rationalizer else None}
        if entry is not None:
            scheduled["sources"] = ids_digest(sources)
        if rationalizer is not None and hints.rationalize_samples != 1:
            scheduled["rationalize_samples"] = hints.rationalize_samples
    fp = fingerprint(ingest_stage, template, teacher, spec, tspec, student, passes, also,
                     scheduled)
    done = _reusable(ws, run_id, round_index, fp)
    if done is not None:
        # Identical finished work: nothing is sent, no rows are copied.
        return GenerateResult.of(run_id, ws.summary(done),
                                 reused_stage=done.reused_from_id or done.id)

    requests = plan(sources, template, teacher.identity, sampling_for(tspec, template),
                    tspec.samples, few_shot=tspec.few_shot)
    template_of = {}  # request key -> (template, its student template), for `generate.also`
    for t in also:
        extra = plan(sources, t, teacher.identity, sampling_for(tspec, t), tspec.samples,
                     few_shot=tspec.few_shot)
        own_student = load_template(t.student, prompts_dir_of(spec)) if t.student else None
        template_of.update((r.key, (t, own_student)) for r in extra)
        requests += extra
    params = {"template": template.name, "template_hash": template.content_hash,
              "teacher": teacher.name, "samples": tspec.samples, "round": round_index}
    with ws.stage(run_id, "generate", round_index=round_index, fingerprint=fp,
                  params=params) as st:
        attempts = earlier_attempts(ws, run_id, round_index, fp, st.id)
        adopted, answered = adopt(ws, st.stage, attempts)
        todo = [r for r in requests if r.key not in answered]
        st.summary.update(params, source_rows=len(sources), requests=len(requests),
                          resumed_requests=len(requests) - len(todo),
                          resumed_shards=len(adopted), source_rows_by_level=by_level)
        teach(st, ws, todo, teacher, template, tspec, spec, round_index, shards, progress_bar,
              student, template_of)
        if rationalizer is not None and st.summary["complete"]:
            rationalize(st, ws, sources, answered, teacher, rationalizer, tspec, spec,
                        round_index, shards, progress_bar, hints.rationalize_samples)
        if passes:
            review(st, ws, passes, attempts, spec, progress_bar)
    return GenerateResult.of(run_id, st.summary)


# What a rationalization pass's own teach() counts, kept under rationalize_<key> so the
# stage's main counts stay those of the round's samples.
RATIONALIZE_COUNTS = ("rows_written", "sent", "cache_hits", "answered", "unanswered",
                      "prompt_tokens", "completion_tokens")


def unsolved(rows: list[dict], sources: list[dict]) -> list[dict]:
    """Source problems with a gold answer that none of their answered samples reached."""
    solved = {r["source_id"] for r in rows
              if r.get("error") is None and answers_match(r.get("answer"), r.get("gold_answer"))}
    return [s for s in sources if s.get("answer") and s["id"] not in solved]


@step(name="rationalize")
def rationalize(st, ws, sources, answered, teacher, rationalizer, tspec, spec, round_index,
                parents, progress_bar, samples: int = 1):
    """STaR's second step: every problem no sample solved is asked `samples` times more with
    its gold answer as a hint (prompts/rationalize.yaml). Its rows go to the same shards,
    trained on the hint-free `student` template (their `prompt`), and are counted as
    rationalize_*."""
    from flows.prompting.check import prompts_dir_of
    from flows.prompting.template import load_template

    shards = ws.catalog.shards(st.id, "generated")
    rows = ws.store.table(shards).to_pylist() if shards else []
    rows = [r for r in rows if r["template"] != rationalizer.name]
    todo_sources = unsolved(rows, sources)
    requests = plan(todo_sources, rationalizer, teacher.identity,
                    sampling_for(tspec, rationalizer), samples, few_shot=tspec.few_shot)
    todo = [r for r in requests if r.key not in answered]
    main = dict(st.summary)
    student = load_template(rationalizer.student, prompts_dir_of(spec))
    try:
        teach(st, ws, todo, teacher, rationalizer, tspec, spec, round_index, parents,
              progress_bar, student)
    finally:
        done = dict(st.summary)
        st.summary.clear()
        st.summary.update(main)
        st.summary.update({f"rationalize_{k}": done.get(k, 0) for k in RATIONALIZE_COUNTS})
        st.summary.update(rationalize_requests=len(requests),
                          rationalize_resumed_requests=len(requests) - len(todo),
                          elapsed_s=round(main.get("elapsed_s", 0) + done.get("elapsed_s", 0),
                                          3),
                          complete=bool(main.get("complete")) and bool(done.get("complete")))
    return dict(st.summary)


@step(name="review")
def review(st, ws, passes, attempts, spec, progress_bar):
    """Verify and judge passes over the rows just written (flows/generate/review.py)."""
    shards = ws.catalog.shards(st.id, "generated")
    rows = ws.store.table(shards).to_pylist() if shards else []
    for p in passes:
        result = run_pass(p, st, ws, rows, attempts, spec, progress_bar)
        st.summary.update(result)
        if not result[f"{p.name}_complete"]:
            st.summary["complete"] = False
    return dict(st.summary)


def spent_scoring(ws: Workspace, run_id: str, round_index: int, teacher_name: str
                  ) -> tuple[int, int]:
    """Requests and tokens this run already sent this teacher to score it (flows/staircase.py):
    the budget covers them too."""
    spent = {"teacher_score_requests": 0, "teacher_score_tokens": 0}
    for m in ws.catalog.metrics(run_id=run_id):
        if (m.name in spent and m.round_index == round_index
                and json.loads(m.meta_json).get("teacher") == teacher_name):
            spent[m.name] += int(m.value)
    return spent["teacher_score_requests"], spent["teacher_score_tokens"]


def teach(st, ws, todo, teacher, template, tspec, spec, round_index, parents, progress_bar,
          student=None, template_of=None):
    """Answer `todo` in batches of `generate.batch_requests`, each a task on the flow's task
    runner (flows/generate/batches.py), and add up what they did in the stage summary.
    `template_of`: request key -> (template, student template) for `generate.also` requests."""
    progress = Progress(len(todo), template.name, teacher.name, bar=progress_bar)
    # A teacher at a shared endpoint (an HTTP server others may use too) runs its batches side
    # by side on the task runner, each holding slots of the endpoint's limit. One that lives
    # in this process (a model in memory, the embedded llama.cpp server: our child on a port
    # of its own, whose concurrency no limit would share) runs them one after another here.
    shipped = getattr(teacher, "endpoint_for_limit", None) is not None
    in_flow_process = not in_flow_run() or not shipped or isinstance(
        FlowRunContext.get().task_runner, ThreadPoolTaskRunner)
    # Batches are for spreading requests over worker processes. In this process one request
    # loop over everything is fastest: each further batch restarts the client (session,
    # endpoint check, cache lookup) and drains its requests to none in flight before the next
    # starts; at 20 ms latency 8 batches of 512 cost 0.36-0.40 ms of CPU per request against
    # 0.31-0.32 for one loop (bench/teacher_throughput.py --regime cpu, alternating runs). A
    # budget is one count for the whole stage: its requests stay in one batch too.
    budgeted = tspec.max_requests is not None or tspec.max_total_tokens is not None
    size = max(1, len(todo)) if budgeted or in_flow_process else spec.generate.batch_requests
    slots_env = os.environ.get("STAIRS_TEACHER_SLOTS")
    # Set when the flow stops (Ctrl-C, a failed batch): batches in this process send nothing
    # more, record what is in flight and end. A batch on a cluster worker finishes its batch.
    cancel = threading.Event()

    # A budget is one count: what scoring this teacher cost this run is part of it.
    spent = spent_scoring(ws, st.stage.run_id, round_index, teacher.name) if budgeted else (0, 0)

    def job(i, requests):
        return BatchJob(index=i, requests=requests,
                        teacher=teacher.for_batch() if shipped else teacher,
                        template=template, teacher_name=teacher.name, round_index=round_index,
                        stage=st.stage, parents=list(parents),
                        batch_rows=spec.generate.batch_rows,
                        flush_seconds=spec.generate.flush_seconds, budget=tspec,
                        slots=int(slots_env) if slots_env else tspec.concurrency,
                        student=student, student_context=spec.generate.student_context,
                        spent=spent,
                        template_of={r.key: template_of[r.key] for r in requests
                                     if r.key in template_of} if template_of else {},
                        ws=ws if in_flow_process else None,
                        progress=progress if in_flow_process else None,
                        cancel=cancel if in_flow_process else None)

    def finished(_index, result):
        if not in_flow_process:
            progress.advance(result.requests)

    # The teacher starts once for all batches, and only when something must be asked: a
    # rerun answered from the cache starts no server and loads no model.
    cached = ResponseCacheStore(ws.catalog).present([r.key for r in todo])
    needs_teacher = len(cached) < len(todo)
    warm_up()
    started, cpu_started = time.monotonic(), time.process_time()
    before = {s.id for s in ws.catalog.shards(st.id, "generated")}  # adopted ones
    try:
        with running(teacher) if needs_teacher else nullcontext():
            jobs = [job(i, b) for i, b in enumerate(split(todo, size))]
            # In this process the one batch runs in the flow's own thread, where Ctrl-C lands:
            # it stops sending at once (tests/test_signals.py) instead of waiting out a pool.
            results = map_step(run_batch, jobs, name="generate-batch",
                               parallel=shipped and not in_flow_process, each=finished)
    except BaseException:
        cancel.set()
        # A batch failed (or Ctrl-C): what the batches wrote is registered and counted.
        written = [s for s in ws.catalog.shards(st.id, "generated") if s.id not in before]
        st.summary.update(rows_written=sum(s.rows for s in written),
                          shards_written=len(written))
        raise
    finally:
        progress.close()
        st.summary.update(elapsed_s=round(time.monotonic() - started, 3),
                          cpu_s=round(time.process_time() - cpu_started, 3))
    t = total(results)
    # A row process's CPU is this stage's too (process_time() counts this process only).
    st.summary["cpu_s"] = round(st.summary["cpu_s"] + sum(r.rows_cpu_s for r in results), 3)
    st.summary.update(
        rows_written=t["rows_written"], shards_written=t["shards_written"], sent=t["sent"],
        retries=t["retries"], transient_errors=t["transient_errors"],
        concurrency_min=t["concurrency_min"],
        cache_hits=t["cache_hits"], cache_misses=t["cache_misses"],
        cache_evicted=t["cache_evicted"], answered=t["answered"], unanswered=t["unanswered"],
        errors_by_reason=dict(t["errors"].most_common()),
        prompt_tokens=t["prompt_tokens"], completion_tokens=t["completion_tokens"],
        cached_prompt_tokens=t["cached_prompt_tokens"],
        cached_completion_tokens=t["cached_completion_tokens"],
        prompt_tokens_copied=t["prompt_tokens_copied"],
        cost_usd=_cost(tspec, t["prompt_tokens"], t["completion_tokens"]),
        budget_exhausted=t["budget_exhausted"],
        complete=not t["budget_exhausted"] and t["unanswered"] == 0
        and t["answered"] == len(todo),
        batches=[r.where() for r in results])
    return dict(st.summary)


@flow(name="generate", log_prints=True, task_runner=task_runner())
def generate_flow(params: StageParams) -> GenerateResult:
    """Generate training rows for a curriculum: resumes its unfinished generate run, or the run
    given as `run_id`."""
    spec = params.load()
    ws = Workspace.open()
    with ws.run_scope(params.run_id, lambda: ws.resume_or_start(spec, "generate")) as run:
        result = generate(spec, ws, run.id)
        if not result.complete:
            run.status, run.error = "stopped", ("incomplete: budget reached or requests left "
                                                "unanswered; run again to resume")
    return result
