"""Real corpus rows for previews and pre-flight checks, read straight from the curriculum's corpus.

This streams the corpus through ingest's own readers and row validation and stops after n valid
rows, so `stairs validate` and `stairs prompts render` see exactly the fields ingest would write
(same ids, same meta) without reading a large corpus to the end or starting Prefect.
"""

from __future__ import annotations

from flows.ingest.readers import source_records
from flows.ingest.rows import Reject, content_id, row_split, validate
from flows.spec import Curriculum


def _records(spec: Curriculum):
    """(source, line, corpus fields or None, why not) for each record, as ingest sees it."""
    corpus = spec.corpus
    has_questions = corpus.format != "text"
    columns = corpus.columns if has_questions else corpus.columns.model_copy(
        update={"question": None, "answer": None})
    for source, line, record, error, _raw in source_records(spec):
        if error is not None:
            yield source, line, None, error
            continue
        try:
            yield source, line, validate(record, columns=columns, min_chars=corpus.min_chars,
                                         max_chars=corpus.max_chars,
                                         has_questions=has_questions), None
        except Reject as r:
            yield source, line, None, f"{r.reason}" + (f" {r.field}" if r.field else "") + (
                f": {r.detail}" if r.detail else "")


def sample_rows(spec: Curriculum, n: int) -> list[dict]:
    """The first n valid corpus rows, shaped like corpus shard rows (id, passage, ..., meta)."""
    rows: list[dict] = []
    if n <= 0:
        return rows
    for source, line, fields, _why in _records(spec):
        if fields is None:
            continue
        row_id = content_id(fields["passage"], fields["question"], fields["answer"])
        rows.append({"id": row_id, **fields,
                     "split": row_split(row_id, fields["passage"], spec.corpus),
                     "source": source, "line": line})
        if len(rows) >= n:
            break
    return rows


def first_problem(spec: Curriculum) -> str:
    """Why the first corpus record is not a row, 'FILE line N: reason field: detail' (what a
    corpus without one valid row is told)."""
    for source, line, fields, why in _records(spec):
        if fields is None:
            return f"{source} line {line}: {why}"
    return "it has no records"
