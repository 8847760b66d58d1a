"""Corpus rows: validation with named reject reasons, stable content ids, the eval split."""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from dataclasses import dataclass

import pyarrow as pa

CORPUS_SCHEMA = pa.schema([
    ("id", pa.string()), ("passage", pa.string()), ("question", pa.string()),
    ("answer", pa.string()), ("split", pa.string()), ("source", pa.string()),
    ("line", pa.int64()), ("meta", pa.string()),
])
REJECTS_SCHEMA = pa.schema([
    ("source", pa.string()), ("line", pa.int64()), ("reason", pa.string()),
    ("field", pa.string()), ("detail", pa.string()), ("raw", pa.string()),
])
RAW_KEEP = 1000  # chars of the offending row kept in the rejects shard


def normalize_text(text: str) -> str:
    return re.sub(r"\s+", " ", unicodedata.normalize("NFC", text)).strip()


def content_id(passage: str, question: str | None, answer: str | None) -> str:
    """Same content (up to whitespace and Unicode normalization), same id, in any run."""
    blob = "\x1f".join(normalize_text(x or "") for x in (passage, question, answer))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


def split_of(row_id: str, eval_fraction: float) -> str:
    # Ids are uniform hashes, so a threshold on the id is a seeded, stable random split that
    # does not move when rows are added or removed elsewhere in the corpus.
    return "eval" if int(row_id[:12], 16) / 16**12 < eval_fraction else "train"


@dataclass
class Reject(Exception):
    reason: str
    field: str | None = None
    detail: str = ""


def _text_field(record: dict, role: str, column: str | None, *, required: bool) -> str | None:
    if column is None:
        return None
    if column not in record or record[column] is None:
        if required:
            raise Reject("missing_field", column, f"no '{column}' (the {role} column)")
        return None
    value = record[column]
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise Reject("wrong_type", column, f"expected text, got {type(value).__name__}")
    text = str(value)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise Reject("invalid_utf8", column, "contains unpaired surrogates") from None
    if "\x00" in text:
        raise Reject("invalid_text", column, "contains NUL bytes")
    return text


def validate(record: dict, *, columns, min_chars: int, max_chars: int,
             has_questions: bool) -> dict:
    """Turn one raw record into corpus fields, or raise Reject naming the field and why."""
    passage = _text_field(record, "passage", columns.passage, required=True)
    question = _text_field(record, "question", columns.question, required=has_questions)
    answer = _text_field(record, "answer", columns.answer, required=has_questions)
    if len(passage.strip()) < min_chars:
        raise Reject("empty_text", columns.passage, f"{len(passage.strip())} chars")
    total = len(passage) + len(question or "") + len(answer or "")
    if total > max_chars:
        raise Reject("too_long", columns.passage, f"{total} chars > max_chars {max_chars}")
    if question is not None and not question.strip():
        raise Reject("empty_text", columns.question, "empty question")
    used = {c for c in (columns.passage, columns.question, columns.answer) if c}
    meta = {k: v for k, v in record.items() if k not in used}
    return {"passage": passage, "question": question, "answer": answer,
            "meta": json.dumps(meta, default=str, ensure_ascii=False)}
