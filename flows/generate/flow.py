"""Generate flow: a teacher rewrites each train row of the corpus, through the curriculum's
prompt template, into rationale-rich rows ("generated" shards, schema in
flows/generate/rows.py).

    stairs generate curricula/quickstart.yaml

It pays for nothing twice: every answer goes to the response cache the moment it arrives (keyed
by content, shared by all runs), a rerun of unchanged work reuses the finished stage, and a run
killed at any moment resumes by adopting the shards it wrote and re-asking only what was in
flight. Bad teacher output becomes a row with a named error; failures that outlive their retries
are left for the next run. The stage summary counts cache hits/misses, tokens, cost and errors.
"""

from __future__ import annotations

import hashlib
import json
import time

from prefect import flow

from flows.generate.dispatch import dispatch
from flows.generate.progress import Progress
from flows.generate.resume import adopt, earlier_attempts
from flows.generate.review import Pass, run_pass
from flows.generate.rows import build_rows
from flows.generate.writer import ShardWriter
from flows.orchestration import step, task_runner
from flows.params import StageParams
from flows.results import GenerateResult
from flows.spec import Curriculum, TeacherSpec
from flows.teachers import Request, Sampling, make_teacher, request_key
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
                tspec: TeacherSpec | None = None, student=None, passes=(), also=()) -> str:
    """What the stage's rows depend on: corpus, template text (and its student template),
    teacher identity and sampling, row limit, the review passes. Not concurrency or rate
    limits, which change speed, not answers."""
    t = tspec or spec.teacher
    blob = json.dumps({"corpus": ingest_stage.fingerprint, "template": template.content_hash,
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
    if teacher is None or isinstance(teacher, TeacherSpec):
        teacher = make_teacher(tspec, base_dir=spec.base_dir)
    # Rows carry only the template's hash; its text goes to the catalog so that version can be
    # shown or restored after the file is edited (`stairs prompts history`).
    for t in [template, *also]:
        ws.catalog.save_template_text(t.name, t.content_hash, t.source)
    ingest_stage, shards = corpus_shards(spec, ws, run_id)
    passes = review_passes(spec, teacher, tspec)
    fp = fingerprint(ingest_stage, template, teacher, spec, tspec, student, passes, also)
    done = _reusable(ws, run_id, round_index, fp)
    if done is not None:
        # Identical finished work: nothing is sent, no rows are copied.
        return GenerateResult.of(run_id, ws.summary(done),
                                 reused_stage=done.reused_from_id or done.id)

    sources = ws.store.table(shards).to_pylist() if shards else []
    sources = sources[:spec.generate.max_rows]
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
                          resumed_shards=len(adopted))
        teach(st, ws, todo, teacher, template, tspec, spec, round_index, shards, progress_bar,
              student, template_of)
        if passes:
            review(st, ws, passes, attempts, spec, progress_bar)
    return GenerateResult.of(run_id, st.summary)


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


@step(name="teach")
def teach(st, ws, todo, teacher, template, tspec, spec, round_index, parents, progress_bar,
          student=None, template_of=None):
    writer = ShardWriter(ws.store, st.stage, parents, batch_rows=spec.generate.batch_rows,
                         flush_seconds=spec.generate.flush_seconds)
    cache = ResponseCacheStore(ws.catalog)
    progress = Progress(len(todo), template.name, teacher.name, bar=progress_bar)

    template_of = template_of or {}

    def rows_of(req, reply):
        own, own_student = template_of.get(req.key, (template, student))
        return build_rows(source=req.tag, request=req, reply=reply, template=own,
                          teacher_name=teacher.name, round_index=round_index,
                          student=own_student, student_context=spec.generate.student_context)

    started, cpu_started = time.monotonic(), time.process_time()
    tally = None
    try:
        tally = dispatch(requests=todo, teacher=teacher, cache=cache, writer=writer,
                         build_rows=rows_of, progress=progress, budget_spec=tspec)
    finally:
        # Runs on success, errors and Ctrl-C alike: whatever was answered becomes a shard.
        writer.flush()
        cache.close()
        progress.close()
        elapsed = time.monotonic() - started
        usage = teacher.usage
        st.summary.update(rows_written=writer.rows_written, shards_written=writer.shards,
                          sent=usage.requests, retries=usage.retries,
                          transient_errors=dict(usage.errors), elapsed_s=round(elapsed, 3),
                          cpu_s=round(time.process_time() - cpu_started, 3),
                          concurrency_min=usage.concurrency_min)
    t = tally
    st.summary.update(
        cache_hits=t.cache_hits, cache_misses=t.cache_misses, cache_evicted=t.cache_evicted,
        answered=t.answered,
        unanswered=t.unanswered, errors_by_reason=dict(t.errors.most_common()),
        prompt_tokens=t.prompt_tokens, completion_tokens=t.completion_tokens,
        cached_prompt_tokens=t.cached_prompt_tokens,
        cached_completion_tokens=t.cached_completion_tokens,
        cost_usd=_cost(tspec, t.prompt_tokens, t.completion_tokens),
        budget_exhausted=t.budget_exhausted,
        complete=not t.budget_exhausted and t.unanswered == 0
        and t.answered == len(todo))
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
