"""Generated rows: the Arrow schema (docs/contracts.md) and how one teacher reply becomes rows."""

from __future__ import annotations

import hashlib
import json

import pyarrow as pa

from flows.teachers.base import Reply, Request, messages_json

GENERATED_SCHEMA = pa.schema([
    ("id", pa.string()), ("source_id", pa.string()), ("round", pa.int64()),
    ("template", pa.string()), ("template_hash", pa.string()), ("teacher", pa.string()),
    ("sampling", pa.string()), ("request_hash", pa.string()), ("sample_index", pa.int64()),
    ("messages", pa.string()), ("passage", pa.string()), ("gold_answer", pa.string()),
    ("question", pa.string()), ("facts", pa.string()), ("rationale", pa.string()),
    ("answer", pa.string()), ("response", pa.string()), ("finish_reason", pa.string()),
    ("prompt_tokens", pa.int64()), ("completion_tokens", pa.int64()), ("error", pa.string()),
    ("logprobs", pa.string()), ("prompt", pa.string()), ("target", pa.string()),
])

# What a row trains (the `target` column): "rationale" = prompt -> rationale + answer (question
# rows), "text" = the rationale column as plain text under a language-modelling loss (textbook
# lessons: no question, no answer).
TEXT_OUTPUTS = ("textbook",)


# Python types that certainly convert to each column's Arrow type.
_EXACT = {pa.string(): str, pa.int64(): int}
_COLUMNS = tuple((f.name, _EXACT[f.type]) for f in GENERATED_SCHEMA)
_INT64 = range(-(2**63), 2**63)


def _plainly_fits(row: dict) -> bool:
    """True when every value is None, a str that encodes as UTF-8, or an int in int64 range:
    then Arrow certainly accepts the row. (False means "ask Arrow", not "bad".)"""
    for name, kind in _COLUMNS:
        value = row.get(name)
        if value is None:
            continue
        if type(value) is not kind:
            return False
        if kind is str:
            if not value.isascii():
                try:
                    value.encode("utf-8")  # lone surrogates from a broken reply fail here
                except UnicodeEncodeError:
                    return False
        elif value not in _INT64:
            return False
    return True


def check_rows(rows: list[dict]) -> None:
    """Raise if the rows do not fit GENERATED_SCHEMA (what the shard writer would hit later,
    in its own thread, after the answer had been cached). Building a one-row Arrow table per
    answer was this stage's largest per-answer cost at 20 ms latency (about 0.15 ms of the
    ~0.2 ms stairs spent beyond a bare HTTP loop); the plain type check gives the same verdict
    for ordinary rows in microseconds, and Arrow still decides everything else."""
    if not all(_plainly_fits(row) for row in rows):
        pa.Table.from_pylist(rows, GENERATED_SCHEMA)


def row_id(source_id: str, template_hash: str, sample_index: int, item: int) -> str:
    blob = f"{source_id}\x1f{template_hash}\x1f{sample_index}\x1f{item}".encode()
    return hashlib.sha256(blob).hexdigest()[:32]


def _facts_lines(facts: str | None) -> str | None:
    """Facts as the student reads them: one per line (stored as JSON when they came as a list)."""
    if facts and facts.startswith("["):
        try:
            return "\n".join(str(f) for f in json.loads(facts))
        except ValueError:
            return facts
    return facts


def _text(value) -> str | None:
    if value is None:
        return None
    if isinstance(value, (list, dict)):  # facts may come back as a list from a JSON template
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def student_prompt(student, row_id: str, passage, question, facts, context: str) -> str | None:
    """The chat messages (JSON) the student is trained on for a row whose request is not its
    prompt: the `student` template over the row's passage (or its facts) and its question, with
    no worked examples, the way held-out questions are asked at evaluation."""
    if student is None or not question:
        return None
    text = facts if context == "facts" and facts else passage
    return messages_json(student.render({"id": row_id, "passage": text, "question": question},
                                        few_shot=False))


def build_rows(*, source: dict, request: Request, reply: Reply, template, teacher_name: str,
               round_index: int, student=None, student_context: str = "passage") -> list[dict]:
    """One row per parsed item (a disentangle reply holds several questions). Tokens sit on the
    first item only, so summing the column gives the true usage. `student`: the template the
    student is trained with when it is not the request's own (template.student)."""
    if reply.error is not None:
        items = [{"error": reply.error}]
    else:
        # The template's parser names bad output (empty, refused, no_answer, truncated...).
        items = template.parse(reply.text, reply.finish_reason) or [{"error": "empty"}]
    base = {
        "source_id": source["id"], "round": round_index, "template": template.name,
        "template_hash": template.content_hash, "teacher": teacher_name,
        # Both JSON columns were serialized before the first request: once per Sampling object
        # and once per corpus row (shared with the cache key). Serialized here, per answer,
        # they took 17 of this function's 30 us (now 10 us; best of 15 runs, same rows).
        "sampling": request.sampling.as_json,
        "request_hash": request.key, "sample_index": request.sample_index,
        "messages": request.messages_json or messages_json(request.messages),
        "passage": source.get("passage"), "response": reply.text,
        "finish_reason": reply.finish_reason,
        "logprobs": json.dumps(reply.logprobs) if reply.logprobs else None,
    }
    text_target = template.output in TEXT_OUTPUTS
    rows = []
    for i, item in enumerate(items):
        question = item.get("question")
        own_question = question is not None and question != source.get("question")
        # Stable per question: source id + sample index + the question's place in the reply.
        rid = row_id(source["id"], template.content_hash, request.sample_index, i)
        question = question if own_question else source.get("question")
        facts = _text(item.get("facts"))
        rows.append({
            **base,
            "id": rid,
            "question": None if text_target else question,
            # A question the teacher wrote itself has no gold answer to check against.
            "gold_answer": None if own_question or text_target else source.get("answer"),
            "facts": facts, "rationale": _text(item.get("rationale")),
            "answer": _text(item.get("answer")),
            "prompt": None if text_target or item.get("error") else student_prompt(
                student, rid, source.get("passage"), question, _facts_lines(facts),
                student_context),
            "target": "text" if text_target else "rationale",
            "prompt_tokens": reply.prompt_tokens if i == 0 else 0,
            "completion_tokens": reply.completion_tokens if i == 0 else 0,
            "error": item.get("error"),
        })
    return rows
