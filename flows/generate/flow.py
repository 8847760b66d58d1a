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


def fingerprint(ingest_stage, template, teacher, spec: Curriculum,
                tspec: TeacherSpec | None = None) -> str:
    """What the stage's rows depend on: corpus, template text, teacher identity and sampling,
    row limit. Not concurrency or rate limits, which change speed, not answers."""
    t = tspec or spec.teacher
    blob = json.dumps({"corpus": ingest_stage.fingerprint, "template": template.content_hash,
                       "teacher": teacher.identity, "samples": t.samples,
                       "few_shot": t.few_shot,
                       "sampling": sampling_for(t, template).as_dict(),
                       "max_rows": spec.generate.max_rows}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


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
    from flows.prompting.check import generate_template

    template = generate_template(spec)
    tspec = teacher if isinstance(teacher, TeacherSpec) else getattr(teacher, "spec",
                                                                      spec.teacher)
    if teacher is None or isinstance(teacher, TeacherSpec):
        teacher = make_teacher(tspec, base_dir=spec.base_dir)
    # Rows carry only the template's hash; its text goes to the catalog so that version can be
    # shown or restored after the file is edited (`stairs prompts history`).
    ws.catalog.save_template_text(template.name, template.content_hash, template.source)
    ingest_stage, shards = corpus_shards(spec, ws, run_id)
    fp = fingerprint(ingest_stage, template, teacher, spec, tspec)
    done = _reusable(ws, run_id, round_index, fp)
    if done is not None:
        # Identical finished work: nothing is sent, no rows are copied.
        return GenerateResult.of(run_id, ws.summary(done),
                                 reused_stage=done.reused_from_id or done.id)

    sources = ws.store.table(shards).to_pylist() if shards else []
    sources = sources[:spec.generate.max_rows]
    requests = plan(sources, template, teacher.identity, sampling_for(tspec, template),
                    tspec.samples, few_shot=tspec.few_shot)
    params = {"template": template.name, "template_hash": template.content_hash,
              "teacher": teacher.name, "samples": tspec.samples, "round": round_index}
    with ws.stage(run_id, "generate", round_index=round_index, fingerprint=fp,
                  params=params) as st:
        adopted, answered = adopt(ws, st.stage, earlier_attempts(
            ws, run_id, round_index, fp, st.id))
        todo = [r for r in requests if r.key not in answered]
        st.summary.update(params, source_rows=len(sources), requests=len(requests),
                          resumed_requests=len(requests) - len(todo),
                          resumed_shards=len(adopted))
        teach(st, ws, todo, teacher, template, tspec, spec, round_index, shards, progress_bar)
    return GenerateResult.of(run_id, st.summary)


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


@step(name="teach")
def teach(st, ws, todo, teacher, template, tspec, spec, round_index, parents, progress_bar):
    writer = ShardWriter(ws.store, st.stage, parents, batch_rows=spec.generate.batch_rows,
                         flush_seconds=spec.generate.flush_seconds)
    cache = ResponseCacheStore(ws.catalog)
    progress = Progress(len(todo), template.name, teacher.name, bar=progress_bar)

    def rows_of(req, reply):
        return build_rows(source=req.tag, request=req, reply=reply, template=template,
                          teacher_name=teacher.name, round_index=round_index)

    started, cpu_started = time.monotonic(), time.process_time()
    tally = None
    try:
        tally = dispatch(requests=todo, teacher=teacher, cache=cache, writer=writer,
                         build_rows=rows_of, progress=progress, budget_spec=tspec,
                         spent=spent_scoring(ws, st.stage.run_id, round_index, teacher.name))
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
