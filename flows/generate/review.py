"""Second passes of a generate stage over its own rows, through the same teacher machinery as
the first (response cache, limits, budget, resume by adopting earlier attempts' shards):

- verify (generate.verify): every question the teacher wrote itself (no gold answer) is answered
  again `samples` times through a plain question template (rationale); curation keeps the row
  only when the majority of those answers equals the row's answer.
- judge (generate.judge): every question row is graded 1-5 with a reason (prompts/judge.yaml);
  curation drops rows under curation.min_judge_score as `judge_low`.

Each pass writes its own shard kind ("verified", "judged"), one row per answer, with `row_id`
naming the generated row it is about; curation joins them (flows/curate/reviews.py).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import pyarrow as pa

from flows.generate.dispatch import dispatch
from flows.generate.progress import Progress
from flows.generate.resume import adopt
from flows.generate.writer import ShardWriter
from flows.teachers.cache import ResponseCacheStore

REVIEW_SCHEMA = pa.schema([
    ("id", pa.string()), ("row_id", pa.string()), ("request_hash", pa.string()),
    ("sample_index", pa.int64()), ("teacher", pa.string()), ("template", pa.string()),
    ("template_hash", pa.string()), ("answer", pa.string()), ("score", pa.int64()),
    ("reason", pa.string()), ("response", pa.string()), ("error", pa.string()),
    ("prompt_tokens", pa.int64()), ("completion_tokens", pa.int64()),
])
KINDS = {"verify": "verified", "judge": "judged"}


def check_review_rows(rows: list[dict]) -> None:
    pa.Table.from_pylist(rows, REVIEW_SCHEMA)


@dataclass
class Pass:
    name: str  # "verify" or "judge"
    template: object  # flows.prompting.Template
    teacher: object  # a made teacher
    tspec: object  # its TeacherSpec (sampling, limits, budget)
    samples: int

    @property
    def kind(self) -> str:
        return KINDS[self.name]

    def identity(self) -> dict:
        """What the pass's rows depend on (part of the generate stage's fingerprint)."""
        from flows.generate.flow import sampling_for

        return {"template": self.template.content_hash, "teacher": self.teacher.identity,
                "samples": self.samples, "few_shot": self.tspec.few_shot,
                "sampling": sampling_for(self.tspec, self.template).as_dict()}


def asks_about(name: str, row: dict) -> bool:
    """Which generated rows a pass asks about: answered question rows; verify only those
    without a gold answer (a gold answer is checked directly, at no cost)."""
    if row.get("error") or row.get("target") == "text" or not row.get("question"):
        return False
    if not row.get("answer") or not row.get("passage"):
        return False
    return name != "verify" or not row.get("gold_answer")


def review_id(row_id: str, template_hash: str, sample_index: int) -> str:
    blob = f"{row_id}\x1f{template_hash}\x1f{sample_index}".encode()
    return hashlib.sha256(blob).hexdigest()[:32]


def review_rows(p: Pass, req, reply) -> list[dict]:
    """One row per answer: verify keeps the parsed answer, judge the score and its reason."""
    if reply.error is not None:
        item = {"error": reply.error}
    else:
        item = (p.template.parse(reply.text, reply.finish_reason) or [{"error": "empty"}])[0]
    answer = item.get("answer")
    score = None
    if p.name == "judge" and item.get("error") is None and answer is not None:
        score = int(answer)
    return [{
        "id": review_id(req.tag["id"], p.template.content_hash, req.sample_index),
        "row_id": req.tag["id"], "request_hash": req.key, "sample_index": req.sample_index,
        "teacher": p.teacher.name, "template": p.template.name,
        "template_hash": p.template.content_hash,
        "answer": None if p.name == "judge" else answer, "score": score,
        "reason": item.get("rationale") if p.name == "judge" else None,
        "response": reply.text, "error": item.get("error"),
        "prompt_tokens": reply.prompt_tokens, "completion_tokens": reply.completion_tokens,
    }]


def run_pass(p: Pass, st, ws, rows: list[dict], attempts, spec, progress_bar) -> dict:
    """Ask the pass's teacher about `rows` (resuming what earlier attempts answered); returns
    the summary keys of this pass, prefixed with its name."""
    from flows.generate.flow import plan, sampling_for

    asked = [r for r in rows if asks_about(p.name, r)]
    requests = plan(asked, p.template, p.teacher.identity, sampling_for(p.tspec, p.template),
                    p.samples, few_shot=p.tspec.few_shot)
    _, answered = adopt(ws, st.stage, attempts, kind=p.kind)
    todo = [r for r in requests if r.key not in answered]
    parents = ws.catalog.shards(st.id, "generated")
    writer = ShardWriter(ws.store, st.stage, parents, batch_rows=spec.generate.batch_rows,
                         flush_seconds=spec.generate.flush_seconds, schema=REVIEW_SCHEMA,
                         kind=p.kind)
    cache = ResponseCacheStore(ws.catalog)
    progress = Progress(len(todo), p.template.name, p.teacher.name, bar=progress_bar)
    tally = None
    try:
        tally = dispatch(requests=todo, teacher=p.teacher, cache=cache, writer=writer,
                         build_rows=lambda req, reply: review_rows(p, req, reply),
                         progress=progress, budget_spec=p.tspec, check_rows=check_review_rows)
    finally:
        writer.flush()
        cache.close()
        progress.close()
    n = p.name
    return {f"{n}_rows": len(asked), f"{n}_requests": len(requests),
            f"{n}_resumed_requests": len(requests) - len(todo),
            f"{n}_answered": tally.answered, f"{n}_unanswered": tally.unanswered,
            f"{n}_cache_hits": tally.cache_hits,
            f"{n}_errors_by_reason": dict(tally.errors.most_common()),
            f"{n}_prompt_tokens": tally.prompt_tokens,
            f"{n}_completion_tokens": tally.completion_tokens,
            f"{n}_complete": not tally.budget_exhausted and tally.unanswered == 0
            and tally.answered == len(todo)}
